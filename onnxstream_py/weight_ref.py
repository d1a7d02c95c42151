"""WeightRef: a weight an op reads in chunks of rows instead of receiving it whole.

The trade-off: a Conv/MatMul/Gemm weight larger than ``RunOptions.max_weight_chunk_bytes``
never exists whole in memory (the SD 1.5 UNet's 2560->1280 3x3 convolution weight is 118 MB),
at the cost of one provider read per chunk and, for a MatMul split along K, one extra
pass over its (small, where weights are big) output per chunk. The interpreter hands an op
a WeightRef only when the provider reads row ranges cheaply (``reads_row_ranges``), the op
declares ``_weight_refs`` and no operator cache slot wants the whole weight; an op that
cannot chunk a case calls ``full()``.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


class WeightRef:
    """Lazy access to weight ``name`` of declared ``shape``/``dtype``: ``rows(r0, r1)`` is
    ``w[r0:r1]`` (read-only, read through the provider's ``get_rows``, a fresh read per call),
    ``full()`` the whole tensor. ``max_chunk_bytes`` bounds the chunks ``row_chunks`` yields."""

    def __init__(self, name: str, shape, dtype, provider, max_chunk_bytes: int,
                 widen: Callable[[np.ndarray], np.ndarray] | None = None,
                 fetch_full: Callable[[str], np.ndarray] | None = None):
        self.name = name
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self.nbytes = self.size * self.dtype.itemsize
        self.max_chunk_bytes = int(max_chunk_bytes)
        self._provider = provider
        self._widen = widen
        self._fetch_full = fetch_full

    def __repr__(self) -> str:
        return f"WeightRef({self.name!r}, {self.dtype.name}{list(self.shape)})"

    def row_chunks(self, max_chunk_bytes: int | None = None) -> list[tuple[int, int]]:
        """[r0, r1) ranges covering the rows, each at most max_chunk_bytes (at least one row)."""
        n = self.shape[0] if self.shape else 0
        limit = self.max_chunk_bytes if max_chunk_bytes is None else max_chunk_bytes
        row_bytes = self.nbytes // n if n else 0
        step = max(1, min(n, limit // max(1, row_bytes))) if limit > 0 else max(1, n)
        return [(r, min(n, r + step)) for r in range(0, n, step)]

    def rows(self, r0: int, r1: int) -> np.ndarray:
        """Rows [r0, r1) as a read-only array of the declared dtype (a --fp16 file is widened)."""
        n = self.shape[0]
        if not 0 <= r0 < r1 <= n:
            raise IndexError(f"weight {self.name!r} {list(self.shape)}: rows [{r0}, {r1}) out of range")
        a = self._provider.get_rows(self.name, np.arange(r0, r1, dtype=np.int64))
        if a.shape != (r1 - r0,) + self.shape[1:]:
            raise ValueError(f"weight {self.name!r}: provider returned rows of shape {list(a.shape)}, "
                             f"expected {[r1 - r0] + list(self.shape[1:])}")
        if a.dtype != self.dtype:
            if self._widen is not None and a.dtype == np.float16 and self.dtype == np.float32:
                a = self._widen(a)
            else:
                a = a.astype(self.dtype)
        a = a.view()
        a.flags.writeable = False
        return a

    def full(self) -> np.ndarray:
        """The whole weight (for a case the op does not chunk)."""
        if self._fetch_full is not None:
            return self._fetch_full(self.name)
        return self.rows(0, self.shape[0])


def materialize(a):
    """``a`` itself, or the whole weight when it is a WeightRef."""
    return a.full() if isinstance(a, WeightRef) else a
