"""GFLOP/s of onnxstream_py's numpy Conv vs onnxruntime on UNet/VAE-like shapes, in one process.

Usage: python scripts/bench_ops.py [--repeat 3] [--fp16-weights] [--chunk-mib 8]
Each line: shape, best-of-N time and GFLOP/s for ours and for onnxruntime (2 threads),
and our peak extra allocation (tracemalloc, in a separate untimed run).
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from onnxstream_py.ops import conv as conv_mod  # noqa: E402

# (name, x shape, Cout, kernel, stride, pad)
SHAPES = [
    ("unet 320@64 3x3", (1, 320, 64, 64), 320, 3, 1, 1),
    ("unet 640@32 3x3", (1, 640, 32, 32), 640, 3, 1, 1),
    ("unet 1280@16 3x3", (1, 1280, 16, 16), 1280, 3, 1, 1),
    ("unet 2560@8 3x3->1280", (1, 2560, 8, 8), 1280, 3, 1, 1),
    ("unet down 320@64 s2", (1, 320, 64, 64), 320, 3, 2, 1),
    ("unet 1x1 320@64", (1, 320, 64, 64), 320, 1, 1, 0),
    ("unet 1x1 960@32->640", (1, 960, 32, 32), 640, 1, 1, 0),
    ("unet 1x1 2560@8->1280", (1, 2560, 8, 8), 1280, 1, 1, 0),
    ("vae 128@256 3x3", (1, 128, 256, 256), 128, 3, 1, 1),
]


def _ort_session(x_shape, w, stride, pad):
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper
    k = w.shape[2]
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[k, k], strides=[stride, stride],
                            pads=[pad] * 4)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _best(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--fp16-weights", action="store_true", help="our conv gets float16 weights (fp32 activations)")
    ap.add_argument("--chunk-mib", type=float, default=None, help="override conv.CHUNK_BYTES")
    ap.add_argument("--only", default="", help="substring filter on the shape name")
    args = ap.parse_args()
    if args.chunk_mib:
        conv_mod.CHUNK_BYTES = int(args.chunk_mib * (1 << 20))
    rng = np.random.default_rng(0)
    print(f"CHUNK_BYTES={conv_mod.CHUNK_BYTES >> 10} KiB")
    print(f"{'shape':28s} {'ours ms':>9s} {'GF/s':>6s} {'ort ms':>9s} {'GF/s':>6s} {'ratio':>6s} {'peak MiB':>9s}")
    for name, xs, cout, k, stride, pad in SHAPES:
        if args.only not in name:
            continue
        x = rng.standard_normal(xs, dtype=np.float32)
        w = (rng.standard_normal((cout, xs[1], k, k), dtype=np.float32) * 0.05)
        ours_w = w.astype(np.float16) if args.fp16_weights else w
        oh = (xs[2] + 2 * pad - k) // stride + 1
        flops = 2.0 * cout * xs[1] * k * k * oh * oh
        t_ours = _best(lambda: conv_mod.conv_nd(x, ours_w, None, [stride] * 2, [pad] * 4, None, 1), args.repeat)
        sess = _ort_session(xs, w, stride, pad)
        t_ort = _best(lambda: sess.run(None, {"x": x}), args.repeat)
        tracemalloc.start()
        y = conv_mod.conv_nd(x, ours_w, None, [stride] * 2, [pad] * 4, None, 1)
        peak = tracemalloc.get_traced_memory()[1] - y.nbytes
        tracemalloc.stop()
        del y
        print(f"{name:28s} {t_ours * 1e3:9.1f} {flops / t_ours / 1e9:6.1f} {t_ort * 1e3:9.1f} "
              f"{flops / t_ort / 1e9:6.1f} {t_ours / t_ort:6.2f} {peak / 2**20:9.1f}")


if __name__ == "__main__":
    main()
