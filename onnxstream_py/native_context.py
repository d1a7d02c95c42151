"""Per-model native resources handed to native ops as ``_ctx``: the thread pool (and, in
later steps, the operator cache and the measured kernel choices)."""
from __future__ import annotations

from .options import RunOptions


class NativeContext:
    def __init__(self, options: RunOptions):
        from .native import ThreadPool
        self.options = options
        self.pool = ThreadPool(options.threads)

    def widen(self, a):
        """float16 weight -> float32 on the pool (numpy's astype is ~5x slower)."""
        from . import native
        return native.f16_to_f32(a if a.flags.c_contiguous else a.copy(), pool=self.pool)

    def close(self) -> None:
        self.pool.close()
