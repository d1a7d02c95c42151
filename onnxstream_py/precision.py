"""Computing precision of a run: RunOptions.precision resolved against the model and the CPU.

What the weights *are* is recorded in the converted model (graph.txt ``precision`` line:
fp32, fp16-storage, w8a32, w8a8; docs/FORMAT.md); how a run *computes* is RunOptions.precision:

    "auto"  the model's own: a w8a8 (QDQ) model runs its int8 kernels, everything else fp32
            (an fp16-storage or w8a32 model widens its weights per op and computes in fp32);
    "fp32"  float32 everywhere (a QDQ model runs its Q/DQ ops as written: the reference path);
    "fp16"  float16 arithmetic, meant for CPUs that have it (x86 AVX512-FP16, ARM FP16
            "asimdhp"); elsewhere XNNPACK emulates it through F16C conversions (slower than fp32),
            so the run falls back to fp32 with one warning. Not wired into the kernels yet: for
            now it warns and computes fp32 on every CPU (a float16 *model* does run its
            Conv/MatMul/Gemm in XNNPACK's float16 kernels, see ops/native_linear.py);
    "w8a8"  the int8 kernels of a QDQ model; an error on a model without QuantizeLinear nodes.

Trade-off: the CPU check reads /proc/cpuinfo (Linux) once; on other systems FP16 arithmetic is
assumed absent, which only costs the fp16 mode, never correctness.
"""
from __future__ import annotations

import functools
import platform
import warnings

from .errors import EngineError
from .graph import Graph

RUN_PRECISIONS = ("auto", "fp32", "fp16", "w8a8")


@functools.lru_cache(maxsize=1)
def cpu_has_fp16_arithmetic() -> bool:
    """True when the CPU computes in float16 natively: x86 ``avx512fp16`` or ARM ``asimdhp``
    (the Raspberry Pi 5's Cortex-A76 has it, the Pi 4's A72 has not)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags = set(value.split())
            return "avx512fp16" in flags or "asimdhp" in flags
    return False


def has_qdq(graph: Graph) -> bool:
    """The graph quantizes activations (QuantizeLinear nodes), not only weights."""
    return any(n.op_type == "QuantizeLinear" and n.domain == "" for n in graph.nodes)


def resolve(graph: Graph, requested: str) -> str:
    """The precision a run of ``graph`` computes in: "fp32", "fp16" or "w8a8" (see module doc).
    Warns (once per model load) when "fp16" falls back to fp32; raises for "w8a8" on a model
    that has no quantized activations."""
    if requested not in RUN_PRECISIONS:
        raise ValueError(f"RunOptions.precision must be one of {', '.join(RUN_PRECISIONS)}, got {requested!r}")
    if requested == "auto":
        return "w8a8" if has_qdq(graph) else "fp32"
    if requested == "w8a8" and not has_qdq(graph):
        raise EngineError(f"RunOptions(precision='w8a8') needs a model with quantized activations (QDQ form); "
                          f"this one is {graph.precision} without QuantizeLinear nodes. Convert it with "
                          f"`onnxstream convert MODEL.onnx OUT --quantize w8a8 --calibration DATA.npz`")
    if requested == "fp16":
        if not cpu_has_fp16_arithmetic():
            why = (f"this CPU ({platform.machine()}) has no FP16 arithmetic (x86 avx512fp16 / ARM asimdhp), "
                   f"where XNNPACK's float16 kernels are emulated and slower than float32")
        else:
            why = "float16 compute of float32 models is not wired into the kernels yet (issue 5)"
        warnings.warn(f"RunOptions(precision='fp16'): {why}; computing in fp32", RuntimeWarning, stacklevel=3)
        return "fp32"
    return requested
