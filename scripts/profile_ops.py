"""Per-op-type time of one model run: where the time goes.

    python scripts/profile_ops.py MODEL_DIR --inputs INPUTS.npz [--provider ram] \\
        [--backend native] [--threads 2] [--top 10]

Runs the converted model once untimed (cold: reads, packs, measures nothing), then once
with ONNXSTREAM_DEBUG=2, whose per-op milliseconds it sums by op type; ``--top N`` also
lists the N slowest single ops with their input shapes. Each op's time includes fetching
its weights. A benchmark, not a test: timings depend on the machine and its load.
"""
import onnxstream_py  # noqa: F401  first, so OpenBLAS's spin timeout applies (see its __init__)

import argparse
import collections
import contextlib
import io
import os
import re
import sys
import time

import numpy as np

LINE = re.compile(r"\[\d+/\d+\] (\S+) (\S*)\s+\((.*)\) -> \((.*)\)\s+([\d.]+) ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--inputs", required=True, help=".npz with one array per model input")
    ap.add_argument("--provider", default="ram")
    ap.add_argument("--backend", default="native")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--top", type=int, default=0)
    args = ap.parse_args()
    z = np.load(args.inputs)
    feeds = {k: z[k] for k in z.files}
    opts = onnxstream_py.RunOptions(backend=args.backend, threads=args.threads)
    with onnxstream_py.Model(args.model_dir, provider=args.provider, options=opts) as m:
        m.run(feeds)
        log = io.StringIO()
        os.environ["ONNXSTREAM_DEBUG"] = "2"
        t0 = time.perf_counter()
        with contextlib.redirect_stderr(log):
            m.run(feeds)
        total = time.perf_counter() - t0
        os.environ["ONNXSTREAM_DEBUG"] = "0"
    by_type = collections.defaultdict(lambda: [0, 0.0])
    rows = []
    for line in log.getvalue().splitlines():
        m = LINE.match(line)
        if m:
            op, name, ins, _, ms = m.groups()
            by_type[op][0] += 1
            by_type[op][1] += float(ms)
            rows.append((float(ms), op, name, ins))
    summed = sum(v[1] for v in by_type.values())
    print(f"run {total:.3f} s ({args.backend}, {args.provider}); ops sum {summed / 1e3:.3f} s")
    for op, (n, ms) in sorted(by_type.items(), key=lambda kv: -kv[1][1]):
        print(f"{op:28s} {n:5d} ops {ms:9.1f} ms {100 * ms / max(summed, 1e-9):5.1f} %")
    for ms, op, name, ins in sorted(rows, reverse=True)[:args.top]:
        print(f"{ms:8.1f} ms  {op} {name}  ({ins})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
