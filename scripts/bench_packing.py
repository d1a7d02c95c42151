"""What XNNPACK's weight packing costs per model run (the operator cache's saving).

    python scripts/bench_packing.py MODEL_DIR --inputs INPUTS.npz [--threads 2]

Forces every Conv/MatMul/Gemm onto XNNPACK, runs the model twice with the streaming
DiskPrefetch provider and no operator cache, and reports the second run's time and the
seconds spent creating (packing) XNNPACK convolution and fully-connected operators.
"""
import onnxstream_py  # noqa: F401  first, so OpenBLAS's spin timeout applies (see its __init__)

import argparse
import sys
import time

import numpy as np

from onnxstream_py import kernel_choice, native


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    z = np.load(args.inputs)
    feeds = {k: z[k] for k in z.files}
    acc = {"convolution": [0, 0.0], "fully-connected": [0, 0.0]}
    for cls, kind in ((native.XnnConv2d, "convolution"), (native.XnnFullyConnected, "fully-connected")):
        def timed(self, w, *a, _orig=cls.__init__, _kind=kind, **kw):
            t0 = time.perf_counter()
            _orig(self, w, *a, **kw)
            acc[_kind][0] += 1
            acc[_kind][1] += time.perf_counter() - t0
        cls.__init__ = timed
    opts = onnxstream_py.RunOptions(threads=args.threads, operator_cache_bytes=0)
    with kernel_choice.forced("xnnpack"), onnxstream_py.Model(args.model_dir, provider="prefetch", options=opts) as m:
        m.run(feeds)
        for v in acc.values():
            v[:] = [0, 0.0]
        t0 = time.perf_counter()
        m.run(feeds)
        total = time.perf_counter() - t0
    print(f"run with every Conv/MatMul/Gemm on XNNPACK, streamed, no operator cache: {total:.2f} s")
    for kind, (n, secs) in acc.items():
        print(f"  packing {kind}: {n} operators (blocks of output channels), {secs:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
