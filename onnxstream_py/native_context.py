"""Per-model native resources handed to native ops as ``_ctx``: the thread pool and how
kernels are chosen (stored measurements, measuring, or the default rule)."""
from __future__ import annotations

import platform

from .op_cache import OperatorCache
from .options import RunOptions

# Without a measurement: XNNPACK's NEON kernels on ARM; on x86, numpy's OpenBLAS, which
# measured faster than Debian's XNNPACK for most SD shapes once packing and the NCHW<->NHWC
# transposes are counted (scripts/bench_native.py). `onnxstream tune` replaces the rule by
# measurements.
DEFAULT_KERNEL = "xnnpack" if platform.machine().lower() in ("aarch64", "arm64", "armv7l", "armv8l") else "blas"


class NativeContext:
    def __init__(self, options: RunOptions, operator_cache_bytes: int = 0):
        from .native import ThreadPool
        self.options = options
        self.pool = ThreadPool(options.threads)
        self.op_cache = OperatorCache(operator_cache_bytes)
        self.measure_kernels = options.kernel_choice == "measure"
        self.default_kernel = DEFAULT_KERNEL

    def widen(self, a):
        """float16 weight -> float32 on the pool (numpy's astype is ~5x slower)."""
        from . import native
        return native.f16_to_f32(a if a.flags.c_contiguous else a.copy(), pool=self.pool)

    def close(self) -> None:
        self.op_cache.clear()
        self.pool.close()
