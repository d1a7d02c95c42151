"""RunOptions: every knob of a Model in one frozen dataclass, passed explicitly."""
from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20


@dataclass(frozen=True)
class RunOptions:
    # Threads for heavy math (numpy's BLAS honours it through OPENBLAS_NUM_THREADS at start-up;
    # the native path of a later issue owns a thread pool). None: all cores.
    threads: int | None = None
    # Attention slicing: number of query-row slices; 0 chooses the count so that one slice's
    # scores take at most attention_slice_bytes.
    attention_slices: int = 0
    attention_slice_bytes: int = 16 * MiB
    # Native backend, fused attention: "flash" (tiled C kernel with an online softmax: scratch
    # of one tile per thread at any sequence length), "sliced" (BLAS on blocks of query rows,
    # bounded by the two settings above), or "auto" (the measured choice per shape with
    # kernel_choice="measure" or a stored one, else the op's rule; ops/native_attention.py).
    attention: str = "auto"
    # Read-ahead budget of the "prefetch" provider.
    prefetch_bytes: int = 32 * MiB
    # Weight CRC-32 checks: "first" checks each weight the first time this model reads it
    # (a corrupted or truncated file is caught on first use) and trusts later reads of the
    # same bytes; "always" checks every read; "never" skips them. True/False = always/never.
    verify_checksums: str | bool = "first"
    # "native" (default): C kernels and XNNPACK where an op has them (ops/native_*.py), numpy
    # for the rest; needs the compiled extension. "numpy": the pure-numpy reference path
    # (tests, debugging, or a machine where the extension was not built).
    backend: str = "native"
    # Native backend, ops with several kernels (XNNPACK or BLAS): "cached" uses the choices
    # measured for this machine (kernel_choices.json beside the model) and a default rule
    # for shapes without one; "measure" times unseen shapes and stores the result.
    kernel_choice: str = "cached"
    # Native backend: bytes of prepared operators (XNNPACK's packed weights) kept across runs,
    # so later runs skip reading and packing those weights (op_cache.py). None: the
    # model's weight bytes with the "ram" provider (which keeps every weight anyway; a cached
    # op's raw weight is dropped), 0 with the streaming ones, whose point is not to hold the model.
    operator_cache_bytes: int | None = None
    # Native backend, Conv/MatMul/Gemm whose weight is larger than this (bytes at the model's
    # dtype): with a provider that reads row ranges cheaply (DiskNoCache), the weight is read
    # and packed one chunk of rows at a time (output channels of a Conv, K rows of a MatMul),
    # so at most one chunk of raw and packed weight is alive (weight_ref.py). 0: off. 8 MiB:
    # the SD 1.5 UNet's DiskNoCache peak was 144-146 MiB with it, 158-169 with 16 MiB (the raw
    # and packed chunk plus the allocator's slack sit on top of the live activations).
    max_weight_chunk_bytes: int = 8 * MiB
    # "fp16": a float32 intermediate that waits many steps for its next consumer (a UNet skip
    # connection) is kept as float16 meanwhile and widened when used (plan.activation_storage);
    # halves that memory; error on the tiny SD 1.5 UNet fixture: NMSE ~1.5e-7, max abs error
    # <= 5e-4 x max|y| (tests/test_activation_storage.py). "fp32": off.
    activation_storage: str = "fp32"
    # After an op frees tensors, if the process holds more than this many bytes beyond its live
    # activations (and what it held when the run started), have the C allocator return its free
    # heap pages to the OS (glibc malloc_trim; interpreter._Trimmer). glibc otherwise keeps freed
    # arrays below 32 MiB for reuse: ~60 MiB of the SD 1.5 UNet's streaming peak RSS. None: never.
    # 24 MiB (was 48): the UNet's streaming peak 147-152 MiB instead of 152-170, no measurable time
    # (back to back in one process, best of 3: 5.96 s vs 6.22 s).
    malloc_trim_slack_bytes: int | None = 24 * MiB
    # Computing precision (precision.py): "auto" (the model's own: int8 kernels for a w8a8/QDQ
    # model, fp32 for fp32 / fp16-storage / w8a32 ones), "fp32", "fp16" (FP16 arithmetic where
    # the CPU has it, else fp32 with a warning) or "w8a8" (an error on a model without QDQ).
    precision: str = "auto"

    def __post_init__(self):
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"RunOptions.threads must be >= 1, got {self.threads}")
        if self.attention_slices < 0:
            raise ValueError(f"RunOptions.attention_slices must be >= 0, got {self.attention_slices}")
        if self.attention not in ("auto", "flash", "sliced"):
            raise ValueError(f"RunOptions.attention must be 'auto', 'flash' or 'sliced', got {self.attention!r}")
        if self.verify_checksums not in (True, False, "always", "first", "never"):
            raise ValueError(f"RunOptions.verify_checksums must be 'always', 'first' or 'never', "
                             f"got {self.verify_checksums!r}")
        if self.kernel_choice not in ("cached", "measure"):
            raise ValueError(f"RunOptions.kernel_choice must be 'cached' or 'measure', got {self.kernel_choice!r}")
        if self.operator_cache_bytes is not None and self.operator_cache_bytes < 0:
            raise ValueError(f"RunOptions.operator_cache_bytes must be >= 0 or None, got {self.operator_cache_bytes}")
        if self.max_weight_chunk_bytes < 0:
            raise ValueError(f"RunOptions.max_weight_chunk_bytes must be >= 0 (0: off), got {self.max_weight_chunk_bytes}")
        if self.malloc_trim_slack_bytes is not None and self.malloc_trim_slack_bytes < 0:
            raise ValueError(f"RunOptions.malloc_trim_slack_bytes must be >= 0 or None, got {self.malloc_trim_slack_bytes}")
        if self.activation_storage not in ("fp32", "fp16"):
            raise ValueError(f"RunOptions.activation_storage must be 'fp32' or 'fp16', got {self.activation_storage!r}")
        if self.precision not in ("auto", "fp32", "fp16", "w8a8"):
            raise ValueError(f"RunOptions.precision must be 'auto', 'fp32', 'fp16' or 'w8a8', got {self.precision!r}")
        if self.backend not in ("numpy", "native"):
            raise ValueError(f"RunOptions.backend must be 'numpy' or 'native', got {self.backend!r}")
