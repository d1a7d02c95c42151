"""Per-model native resources handed to native ops as ``_ctx``: the thread pool (and, in
later steps, the operator cache and the measured kernel choices)."""
from __future__ import annotations

from .options import RunOptions


class NativeContext:
    def __init__(self, options: RunOptions):
        from .native import ThreadPool
        self.options = options
        self.pool = ThreadPool(options.threads)

    def close(self) -> None:
        self.pool.close()
