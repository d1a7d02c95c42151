"""GroupNorm (+ SiLU) at Stable Diffusion shapes: the exported chain run op by op on the
native backend (Reshape -> InstanceNormalization -> Reshape -> Mul -> Add [-> Sigmoid -> Mul],
the registered native ops) against the fused GroupNorm op, NCHW and channels-last inputs.

Both variants run back to back in one process, best of --repeat per shape; the totals weight
each shape by how often the SD 1.5 UNet (or, for --vae, a representative VAE-decoder set)
has it. Usage: python3 scripts/bench_group_norm.py [--vae] [--repeat 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import onnxstream_py
from onnxstream_py import ops
from onnxstream_py.native_context import NativeContext

# (C, H, W), SiLU follows, count: the SD 1.5 UNet's 61 GroupNorm chains at 512x512
UNET = [((320, 32, 32), 1, 1), ((320, 64, 64), 0, 5), ((320, 64, 64), 1, 8), ((640, 16, 16), 1, 1),
        ((640, 32, 32), 0, 5), ((640, 32, 32), 1, 6), ((640, 64, 64), 1, 2), ((960, 32, 32), 1, 1),
        ((960, 64, 64), 1, 1), ((1280, 8, 8), 0, 1), ((1280, 8, 8), 1, 11), ((1280, 16, 16), 0, 5),
        ((1280, 16, 16), 1, 6), ((1280, 32, 32), 1, 1), ((1920, 16, 16), 1, 1), ((1920, 32, 32), 1, 1),
        ((2560, 8, 8), 1, 3), ((2560, 16, 16), 1, 2)]
# one of each size class of the VAE decoder (512x512 output)
VAE = [((512, 64, 64), 1, 1), ((512, 128, 128), 1, 1), ((512, 256, 256), 1, 1), ((256, 256, 256), 1, 1),
       ((256, 512, 512), 1, 1), ((128, 512, 512), 1, 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vae", action="store_true", help="VAE-decoder shapes instead of the UNet's")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    ops.load_native()
    ctx = NativeContext(onnxstream_py.RunOptions(threads=args.threads))

    def impl(name, domain=""):
        i = ops.lookup(name, 17, domain, "native")
        return (lambda *a, **k: i.fn(*a, **k, _ctx=ctx)) if i.wants_ctx else i.fn

    reshape, inorm, mul, add, sigmoid = (impl(n) for n in ("Reshape", "InstanceNormalization", "Mul", "Add",
                                                           "Sigmoid"))
    group_norm = impl("GroupNorm", "onnxstream")

    def best(f) -> float:
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return min(times) * 1e3

    ones, zeros = np.ones(32, np.float32), np.zeros(32, np.float32)
    print(f"{'shape':>22} silu layout   unfused ms   fused ms")
    for layout in ("nchw", "nhwc"):
        total_u = total_f = 0.0
        for (c, h, w), silu, count in (VAE if args.vae else UNET):
            x = np.random.default_rng(0).standard_normal((1, c, h, w)).astype(np.float32)
            if layout == "nhwc":
                x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
            gamma, beta = (np.random.default_rng(s).random((c, 1, 1), np.float32) for s in (1, 2))
            r1, r2 = np.array([0, 32, -1]), np.array(x.shape)

            def chain():
                t = reshape(inorm(reshape(x, r1), ones, zeros, epsilon=1e-5), r2)
                t = add(mul(t, gamma), beta)
                return mul(t, sigmoid(t)) if silu else t

            u = best(chain)
            f = best(lambda: group_norm(x, gamma, beta, ones, zeros, num_groups=32, epsilon=1e-5, silu=silu))
            total_u += u * count
            total_f += f * count
            print(f"{str([1, c, h, w]):>22} {silu:4d} {layout:6s} {u:12.2f} {f:10.2f}  x{count}")
        print(f"{'total':>22}      {layout:6s} {total_u:12.1f} {total_f:10.1f}")
    ctx.close()


if __name__ == "__main__":
    main()
