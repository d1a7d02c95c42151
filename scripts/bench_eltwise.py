"""numpy vs XNNPACK milliseconds for elementwise ops, pooling, bilinear Resize and Softmax.

Usage: python scripts/bench_eltwise.py [--threads 2] [--repeat 7] [--cold] [--sweep]

Each row times the numpy op (ops/elementwise.py, pool.py, resize.py: numpy ufuncs run on one
thread) and the native op as the engine runs it (ops/native_eltwise.py, XNNPACK on a pool of
--threads, including its size rule: "native" equals numpy below the thresholds), plus the
bare XNNPACK wrapper (native.xnn_*, the rule bypassed) on the pool and on the calling thread
alone. A and B are timed back to back in one process, --repeat times, best kept (the
machine is shared: figures are "under load" unless it is quiet). --cold rotates over enough
input copies (> 64 MB) that each call reads from RAM, as after a large producer; the default
is warm caches. --sweep adds a size sweep of Add/Abs/Sigmoid/Clip that sets the
MIN_ELEMENTS_* constants of ops/native_eltwise.py.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import onnxstream_py  # noqa: E402
from onnxstream_py import native, ops  # noqa: E402
from onnxstream_py.native_context import NativeContext  # noqa: E402

ops.load_native()
from onnxstream_py.ops import elementwise as E, native_eltwise as NE, pool as P, resize as R  # noqa: E402

COLD_BYTES = 64 << 20


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--cold", action="store_true", help="inputs read from RAM, not cache")
    p.add_argument("--sweep", action="store_true", help="size sweep for the MIN_ELEMENTS_* rules")
    return p.parse_args()


def best_ms(fns: dict, repeat: int) -> dict:
    """{name: best ms} timing the candidates round-robin (one warm-up each)."""
    for f in fns.values():
        f()
    t = {k: float("inf") for k in fns}
    for _ in range(repeat):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            t[k] = min(t[k], (time.perf_counter() - t0) * 1e3)
    return t


class Inputs:
    """Copies of the operands; each call takes the next set (many when --cold)."""

    def __init__(self, arrays, cold: bool):
        nbytes = sum(a.nbytes for a in arrays)
        k = max(1, -(-COLD_BYTES // max(nbytes, 1))) if cold else 1
        self.sets = [[a.copy(order="K") for a in arrays] for _ in range(k)]
        self.i = 0

    def next(self):
        self.i = (self.i + 1) % len(self.sets)
        return self.sets[self.i]


def _channels_last(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def row(name, fns, repeat):
    t = best_ms(fns, repeat)
    cols = "  ".join(f"{k} {v:8.3f}" for k, v in t.items())
    ratio = f"   numpy/native {t['numpy'] / t['native']:5.2f}x" if "native" in t else ""
    print(f"{name:44s} {cols}{ratio}", flush=True)


def bench_binary(args, ctx, pool1):
    rng = np.random.default_rng(0)
    shapes = [
        ("Add", "[1,320,64,64] + bias[320,1,1]", (1, 320, 64, 64), (320, 1, 1), False),
        ("Add", "  same, channels-last", (1, 320, 64, 64), (320, 1, 1), True),
        ("Add", "[1,320,64,64] + same", (1, 320, 64, 64), (1, 320, 64, 64), False),
        ("Add", "  same, channels-last", (1, 320, 64, 64), (1, 320, 64, 64), True),
        ("Add", "[1,1280,16,16] + bias[1280,1,1]", (1, 1280, 16, 16), (1280, 1, 1), False),
        ("Add", "[1,4096,320] + [320]", (1, 4096, 320), (320,), False),
        ("Add", "[1,4096,320] + same", (1, 4096, 320), (1, 4096, 320), False),
        ("Mul", "[1,4096,1280] * same (GEGLU)", (1, 4096, 1280), (1, 4096, 1280), False),
        ("Mul", "[1,4096,1280] * [1280]", (1, 4096, 1280), (1280,), False),
        ("Div", "[1,4096,320] / scalar", (1, 4096, 320), (), False),
        ("Div", "[1,320,64,64] / same", (1, 320, 64, 64), (1, 320, 64, 64), False),
        ("Sub", "[1,4096,320] - [1,4096,1]", (1, 4096, 320), (1, 4096, 1), False),
        ("Add", "[1,77,768] + same (text encoder)", (1, 77, 768), (1, 77, 768), False),
    ]
    native_ops = {"Add": NE.Add7, "Sub": NE.Sub7, "Mul": NE.Mul7, "Div": NE.Div7}
    for name, label, sa, sb, cl in shapes:
        a = rng.standard_normal(sa).astype(np.float32)
        b = (rng.standard_normal(sb) + (3.0 if name == "Div" else 0.0)).astype(np.float32)
        if cl:
            a = _channels_last(a)
            b = _channels_last(b) if b.ndim == 4 else b
        ins = Inputs([a, b], args.cold)
        perm = NE._memory_order(a.ndim, (a, b))
        at, bt = a.transpose(perm), NE._aligned(b, a.ndim).transpose(perm)
        row(f"{name} {label}", {
            "numpy": lambda: E._arith(name, *ins.next()),
            "native": lambda: native_ops[name](*ins.next(), _ctx=ctx),
            "xnn": lambda: native.xnn_binary(name, at, bt, pool=ctx.pool),
            "xnn-1t": lambda: native.xnn_binary(name, at, bt, pool=pool1),
        }, args.repeat)


def bench_unary(args, ctx, pool1):
    rng = np.random.default_rng(1)
    for shape in [(1, 320, 64, 64), (1, 1280, 32, 32), (1, 4096, 1280), (1, 1280, 8, 8)]:
        x = rng.standard_normal(shape).astype(np.float32)
        ins = Inputs([x], args.cold)
        row(f"Sigmoid {list(shape)}", {
            "numpy": lambda: E.Sigmoid(*ins.next()),
            "native": lambda: NE.Sigmoid(*ins.next(), _ctx=ctx),
            "xnn": lambda: native.xnn_unary("Sigmoid", x, pool=ctx.pool),
            "xnn-1t": lambda: native.xnn_unary("Sigmoid", x, pool=pool1),
        }, args.repeat)
    x = rng.standard_normal((1, 4096, 1280)).astype(np.float32)
    ins = Inputs([x], args.cold)
    lo, hi = np.array(-1, np.float32), np.array(1, np.float32)
    row("Clip [1,4096,1280] (with NaN check)", {
        "numpy": lambda: E.Clip11(ins.next()[0], lo, hi),
        "native": lambda: NE.Clip11(ins.next()[0], lo, hi, _ctx=ctx),
        "xnn": lambda: native.xnn_unary("Clip", x, lo=-1, hi=1, pool=ctx.pool),
    }, args.repeat)
    xa = np.abs(x)
    ins = Inputs([xa], args.cold)
    for name in ("Abs", "Neg", "Sqrt", "Round", "Floor"):
        numpy_op = E._make_math_unary(name, E._MATH_UNARY[name][0])
        fns = {"numpy": lambda: numpy_op(*ins.next())}
        if hasattr(NE, name):
            fns["native"] = lambda: getattr(NE, name)(*ins.next(), _ctx=ctx)
        fns["xnn"] = lambda: native.xnn_unary(name, xa, pool=ctx.pool)
        row(f"{name} [1,4096,1280]", fns, args.repeat)


def bench_sweep(args, ctx, pool1):
    """Crossover sizes: numpy vs the bare XNNPACK wrapper (rule bypassed)."""
    rng = np.random.default_rng(2)
    print("size sweep (bare wrapper vs numpy; the MIN_ELEMENTS_* rules come from here)")
    for n in [1 << k for k in range(10, 24, 2)]:
        a = rng.standard_normal(n).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32)
        c = rng.standard_normal(n // 64).astype(np.float32).reshape(-1, 1)
        a2 = a.reshape(-1, 64)
        lo, hi = np.array(-1, np.float32), np.array(1, np.float32)
        t = best_ms({
            "add np": lambda: np.add(a, b), "add xnn": lambda: native.xnn_binary("Add", a, b, pool=ctx.pool),
            "bias np": lambda: np.add(a2, c), "bias xnn": lambda: native.xnn_binary("Add", a2, c, pool=ctx.pool),
            "abs np": lambda: np.abs(a), "abs xnn": lambda: native.xnn_unary("Abs", a, pool=ctx.pool),
            "sigm np": lambda: E.Sigmoid(a), "sigm xnn": lambda: native.xnn_unary("Sigmoid", a, pool=ctx.pool),
            "clip np": lambda: E.Clip11(a, lo, hi),
            "clip xnn+nan": lambda: NE._has_nan(a) or native.xnn_unary("Clip", a, lo=-1, hi=1, pool=ctx.pool),
        }, args.repeat)
        print(f"  n={n:>8d}  " + "  ".join(f"{k} {v:7.3f}" for k, v in t.items()), flush=True)


def bench_pool(args, ctx, pool1):
    rng = np.random.default_rng(3)
    for shape, k, s, p in [((1, 64, 112, 112), 3, 2, 1), ((1, 320, 64, 64), 2, 2, 0), ((1, 13, 127, 127), 3, 1, 1)]:
        x = rng.standard_normal(shape).astype(np.float32)
        xl = _channels_last(x)
        kw = dict(kernel_shape=[k, k], strides=[s, s], pads=[p] * 4)
        n, c, h, w = shape

        def transposed_max_pool():
            """The alternative to one-channel images for a C-order x: NCHW -> NHWC -> NCHW."""
            xh = native.transpose_last2(x.reshape(n, c, h * w), pool=ctx.pool).reshape(n, h, w, c)
            yh = native.xnn_max_pool2d(xh, [k, k], [s, s], [1, 1], [p] * 4, pool=ctx.pool)
            _, oh, ow, _ = yh.shape
            return native.transpose_last2(yh.reshape(n, oh * ow, c), pool=ctx.pool)

        for name, numpy_op, native_op in (("MaxPool", P.MaxPool10, NE.MaxPool10),
                                          ("AveragePool", P.AveragePool10, NE.AveragePool10)):
            fns = {"numpy": lambda: numpy_op(x, **kw), "native": lambda: native_op(x, **kw, _ctx=ctx),
                   "native-cl": lambda: native_op(xl, **kw, _ctx=ctx)}
            if name == "MaxPool":
                fns["transp+xnn"] = transposed_max_pool
            row(f"{name} {list(shape)} k{k} s{s} p{p}", fns, args.repeat)


def bench_resize(args, ctx, pool1):
    rng = np.random.default_rng(4)
    for shape, f in [((1, 320, 64, 64), 2.0), ((1, 64, 256, 256), 2.0), ((1, 13, 127, 127), 0.5)]:
        x = rng.standard_normal(shape).astype(np.float32)
        xl = _channels_last(x)
        sc = np.array([1, 1, f, f], np.float32)
        for ctm in ("half_pixel", "align_corners"):
            kw = dict(mode="linear", coordinate_transformation_mode=ctm)
            row(f"Resize linear {ctm} {list(shape)} x{f}", {
                "numpy": lambda: R.Resize11(x, None, sc, **kw),
                "native": lambda: NE.Resize11(x, None, sc, **kw, _ctx=ctx),
                "native-cl": lambda: NE.Resize11(xl, None, sc, **kw, _ctx=ctx),
            }, args.repeat)


def bench_softmax(args, ctx, pool1):
    rng = np.random.default_rng(5)
    for shape in [(8, 4096, 77), (8, 1024, 1024), (8, 4096, 4096)]:
        x = rng.standard_normal(shape).astype(np.float32)
        o = np.empty_like(x)
        row(f"Softmax {list(shape)} (ours vs XNNPACK's)", {
            "ours": lambda: native.softmax_f32(x, o, pool=ctx.pool),
            "xnn": lambda: native.xnn_softmax_f32(x, o, pool=ctx.pool),
        }, args.repeat)


def main():
    args = _args()
    ctx = NativeContext(onnxstream_py.RunOptions(threads=args.threads))
    pool1 = native.ThreadPool(1)
    print(f"threads {args.threads}, best of {args.repeat}, {'cold (RAM)' if args.cold else 'warm'} inputs; ms")
    bench_binary(args, ctx, pool1)
    bench_unary(args, ctx, pool1)
    if args.sweep:
        bench_sweep(args, ctx, pool1)
    bench_pool(args, ctx, pool1)
    bench_resize(args, ctx, pool1)
    bench_softmax(args, ctx, pool1)
    ctx.close()
    pool1.close()


if __name__ == "__main__":
    main()
