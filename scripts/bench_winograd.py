"""Winograd 3x3 convolution vs the other Conv kernels on the SD VAE decoder's and UNet's shapes.

    python scripts/bench_winograd.py [--threads 2] [--repeats 3] [--only vae|unet] [--no-ort] [--no-blas]
    python scripts/bench_winograd.py --vae-total [--no-ort]

Per shape (3x3, stride 1, pad 1, batch 1, float32), back-to-back in one process, best of
``--repeats``: Winograd F(4x4) and F(2x2) with the GEMMs on numpy's BLAS ("f4 blas") or on
XNNPACK fully-connected operators ("f4 xnn") (prepared: the weight transform and packing
excluded, as the operator cache keeps them; "f4 xnn streamed" includes them, in
WEIGHT_BLOCK_BYTES blocks), XNNPACK's
convolution (native.XnnConv2d on NHWC, packing excluded; every kernel allocates its output
per run, as in the engine), BLAS im2col (ops/conv.py conv_nd,
NCHW) and onnxruntime's Conv (a single-node model, intra-op threads = --threads). Prints ms and
effective GFLOP/s = direct-convolution FLOPs (2 * N * OH * OW * Cout * Cin * 9) / time, and
the Winograd outputs' error against XNNPACK's (max abs / max |ref|).

--vae-total: every 3x3 convolution of the SD 1.5 VAE decoder (latent 64x64 -> 512x512 image;
VAE_DECODER_3X3 with counts), each kernel's best time per shape times its count, summed: the
"3x3 convolutions together" figure of the Winograd bar (Winograd vs the direct path).
"""
import onnxstream_py  # noqa: F401  first, so OpenBLAS's spin timeout applies (see its __init__)

import argparse
import sys
import time

import numpy as np

from onnxstream_py import native
from onnxstream_py.layout import as_nhwc
from onnxstream_py.ops.conv import conv_nd
from onnxstream_py.ops.winograd import PreparedWinograd, conv2d_winograd

# (label, Cin, Cout, H = W)
VAE = [("vae 512@64", 512, 512, 64), ("vae 512@128", 512, 512, 128), ("vae 512->256@256", 512, 256, 256),
       ("vae 256@256", 256, 256, 256), ("vae 128@512", 128, 128, 512)]
UNET = [("unet 320@64", 320, 320, 64), ("unet 640@32", 640, 640, 32), ("unet 1280@16", 1280, 1280, 16)]
PADS = [1, 1, 1, 1]
# (Cin, Cout, H = W, how many) of the SD 1.5 VAE decoder's 3x3 stride-1 convolutions (44 of 48 Convs)
VAE_DECODER_3X3 = [(4, 512, 64, 1), (512, 512, 64, 10), (512, 512, 128, 7), (512, 512, 256, 1),
                   (512, 256, 256, 1), (256, 256, 256, 4), (256, 256, 512, 1), (256, 128, 512, 1),
                   (128, 128, 512, 5), (128, 3, 512, 1)]


def best_ms(f, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def ort_conv(x, w, b, threads):
    """An onnxruntime session running one Conv node (None when onnxruntime is missing)."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    n, cin, h, wd = x.shape
    cout = w.shape[0]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3], pads=PADS)], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, cout, h, wd])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {"x": x})[0]


def vae_total(args, pool) -> int:
    rng = np.random.default_rng(0)
    names = ["f4 xnn", "f2 xnn", "xnnpack", "ort"]   # f4 on BLAS: see the per-shape table (far slower under load)
    total = dict.fromkeys(names, 0.0)
    print(f"{'Cin->Cout@HW x n':22s} " + " ".join(f"{k:>9s}" for k in names) + "   (ms per conv, best of "
          f"{args.repeats}, {args.threads} threads)")
    for cin, cout, hw, count in VAE_DECODER_3X3:
        x = rng.standard_normal((1, cin, hw, hw), dtype=np.float32)
        w = (rng.standard_normal((cout, cin, 3, 3), dtype=np.float32) / np.sqrt(9 * cin)).astype(np.float32)
        b = rng.standard_normal(cout, dtype=np.float32) * 0.1
        x_nhwc = as_nhwc(x)
        x_cl = x_nhwc.transpose(0, 3, 1, 2)
        prep = {"f4 xnn": PreparedWinograd(w, b, "f4", pool, "xnnpack"),
                "f2 xnn": PreparedWinograd(w, b, "f2", pool, "xnnpack")}
        xnn = native.XnnConv2d(w, b, pads=PADS)
        y_shape = (1, hw, hw, cout)   # a fresh output per run, as the engine's Conv allocates
        runs = {**{k: (lambda p=p: conv2d_winograd(x_cl, None, None, PADS, pool, prepared=p)) for k, p in prep.items()},
                "xnnpack": lambda: xnn.run(native.xnn_readable(x_nhwc), native.xnn_empty(y_shape, np.float32), 0, pool),
                "ort": None if args.no_ort else ort_conv(x, w, b, args.threads)}
        cells = []
        for k in names:
            if runs[k] is None:
                cells.append(f"{'-':>9s}")
                continue
            runs[k]()
            ms = best_ms(runs[k], args.repeats)
            total[k] += ms * count
            cells.append(f"{ms:9.1f}")
        print(f"{f'{cin}->{cout}@{hw} x {count}':22s} " + " ".join(cells), flush=True)
        runs.clear()
        xnn.close()
        for p in prep.values():
            p.close()
    print(f"{'total ms':22s} " + " ".join(f"{total[k]:9.0f}" for k in names))
    print(f"{'xnnpack / kernel':22s} " + " ".join(f"{total['xnnpack'] / total[k]:9.2f}" if total[k] else f"{'-':>9s}"
                                                for k in names))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=("vae", "unet"))
    ap.add_argument("--no-ort", action="store_true")
    ap.add_argument("--no-blas", action="store_true", help="skip the (slow) BLAS im2col path")
    ap.add_argument("--vae-total", action="store_true", help="sum over the VAE decoder's 3x3 convolutions")
    args = ap.parse_args()
    if args.vae_total:
        return vae_total(args, native.ThreadPool(args.threads))
    shapes = {"vae": VAE, "unet": UNET, None: VAE + UNET}[args.only]
    pool = native.ThreadPool(args.threads)
    rng = np.random.default_rng(0)
    names = ["f4 blas", "f4 xnn", "f2 blas", "f2 xnn", "f4 xnn streamed", "xnnpack", "blas", "ort"]
    print(f"{'shape':18s} " + " ".join(f"{k:>15s}" for k in names) + "   err f4 / f2   (ms | GFLOP/s, "
          f"{args.threads} threads)")
    for label, cin, cout, hw in shapes:
        x = rng.standard_normal((1, cin, hw, hw), dtype=np.float32)
        w = (rng.standard_normal((cout, cin, 3, 3), dtype=np.float32) / np.sqrt(9 * cin)).astype(np.float32)
        b = rng.standard_normal(cout, dtype=np.float32) * 0.1
        x_nhwc = as_nhwc(x)
        x_cl = x_nhwc.transpose(0, 3, 1, 2)
        flops = 2.0 * hw * hw * cout * cin * 9
        prep = {f"{v} {g}": PreparedWinograd(w, b, v, pool, gemm)
                for v in ("f4", "f2") for g, gemm in (("blas", "blas"), ("xnn", "xnnpack"))}
        xnn = native.XnnConv2d(w, b, pads=PADS)
        y_shape = (1, hw, hw, cout)   # a fresh output per run, as the engine's Conv allocates
        runs = {
            **{k: (lambda p=p: conv2d_winograd(x_cl, None, None, PADS, pool, prepared=p)) for k, p in prep.items()},
            "f4 xnn streamed": lambda: conv2d_winograd(x_cl, w, b, PADS, pool, "f4", gemm="xnnpack"),
            "xnnpack": lambda: xnn.run(native.xnn_readable(x_nhwc), native.xnn_empty(y_shape, np.float32), 0, pool),
            "blas": None if args.no_blas else lambda: conv_nd(x, w, b, None, PADS),
            "ort": None if args.no_ort else ort_conv(x, w, b, args.threads),
        }
        cells = []
        for k in names:
            if runs[k] is None:
                cells.append(f"{'-':>15s}")
                continue
            runs[k]()   # warm-up (first-touch of scratch, OpenBLAS threads)
            ms = best_ms(runs[k], args.repeats)
            cells.append(f"{ms:7.1f}|{flops / ms / 1e6:6.1f}" if ms < 1e5 else f"{ms:15.0f}")
        ref = runs["xnnpack"]().transpose(0, 3, 1, 2)
        s = float(np.abs(ref).max())
        errs = [float(np.abs(runs[v]() - ref).max()) / s for v in ("f4 xnn", "f2 xnn")]
        print(f"{label:18s} " + " ".join(cells) + f"   {errs[0]:.1e} / {errs[1]:.1e}", flush=True)
        runs.clear()   # frees the onnxruntime session: its spinning threads would slow the next shape
        xnn.close()
        for p in prep.values():
            p.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
