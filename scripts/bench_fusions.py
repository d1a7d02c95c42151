"""GEGLU, QuickGELU/SiLU and LayerNorm chains at Stable Diffusion shapes: the exported chain run
op by op on the native backend (the registered native ops, as the interpreter runs them
unfused) against the plan's fused ops (plan.fuse_gelu / fuse_silu / fuse_layer_norm).

GEGLU: h * gelu(gate) with h, gate the halves of the UNet's feed-forward projection (column
slices, rows twice as long): the chain Div -> Erf -> Add -> Mul -> Mul -> Mul, the fused Gelu
followed by Mul, and GeluMul. QuickGELU: the text encoder's x * Sigmoid(1.702 x). LayerNorm:
older exporters' ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add chain. Variants run back
to back in one process, best of --repeat; totals weight each shape by its count in the SD 1.5
UNet (16 GEGLUs at 512x512) or text encoder (12 QuickGELUs, 25 LayerNorms).
Usage: python3 scripts/bench_fusions.py [--repeat 5] [--threads 2]
"""
from __future__ import annotations

import onnxstream_py  # noqa: F401  first, so OpenBLAS's spin timeout applies (see its __init__)

import argparse
import time

import numpy as np

from onnxstream_py import ops
from onnxstream_py.native_context import NativeContext

# (tokens, inner dim, count): the SD 1.5 UNet's GEGLUs at 512x512, batch 2
GEGLU = [(4096, 1280, 5), (1024, 2560, 5), (256, 5120, 5), (64, 5120, 1)]
QUICK_GELU = [((1, 77, 3072), 12)]
LAYER_NORM = [((1, 77, 768), 25), ((2, 4096, 320), 15)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    ops.load_native()
    ctx = NativeContext(onnxstream_py.RunOptions(threads=args.threads))

    def impl(name, domain="", opset=17):
        i = ops.lookup(name, opset, domain, "native")
        return (lambda *a, **k: i.fn(*a, **k, _ctx=ctx)) if i.wants_ctx else i.fn

    div, erf, add, mul, sigmoid, sub, pow_, sqrt = (impl(n) for n in ("Div", "Erf", "Add", "Mul", "Sigmoid", "Sub",
                                                                      "Pow", "Sqrt"))
    reduce_mean = impl("ReduceMean")
    gelu, gelu_mul, silu, layer_norm = (impl(n, "onnxstream") for n in ("Gelu", "GeluMul", "Silu", "LayerNorm"))
    f32 = np.float32

    def best(f) -> float:
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return min(times) * 1e3

    def report(title, cases, variants):
        totals = dict.fromkeys(variants, 0.0)
        print(f"{title:>22} " + " ".join(f"{v:>12}" for v in variants) + "   (ms)")
        for label, count, fns in cases:
            ms = {v: best(fns[v]) for v in variants}
            for v in variants:
                totals[v] += count * ms[v]
            print(f"{label:>22} " + " ".join(f"{ms[v]:12.2f}" for v in variants) + f"   x{count}")
        print(f"{'weighted total':>22} " + " ".join(f"{totals[v]:12.1f}" for v in variants))

    rng = np.random.default_rng(0)
    cases = []
    for tokens, inner, count in GEGLU:
        proj = rng.standard_normal((2, tokens, 2 * inner), dtype=f32)
        h, g = proj[..., :inner], proj[..., inner:]
        cases.append((f"2x{tokens}x{inner}", count, {
            "chain": lambda h=h, g=g: mul(h, mul(mul(g, add(erf(div(g, f32(1.4142135))), f32(1))), f32(0.5))),
            "gelu+mul": lambda h=h, g=g: mul(h, gelu(g)),
            "GeluMul": lambda h=h, g=g: gelu_mul(g, h)}))
    report("GEGLU", cases, ("chain", "gelu+mul", "GeluMul"))

    cases = []
    for shape, count in QUICK_GELU:
        x = rng.standard_normal(shape, dtype=f32)
        cases.append(("x".join(map(str, shape)), count, {
            "chain": lambda x=x: mul(x, sigmoid(mul(x, f32(1.702)))),
            "Silu": lambda x=x: silu(x, alpha=1.702)}))
    report("QuickGELU", cases, ("chain", "Silu"))

    cases = []
    for shape, count in LAYER_NORM:
        x = rng.standard_normal(shape, dtype=f32)
        gamma, beta = rng.standard_normal(shape[-1], dtype=f32), rng.standard_normal(shape[-1], dtype=f32)

        def chain(x=x, gamma=gamma, beta=beta):
            d = sub(x, reduce_mean(x, axes=[-1]))
            v = reduce_mean(pow_(d, f32(2)), axes=[-1])
            return add(mul(div(d, sqrt(add(v, f32(1e-5)))), gamma), beta)
        cases.append(("x".join(map(str, shape)), count, {
            "chain": chain,
            "LayerNorm": lambda x=x, gamma=gamma, beta=beta: layer_norm(x, gamma, beta, axes=[-1])}))
    report("LayerNorm", cases, ("chain", "LayerNorm"))
    ctx.close()


if __name__ == "__main__":
    main()
