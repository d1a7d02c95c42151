"""Per-model native resources handed to native ops as ``_ctx``: the thread pool and how
kernels are chosen (stored measurements, measuring, or the default rule)."""
from __future__ import annotations

import platform

from .op_cache import OperatorCache
from .options import RunOptions

# Without a measurement: XNNPACK's NEON kernels on ARM; on x86, numpy's OpenBLAS, except for
# convolutions with at least CONV_XNNPACK_MIN_PIXELS output pixels, where Debian's XNNPACK won
# (`onnxstream tune` on the SD 1.5 UNet, 2 cores AVX-512: it ran the 64x64 and 32x32 convolutions
# at 180-230 GFLOP/s against BLAS's 130-180, packing included; BLAS kept most 16x16 and 8x8
# ones and nearly every MatMul). `onnxstream tune` replaces the rule by measurements.
ON_ARM = platform.machine().lower() in ("aarch64", "arm64", "armv7l", "armv8l")
DEFAULT_KERNEL = "xnnpack" if ON_ARM else "blas"
CONV_XNNPACK_MIN_PIXELS = 32 * 32
WINOGRAD_MIN_CHANNELS = 64
# Streamed (the weight transformed and packed every run), Winograd wins from 32x32 output
# pixels up: 64x64 and larger tuned at 1.1-2.4x XNNPACK's direct convolution on the synthetic
# SD 1.5 UNet and VAE decoder (2 threads, x86); at 32x32 (640 channels) 30 vs ~39 ms once the
# GEMM operators were packed on the pool (scripts/bench_winograd.py --only unet: "f4 xnn
# streamed" against "xnnpack" + its packing); at 16x16 (1280) a toss-up, so not taken. The SD
# pipeline's UNet (10 steps, untuned): 135 s with the 64x64 threshold, 121-128 s with 32x32.
WINOGRAD_STREAMED_MIN_PIXELS = 32 * 32


class NativeContext:
    def __init__(self, options: RunOptions, operator_cache_bytes: int = 0):
        from .native import ThreadPool
        self.options = options
        self.pool = ThreadPool(options.threads)
        self.op_cache = OperatorCache(operator_cache_bytes)
        self.measure_kernels = options.kernel_choice == "measure"
        self.default_kernel = DEFAULT_KERNEL

    def default_conv_kernel(self, out_pixels: int, winograd_ok: bool = False, cached: bool = False,
                            channels: int = 0) -> str:
        """The rule for a Conv shape without a measurement. Winograd F(4x4,3x3) (where it
        applies: 3x3 stride 1, float32) on x86 for >= WINOGRAD_MIN_CHANNELS channels in and out
        when its transformed weight is cached (operator cache): measured there at 2.6-3.5x
        XNNPACK's direct convolution (scripts/bench_winograd.py). Streamed, the per-run weight
        transform and packing lose at 16x16, so streaming takes it by default only from
        WINOGRAD_STREAMED_MIN_PIXELS output pixels up, elsewhere where `onnxstream tune`
        measured it faster. Unmeasured on ARM."""
        if (winograd_ok and not ON_ARM and channels >= WINOGRAD_MIN_CHANNELS
                and (cached or out_pixels >= WINOGRAD_STREAMED_MIN_PIXELS)):
            return "winograd"
        if ON_ARM or out_pixels >= CONV_XNNPACK_MIN_PIXELS:
            return "xnnpack"
        return "blas"

    def widen(self, a):
        """float16 weight -> float32 on the pool (numpy's astype is ~5x slower)."""
        from . import native
        return native.f16_to_f32(a if a.flags.c_contiguous else a.copy(), pool=self.pool)

    def close(self) -> None:
        self.op_cache.clear()
        self.pool.close()
