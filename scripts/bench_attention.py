"""Attention at SD 1.5 UNet shapes: onnxruntime's unfused graph vs our SlicedAttention.

Usage: python scripts/bench_attention.py [--threads 2] [--repeat 5] [--shapes 4096x4096x40,...]

Per shape (8 heads, q [1,8,M,d], kᵀ [1,8,d,N], v [1,8,N,d]; scale by Mul, no mask), the best of
--repeat runs, candidates interleaved so that load from other processes hits them alike:
  ort       onnxruntime, MatMul -> Mul -> Softmax(-1) -> MatMul as exported (it materialises
            the full [1,8,M,N] scores), intra-op threads = --threads
  numpy     ops/attention.py SlicedAttention (numpy/BLAS, 16 MiB slices)
  native    ops/native_attention.py SlicedAttention (16 MiB budget, the model's pool)
  prev      the native op before the C softmax step: numpy op's blocks with native.softmax_f32
Ratios are to ort (< 1: faster than onnxruntime); errors are max |native - x| / max |x|. The last line sums the UNet's 32
attentions at 512x512 (5/5/5/1 self and cross at 4096/1024/256/64 tokens, by count in the
synthetic model) from the per-shape times.
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


def main() -> None:
    ctx = NativeContext(osp.RunOptions(backend="native", threads=ARGS.threads))
    budget = osp.RunOptions().attention_slice_bytes
    print(f"threads={ARGS.threads} heads={HEADS} best of {ARGS.repeat}; ratios to onnxruntime")
    print(f"{'shape MxNxd':16s} {'ort ms':>8s} {'numpy ms':>9s} {'prev ms':>8s} {'native ms':>10s} "
          f"{'numpy/ort':>10s} {'native/ort':>11s}  native err vs numpy/ort")
    totals = {"ort": 0.0, "numpy": 0.0, "prev": 0.0, "native": 0.0}
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
                                                               slice_bytes=budget, _ctx=ctx),
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
        err = f"{rel(results['native'], results['numpy']):.0e}/{rel(results['native'], results['ort']):.0e}"
        ms = {k: 1e3 * t for k, t in best.items()}
        print(f"{spec:16s} {ms['ort']:8.1f} {ms['numpy']:9.1f} {ms['prev']:8.1f} {ms['native']:10.1f} "
              f"{ms['numpy'] / ms['ort']:10.2f} {ms['native'] / ms['ort']:11.2f}  {err}", flush=True)
        count = UNET_COUNT.get((m, n))
        if count:
            counted = True
            for k in totals:
                totals[k] += count * ms[k]
        del sess, results
    if counted:
        print(f"{'UNet attentions':16s} {totals['ort']:8.0f} {totals['numpy']:9.0f} {totals['prev']:8.0f} "
              f"{totals['native']:10.0f} {totals['numpy'] / totals['ort']:10.2f} "
              f"{totals['native'] / totals['ort']:11.2f}   (ms, shapes given x their count in the UNet)")
    ctx.close()


if __name__ == "__main__":
    main()
