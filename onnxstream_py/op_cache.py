"""Operator cache: prepared native operators (XNNPACK's packed weights) kept across runs.

XNNPACK packs a weight into its own layout when an operator is created; a streaming run
pays that on every op of every run. With a budget (``RunOptions.operator_cache_bytes``) an
op may keep its prepared operator here, keyed by its plan step; later runs then skip both
the provider read and the packing (the interpreter does not fetch the weights of a step
whose operator is cached, and tells the provider it may drop its own copy).

Trade-off: the budget fills in plan order and nothing is ever evicted. A diffusion loop
walks the same ops in the same order every step, so an LRU policy would evict exactly the
entry needed next (every lookup a miss once the budget is smaller than the model); keeping
the first ops that fit gives budget/model of the hits for any budget.
"""
from __future__ import annotations


class OperatorCache:
    def __init__(self, budget_bytes: int):
        self.budget = max(0, int(budget_bytes))
        self.used = 0
        self._entries: dict[int, tuple[object, int, tuple[str, ...]]] = {}
        self.version = 0          # bumps whenever an entry is added (the model re-plans reads)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, step: int):
        e = self._entries.get(step)
        return None if e is None else e[0]

    def has_room(self, nbytes: int) -> bool:
        return self.used + nbytes <= self.budget

    def put(self, step: int, entry, nbytes: int, weights: tuple[str, ...]) -> bool:
        """Keep ``entry`` (an object with ``close()``) for ``step`` if the budget allows."""
        if step in self._entries or not self.has_room(nbytes):
            return False
        self._entries[step] = (entry, int(nbytes), tuple(weights))
        self.used += int(nbytes)
        self.version += 1
        return True

    def cached_weights(self) -> set[str]:
        """Names of the weights whose ops are served from the cache (not read any more)."""
        return {w for _, _, ws in self._entries.values() for w in ws}

    def clear(self) -> None:
        for entry, _, _ in self._entries.values():
            entry.close()
        self._entries.clear()
        self.used = 0
        self.version += 1


class CacheSlot:
    """One plan step's view of the cache, handed to a cacheable op as ``_cache``."""
    __slots__ = ("cache", "step", "weights", "positions", "static")

    def __init__(self, cache: OperatorCache, step: int, weights: tuple[str, ...], positions: tuple[int, ...],
                 static: tuple[int, ...]):
        self.cache, self.step, self.weights = cache, step, weights
        self.positions = positions      # input positions that are weights
        self.static = static            # input positions that are weights or constants

    @property
    def entry(self):
        return self.cache.get(self.step)

    def has_room(self, nbytes: int) -> bool:
        return self.cache.has_room(nbytes)

    def put(self, entry, nbytes: int, covers: tuple[int, ...]) -> bool:
        """Cache ``entry``, built from the op's inputs at positions ``covers``. Refused unless
        it embeds every weight input of the node (a later run will not fetch any of them) and
        nothing that may change between runs (only weights and constants)."""
        if not set(self.positions) <= set(covers) <= set(self.static):
            return False
        return self.cache.put(self.step, entry, nbytes, self.weights)
