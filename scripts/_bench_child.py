"""One benchmark measurement in a fresh process (spawned by scripts/bench.py).

Loads one model with one engine, runs it `--runs` times on the feeds in an
.npz file, saves the last outputs to another .npz and prints one JSON line:

    {"engine": ..., "load_s": ..., "run_s": [...], "s_per_run": (best run), "first_run_s": ...,
     "peak_rss_kib": ..., "outputs": {name: shape}}

peak_rss_kib is resource.getrusage(RUSAGE_SELF).ru_maxrss (KiB on Linux) at
the end, so it covers interpreter start-up, imports, load and every run. A
fresh process per measurement is the trade-off that makes peak RSS mean
something: nothing allocated by an earlier model or engine can hide in it.

Only the engine under test is imported (onnxruntime or onnxstream_py).

Usage:
    python scripts/_bench_child.py --engine ort|onnxstream --model PATH \
        --inputs IN.npz --outputs OUT.npz [--runs 1] [--threads 2] [--provider nocache]
    python scripts/_bench_child.py --describe MODEL.onnx
"""
import argparse
import functools
import json
import os
import resource
import sys
import time

import numpy as np

# Run as a script from scripts/: make the repo's onnxstream_py importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_ort(path, threads, provider):
    """onnxruntime CPU session with default (all in RAM) settings."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]

    def run(feeds):
        return dict(zip(names, sess.run(names, feeds)))

    return run, lambda: None


def load_onnxstream(path, threads, provider, backend="numpy", kernel_choice="cached", precision="auto"):
    import onnxstream_py

    model = onnxstream_py.Model(path, provider=provider,
                                options=onnxstream_py.RunOptions(threads=threads, backend=backend,
                                                                 kernel_choice=kernel_choice, precision=precision))
    return model.run, model.close


def load_onnxstream_native(path, threads, provider, precision="auto"):
    return load_onnxstream(path, threads, provider, backend="native", precision=precision)


def load_onnxstream_tune(path, threads, provider):
    """Measure the native backend's kernel choices (stored beside the model); not timed."""
    from onnxstream_py.tune import tune_model

    done = []

    def run(feeds):           # --runs N repeats the call: tune once
        if not done:
            tune_model(path, feeds, threads=threads, provider=provider)
            done.append(True)
        return {}

    return run, lambda: None


LOADERS = {"ort": load_ort, "onnxstream": load_onnxstream, "onnxstream-native": load_onnxstream_native,
           "onnxstream-tune": load_onnxstream_tune}


def describe(path):
    """The model's real inputs as [[name, ONNX elem_type, dims]] (str for symbolic dims).

    Done here, not in bench.py: parsing a model with embedded weights would grow
    the parent, and a child exec'd from it starts with the parent's peak RSS as
    its own ru_maxrss (Linux carries the pre-exec high-water mark over).
    """
    import onnx

    m = onnx.load(path, load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    inputs = []
    for i in m.graph.input:
        if i.name in inits:
            continue
        tt = i.type.tensor_type
        dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?")
                for d in tt.shape.dim]
        inputs.append([i.name, tt.elem_type, dims])
    return inputs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--describe", metavar="MODEL.onnx",
                    help="only print the model's inputs as JSON and exit")
    ap.add_argument("--engine", choices=sorted(LOADERS))
    ap.add_argument("--model", help="model.onnx (ort) or converted dir (onnxstream)")
    ap.add_argument("--inputs")
    ap.add_argument("--outputs")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--provider", default="nocache")
    ap.add_argument("--precision", default="auto", help="RunOptions.precision (onnxstream engines)")
    args = ap.parse_args(argv)
    if args.describe:
        print(json.dumps(describe(args.describe)))
        return 0
    if not (args.engine and args.model and args.inputs and args.outputs):
        ap.error("--engine, --model, --inputs and --outputs are required")

    with np.load(args.inputs) as z:
        feeds = {k: z[k] for k in z.files}

    t0 = time.perf_counter()
    loader = LOADERS[args.engine]
    if args.precision != "auto":
        loader = functools.partial(loader, precision=args.precision)
    run, close = loader(args.model, args.threads, args.provider)
    load_s = time.perf_counter() - t0

    run_s, outputs = [], {}
    for _ in range(max(1, args.runs)):
        t0 = time.perf_counter()
        outputs = run(feeds)
        run_s.append(time.perf_counter() - t0)
    close()

    np.savez(args.outputs, **{k: np.asarray(v) for k, v in outputs.items()})
    report = dict(
        engine=args.engine, provider=args.provider if args.engine != "ort" else "ram",
        load_s=load_s, run_s=run_s, s_per_run=min(run_s), first_run_s=run_s[0],
        peak_rss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        outputs={k: list(np.shape(v)) for k, v in outputs.items()},
    )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
