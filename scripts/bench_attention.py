"""Attention at SD 1.5 UNet shapes: onnxruntime's unfused graph vs our SlicedAttention (sliced and flash).

Usage: python scripts/bench_attention.py [--threads 2] [--repeat 5] [--shapes 4096x4096x40,...]
       python scripts/bench_attention.py --model CONVERTED_UNET --inputs INPUTS.npz [--threads 2] [--repeat 2]

With --model: the model's own attention ops, timed from the op (ONNXSTREAM_DEBUG=2 per-op
milliseconds, as scripts/profile_ops.py) in one Model (ram provider) whose runs alternate the
sliced and the flash kernel (kernel_choice.forced); prints the sum per kernel, best of --repeat.

Per shape (8 heads, q [1,8,M,d], kᵀ [1,8,d,N], v [1,8,N,d]; scale by Mul, no mask), the best of
--repeat runs, candidates interleaved so that load from other processes hits them alike:
  ort       onnxruntime, MatMul -> Mul -> Softmax(-1) -> MatMul as exported (it materialises
            the full [1,8,M,N] scores), intra-op threads = --threads
  numpy     ops/attention.py SlicedAttention (numpy/BLAS, 16 MiB slices)
  native    ops/native_attention.py SlicedAttention, attention="sliced" (16 MiB budget, the model's pool)
  flash     the same op, attention="flash" (native/osn_k_flash.c on the model's pool)
  prev      the native op before the C softmax step: numpy op's blocks with native.softmax_f32
Ratios are to ort (< 1: faster than onnxruntime) and sliced/flash (> 1: flash faster); errors are
max |native - x| / max |x|. The last line sums the UNet's 32 attentions at 512x512 (5/5/5/1 self
and cross at 4096/1024/256/64 tokens, by count in the synthetic model) from the per-shape times.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--model", help="converted model directory: time its attention ops (sliced vs flash)")
    p.add_argument("--inputs", help=".npz of the model's inputs (with --model)")
    p.add_argument("--shapes", default="4096x4096x40,4096x77x40,1024x1024x80,1024x77x80,"
                                       "256x256x160,256x77x160,64x64x160,64x77x160",
                   help="comma-separated MxNxd (queries x keys x head size)")
    return p.parse_args()


ARGS = _args() if __name__ == "__main__" else None
if ARGS is not None:   # BLAS reads its thread count at import
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import onnxstream_py as osp  # noqa: E402
from onnxstream_py.native_context import NativeContext  # noqa: E402
from onnxstream_py.ops import attention, native_attention  # noqa: E402

HEADS = 8
# attentions per (queries, keys) in the SD 1.5 UNet at 512x512 (down 2, mid 1, up 3 per level)
UNET_COUNT = {(4096, 4096): 5, (4096, 77): 5, (1024, 1024): 5, (1024, 77): 5,
              (256, 256): 5, (256, 77): 5, (64, 64): 1, (64, 77): 1}


def ort_session(d: int, threads: int):
    import onnxruntime as ort
    nodes = [helper.make_node("MatMul", ["q", "kt"], ["s"]),
             helper.make_node("Mul", ["s", "scale"], ["s2"]),
             helper.make_node("Softmax", ["s2"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, HEADS, a, b])
           for n, a, b in (("q", "M", d), ("kt", d, "N"), ("v", "N", d))]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, HEADS, "M", d])
    graph = helper.make_graph(nodes, "attention", ins, [out],
                              [numpy_helper.from_array(np.array(d ** -0.5, np.float32), "scale")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def model_attention() -> None:
    """Sum of the model's SlicedAttention op times, per kernel, best of --repeat runs each."""
    import contextlib
    import io
    import re
    from onnxstream_py import kernel_choice
    line = re.compile(r"\[\d+/\d+\] SlicedAttention \S*\s+\(.*\) -> \(.*\)\s+([\d.]+) ms")
    z = np.load(ARGS.inputs)
    feeds = {k: z[k] for k in z.files}
    opts = osp.RunOptions(backend="native", threads=ARGS.threads, attention="auto")
    best = {"sliced": float("inf"), "flash": float("inf")}
    outs = {}
    with osp.Model(ARGS.model, provider="ram", options=opts) as model:
        model.run(feeds)                       # cold run: reads and packs weights
        for _ in range(ARGS.repeat):
            for kernel in best:
                log = io.StringIO()
                os.environ["ONNXSTREAM_DEBUG"] = "2"
                try:
                    with kernel_choice.forced(kernel), contextlib.redirect_stderr(log):
                        outs[kernel] = model.run(feeds)
                finally:
                    os.environ["ONNXSTREAM_DEBUG"] = "0"
                times = [float(m.group(1)) for m in map(line.match, log.getvalue().splitlines()) if m]
                best[kernel] = min(best[kernel], sum(times))
    name = next(iter(outs["sliced"]))
    a, b = outs["flash"][name], outs["sliced"][name]
    err = float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
    print(f"{ARGS.model}: {len(times)} attention ops, threads={ARGS.threads}, best of {ARGS.repeat}")
    print(f"sliced {best['sliced']:.0f} ms, flash {best['flash']:.0f} ms, sliced/flash "
          f"{best['sliced'] / best['flash']:.2f}; output max |flash - sliced| / max |sliced| = {err:.1e}")


def main() -> None:
    if ARGS.model:
        model_attention()
        return
    ctx = NativeContext(osp.RunOptions(backend="native", threads=ARGS.threads))
    budget = osp.RunOptions().attention_slice_bytes
    print(f"threads={ARGS.threads} heads={HEADS} best of {ARGS.repeat}; ratios to onnxruntime")
    print(f"{'shape MxNxd':16s} {'ort ms':>8s} {'numpy ms':>9s} {'prev ms':>8s} {'native ms':>10s} "
          f"{'flash ms':>9s} {'native/ort':>11s} {'flash/ort':>10s} {'sliced/flash':>13s}  "
          f"native err vs numpy/ort, flash err vs ort")
    totals = {"ort": 0.0, "numpy": 0.0, "prev": 0.0, "native": 0.0, "flash": 0.0}
    counted = False
    for spec in ARGS.shapes.split(","):
        m, n, d = (int(x) for x in spec.split("x"))
        rng = np.random.default_rng(0)
        q = rng.standard_normal((1, HEADS, m, d)).astype(np.float32)
        kt = rng.standard_normal((1, HEADS, d, n)).astype(np.float32)
        v = rng.standard_normal((1, HEADS, n, d)).astype(np.float32)
        scale = np.array(d ** -0.5, np.float32)
        sess = ort_session(d, ARGS.threads)
        softmax = native_attention._softmax_on(ctx.pool)
        cands = {
            "ort": lambda: sess.run(None, {"q": q, "kt": kt, "v": v})[0],
            "numpy": lambda: attention.SlicedAttention(q, kt, v, scale, None, scale_op="mul", slice_bytes=budget),
            "prev": lambda: attention.sliced_attention(q, kt, v, scale, None, "mul", 0, budget, softmax),
            "native": lambda: native_attention.SlicedAttention(q, kt, v, scale, None, scale_op="mul",
                                                               slice_bytes=budget, attention="sliced", _ctx=ctx),
            "flash": lambda: native_attention.SlicedAttention(q, kt, v, scale, None, scale_op="mul",
                                                              attention="flash", _ctx=ctx),
        }
        best = {k: float("inf") for k in cands}
        results = {}
        for rep in range(ARGS.repeat + 1):          # the first round warms up, untimed
            for name, fn in cands.items():
                t0 = time.perf_counter()
                results[name] = fn()
                if rep:
                    best[name] = min(best[name], time.perf_counter() - t0)
        def rel(a, b):
            return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
        err = (f"{rel(results['native'], results['numpy']):.0e}/{rel(results['native'], results['ort']):.0e}, "
               f"{rel(results['flash'], results['ort']):.0e}")
        ms = {k: 1e3 * t for k, t in best.items()}
        print(f"{spec:16s} {ms['ort']:8.1f} {ms['numpy']:9.1f} {ms['prev']:8.1f} {ms['native']:10.1f} "
              f"{ms['flash']:9.1f} {ms['native'] / ms['ort']:11.2f} {ms['flash'] / ms['ort']:10.2f} "
              f"{ms['native'] / ms['flash']:13.2f}  {err}", flush=True)
        count = UNET_COUNT.get((m, n))
        if count:
            counted = True
            for k in totals:
                totals[k] += count * ms[k]
        del sess, results
    if counted:
        print(f"{'UNet attentions':16s} {totals['ort']:8.0f} {totals['numpy']:9.0f} {totals['prev']:8.0f} "
              f"{totals['native']:10.0f} {totals['flash']:9.0f} {totals['native'] / totals['ort']:11.2f} "
              f"{totals['flash'] / totals['ort']:10.2f} {totals['native'] / totals['flash']:13.2f}   "
              f"(ms, shapes given x their count in the UNet)")
    ctx.close()


if __name__ == "__main__":
    main()
