"""GFLOP/s of XNNPACK Conv / fully-connected vs the numpy path and onnxruntime, at SD 1.5 shapes.

Usage: python scripts/bench_native.py [--threads 2] [--repeat 3] [--quick] [--no-f16]

Conv (activation arrives NCHW, as in the engine today), per shape, medians of --repeat runs:
  xnn run     XNNPACK f32 setup+run on an NHWC input already in place (operator created)
  pack s      seconds to create the operator (OIHW->OHWI relayout + XNNPACK packing)
  transp s    NCHW->NHWC of the input plus NHWC->NCHW of the output (native.transpose_last2)
  xnn op      the native op's XNNPACK path as run today: transposes + create (in weight
              blocks of ops/native_linear.WEIGHT_BLOCK_BYTES) + run + delete
  numpy       onnxstream_py.ops.conv.conv_nd (the numpy/BLAS path)
  ort         onnxruntime, a single-op NCHW model
  f16 run     XNNPACK f16 setup+run (NHWC, operator created); emulated via F16C on x86
FC: the same columns for [M, K] @ [K, N] (no transposes). A second table compares the
OIHW->OHWI weight relayout in C with numpy. --quick skips the 512x512 VAE conv.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="skip the [1,256,512,512] VAE conv")
    p.add_argument("--no-f16", action="store_true")
    return p.parse_args()


ARGS = _args() if __name__ == "__main__" else None
if ARGS is not None:   # BLAS reads its thread count at import
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from onnxstream_py import native  # noqa: E402
from onnxstream_py.ops import native_linear  # noqa: E402
from onnxstream_py.ops.conv import conv_nd  # noqa: E402

# (name, x shape NCHW, Cout, kernel, stride, pad)
CONVS = [
    ("unet 320@64 3x3", (1, 320, 64, 64), 320, 3, 1, 1),
    ("unet 640@32 3x3", (1, 640, 32, 32), 640, 3, 1, 1),
    ("unet 1280@16 3x3", (1, 1280, 16, 16), 1280, 3, 1, 1),
    ("unet 2560@8 3x3->1280", (1, 2560, 8, 8), 1280, 3, 1, 1),
    ("unet down 320@64 s2", (1, 320, 64, 64), 320, 3, 2, 1),
    ("unet down 1280@16 s2", (1, 1280, 16, 16), 1280, 3, 2, 1),
    ("unet 1x1 320@64", (1, 320, 64, 64), 320, 1, 1, 0),
    ("unet 1x1 960@32->640", (1, 960, 32, 32), 640, 1, 1, 0),
    ("unet 1x1 2560@8->1280", (1, 2560, 8, 8), 1280, 1, 1, 0),
    ("vae 128@256 3x3", (1, 128, 256, 256), 128, 3, 1, 1),
    ("vae 256@512 3x3", (1, 256, 512, 512), 256, 3, 1, 1),
]
# (name, M, K, N)
FCS = [
    ("attn proj 4096x320->1280", 4096, 320, 1280),
    ("text 77x768->768", 77, 768, 768),
    ("geglu 4096x1280->10240", 4096, 1280, 10240),
    ("geglu 1024x640->5120", 1024, 640, 5120),
]


def median_time(fn, repeat: int) -> float:
    fn()   # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _ort_session(node, inputs: dict, inits: dict, threads: int):
    import onnxruntime as ort
    from onnx import helper, numpy_helper
    from onnxstream_py.dtypes import numpy_to_onnx
    g_in = [helper.make_tensor_value_info(k, numpy_to_onnx(v.dtype), v.shape) for k, v in inputs.items()]
    g = helper.make_graph([node], "g", g_in, [helper.make_tensor_value_info("y", 1, None)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _gf(flop: float, t: float) -> str:
    return f"{flop / t / 1e9:7.1f}" if t == t else "      -"


def bench_conv(name, x_shape, cout, k, stride, pad, pool, args):
    from onnx import helper
    rng = np.random.default_rng(0)
    n, cin, h, w = x_shape
    x = rng.standard_normal(x_shape, dtype=np.float32)
    wt = (rng.standard_normal((cout, cin, k, k), dtype=np.float32) / np.sqrt(cin * k * k)).astype(np.float32)
    b = rng.standard_normal(cout, dtype=np.float32)
    pads = [pad] * 4
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    flop = 2.0 * n * cout * oh * ow * cin * k * k
    r = args.repeat
    kw = dict(strides=[stride] * 2, pads=pads)
    x_nhwc = native.xnn_readable(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    t_pack = median_time(lambda: native.XnnConv2d(wt, b, **kw).close(), r)
    with native.XnnConv2d(wt, b, **kw) as op:
        y_nhwc = op.run(x_nhwc, pool=pool)
        t_run = median_time(lambda: op.run(x_nhwc, y_nhwc, pool=pool), r)

    def transposes():
        native.transpose_last2(x.reshape(n, cin, h * w), pool=pool)
        native.transpose_last2(y_nhwc.reshape(n, oh * ow, cout), pool=pool)
    t_tr = median_time(transposes, r)
    t_op = median_time(lambda: native_linear.conv2d_xnnpack(x, wt, b, [stride] * 2, pads, [1, 1], 1, pool), r)
    t_np = median_time(lambda: conv_nd(x, wt, b, [stride] * 2, pads, [1, 1], 1), r)
    sess = _ort_session(helper.make_node("Conv", ["x", "w", "b"], ["y"], **kw), {"x": x}, {"w": wt, "b": b},
                        args.threads)
    t_ort = median_time(lambda: sess.run(None, {"x": x}), r)
    del sess
    t16 = float("nan")
    if not args.no_f16:
        x16 = native.xnn_readable(x_nhwc.astype(np.float16))
        with native.XnnConv2d(wt.astype(np.float16), b.astype(np.float16), **kw) as op16:
            y16 = op16.run(x16, pool=pool)
            t16 = median_time(lambda: op16.run(x16, y16, pool=pool), r)
    print(f"{name:26s} {flop / 1e9:7.1f} {_gf(flop, t_run)} {t_pack:7.3f} {t_tr:8.3f} {_gf(flop, t_op)} "
          f"{_gf(flop, t_np)} {_gf(flop, t_ort)} {_gf(flop, t16)}", flush=True)


def bench_fc(name, m, k, n_out, pool, args):
    from onnx import helper
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    wt = (rng.standard_normal((k, n_out), dtype=np.float32) / np.sqrt(k)).astype(np.float32)
    flop = 2.0 * m * k * n_out
    r = args.repeat
    t_pack = median_time(lambda: native.XnnFullyConnected(wt).close(), r)
    with native.XnnFullyConnected(wt) as fc:
        y = fc.run(a, pool=pool)
        t_run = median_time(lambda: fc.run(a, y, pool=pool), r)
    t_op = median_time(lambda: native_linear.fc_xnnpack(a, wt, None, True, pool), r)
    t_np = median_time(lambda: np.matmul(a, wt), r)
    sess = _ort_session(helper.make_node("MatMul", ["a", "b"], ["y"]), {"a": a}, {"b": wt}, args.threads)
    t_ort = median_time(lambda: sess.run(None, {"a": a}), r)
    t16 = float("nan")
    if not args.no_f16:
        a16 = a.astype(np.float16)
        with native.XnnFullyConnected(wt.astype(np.float16)) as f16:
            y16 = f16.run(a16, pool=pool)
            t16 = median_time(lambda: f16.run(a16, y16, pool=pool), r)
    print(f"{name:26s} {flop / 1e9:7.1f} {_gf(flop, t_run)} {t_pack:7.3f} {'-':>8s} {_gf(flop, t_op)} "
          f"{_gf(flop, t_np)} {_gf(flop, t_ort)} {_gf(flop, t16)}", flush=True)


def bench_relayout(args):
    print(f"\n{'OIHW->OHWI relayout':26s} {'MB':>7s} {'C s':>8s} {'numpy s':>8s}")
    for cout, cin in ((320, 320), (1280, 1280), (1280, 2560)):
        wt = np.random.default_rng(0).standard_normal((cout, cin, 3, 3), dtype=np.float32)
        t_c = median_time(lambda: native.conv2d_weight_ohwi(wt), args.repeat)
        t_np = median_time(lambda: np.ascontiguousarray(wt.transpose(0, 2, 3, 1)), args.repeat)
        print(f"{f'[{cout},{cin},3,3]':26s} {wt.nbytes / 1e6:7.1f} {t_c:8.4f} {t_np:8.4f}", flush=True)


def main():
    args = ARGS
    pool = native.ThreadPool(args.threads)
    print(f"threads {args.threads}, medians of {args.repeat}; GFLOP/s unless marked s (seconds)")
    print(f"{'shape':26s} {'GFLOP':>7s} {'xnn run':>7s} {'pack s':>7s} {'transp s':>8s} {'xnn op':>7s} "
          f"{'numpy':>7s} {'ort':>7s} {'f16 run':>7s}")
    for name, x_shape, cout, k, s, p in CONVS:
        if args.quick and x_shape[2] >= 512:
            continue
        bench_conv(name, x_shape, cout, k, s, p, pool, args)
    for name, m, k, n in FCS:
        bench_fc(name, m, k, n, pool, args)
    bench_relayout(args)
    pool.close()


if __name__ == "__main__":
    main()
