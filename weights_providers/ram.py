"""A provider that keeps every tensor it has read, in RAM.

The opposite trade-off to the disk providers: after the first run (or at construction,
with ``preload=True``) no weight is read again, so repeated runs (the 20+ UNet steps of a
diffusion loop) do no I/O, at the cost of holding every weight for the provider's life.
It reads through another provider: a DiskNoCache on the path it is given, or any provider
passed in (e.g. a DiskPrefetch, so the first run reads ahead), which it then owns and closes.

Cached arrays are made read-only views: they are shared by every run, and a caller writing
into one would silently corrupt later runs. They are copies, never file mappings (a mapped
tensor from an inner disk provider is copied once): what Ram holds must stay valid for its
whole life, even if the file is rewritten or truncated meanwhile.
Tables read with ``get_rows`` are not cached whole: their rows come from the inner provider
each time (a few rows of a 151 MB embedding table are cheap to read, the table is not to keep).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .base import WeightsProvider
from .disk import DiskNoCache
from .tensorfile import is_mapped


class Ram(WeightsProvider):
    """Caches every tensor read from the inner provider; ``release`` keeps it."""

    def __init__(self, path_or_provider, preload: bool = False, verify="always"):
        if isinstance(path_or_provider, (str, bytes, os.PathLike)):
            # copies, not file mappings: what Ram holds must survive the file changing
            self._inner = DiskNoCache(path_or_provider, verify=verify, use_mmap=False)
        elif callable(getattr(path_or_provider, "get", None)):
            self._inner = path_or_provider
        else:
            raise TypeError(f"Ram needs a weights path or a provider, got {type(path_or_provider).__name__}")
        self._cache: dict[str, np.ndarray] = {}
        self._order: list[str] | None = None
        if preload:
            self.preload()

    @property
    def inner(self) -> WeightsProvider:
        return self._inner

    @property
    def index(self):
        return self._inner.index

    @property
    def path(self) -> str:
        return self._inner.path

    @property
    def cached_bytes(self) -> int:
        return sum(a.nbytes for a in self._cache.values())

    def preload(self, names: Sequence[str] | None = None) -> None:
        """Read ``names`` (default: every tensor of the inner provider's index) now."""
        if names is None:
            index = getattr(self._inner, "index", None)
            if index is None:
                raise TypeError(f"Ram(preload=True) needs the names to load: {type(self._inner).__name__} "
                                f"has no .index; call preload(names) instead")
            names = list(index.entries)
        todo = [n for n in dict.fromkeys(names) if n not in self._cache]
        self._inner.plan(todo)
        for name in todo:
            self.get(name)
        self._plan_inner()

    def get(self, name: str) -> np.ndarray:
        arr = self._cache.get(name)
        if arr is None:
            arr = self._inner.get(name)
            arr = arr.copy() if is_mapped(arr) else arr.view()
            arr.flags.writeable = False
            self._cache[name] = arr
            self._inner.release(name)  # the inner provider may forget it: we hold it now
        return arr

    def get_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        arr = self._cache.get(name)
        if arr is not None:
            return np.take(arr, np.asarray(rows, dtype=np.int64), axis=0)
        return self._inner.get_rows(name, rows)

    def drop(self, name: str) -> None:
        """The engine keeps its own prepared copy: forget ours (a later get reads it again)."""
        self._cache.pop(name, None)

    def plan(self, order: Sequence[str]) -> None:
        self._order = list(order)
        self._plan_inner()

    def restart(self) -> None:
        self._plan_inner()

    def close(self) -> None:
        self._cache.clear()
        self._inner.close()

    def _plan_inner(self) -> None:
        """Plan the inner provider with what is still to be read (each name once)."""
        if self._order is not None:
            self._inner.plan([n for n in dict.fromkeys(self._order) if n not in self._cache])

    def __repr__(self) -> str:
        return f"Ram({self._inner!r}, {len(self._cache)} tensors cached)"
