"""The ``onnxstream`` command: convert, run, and the built-in demo.

    onnxstream convert MODEL.onnx OUT_DIR [--precision fp32|fp16-storage|w8a32] [--fix-shape NAME=d0,d1,...]
        [--quantize w8a8 --calibration DATA.npz [--calibration-method minmax|percentile]
         [--percentile 99.99] [--keep-fp32 PATTERN ...]]
    onnxstream run MODEL_DIR --input NAME=FILE.npy ... [--output-dir DIR] [--provider prefetch]
    onnxstream tune MODEL_DIR --input NAME=FILE.npy ...   # measure kernel choices (native backend)
    onnxstream convert-sd EXPORT_DIR OUT_DIR   # a whole optimum SD export (sd/convert.py)
    onnxstream sd --models-path DIR --prompt ...   # text to image (sd/cli.py)
    onnxstream demo            # convert the tiny SD pipeline shipped in the package, generate a PNG

Every command prints its wall time and the process's peak RSS (getrusage max RSS).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time

def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _summary(name: str, a) -> str:
    import numpy as np
    a = np.asarray(a)
    s = f"{name}: {a.dtype.name}{list(a.shape)}"
    if a.size and a.dtype.kind in "fiub":
        f = a.astype(np.float64)
        s += f"  mean {f.mean():.6g}  std {f.std():.6g}  min {f.min():.6g}  max {f.max():.6g}"
    return s


def _options(args):
    from .options import RunOptions
    cache = None if args.operator_cache_mib is None else args.operator_cache_mib << 20
    return RunOptions(threads=args.threads, attention_slices=args.attention_slices, backend=args.backend,
                      operator_cache_bytes=cache, attention=args.attention,
                      max_weight_chunk_bytes=args.max_weight_chunk_mib << 20,
                      activation_storage=args.activation_storage, precision=args.precision)


def cmd_convert(args) -> int:
    from .converter import convert, parse_fix_shape
    fix = dict(parse_fix_shape(s) for s in args.fix_shape or [])
    t0 = time.perf_counter()
    quantize = None
    if args.quantize:
        from .quantize import QuantizeConfig
        quantize = QuantizeConfig(args.quantize, args.calibration or "", args.calibration_method,
                                  args.percentile, tuple(args.keep_fp32 or ()))
    report = convert(args.model, args.out_dir, fp16=args.fp16, fix_shapes=fix, quantize=quantize,
                     precision=args.precision)
    print(report.summary())
    print(f"converted {args.model} -> {args.out_dir} in {time.perf_counter() - t0:.2f} s, "
          f"peak RSS {peak_rss_mib():.1f} MiB")
    return 0


def _parse_inputs(specs: list[str]) -> dict:
    import numpy as np
    feeds = {}
    for spec in specs or []:
        name, eq, path = spec.partition("=")
        if not eq or not name or not path:
            raise SystemExit(f"--input {spec!r}: expected NAME=FILE.npy")
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise SystemExit(f"--input {name}: cannot load {path}: {e}") from None
    return feeds


def cmd_run(args) -> int:
    import numpy as np
    from .model import Model
    feeds = _parse_inputs(args.input)
    t0 = time.perf_counter()
    with Model(args.model_dir, provider=args.provider, options=_options(args)) as model:
        load_s = time.perf_counter() - t0
        times = []
        for _ in range(args.runs):
            t1 = time.perf_counter()
            outputs = model.run(feeds)
            times.append(time.perf_counter() - t1)
    for name, a in outputs.items():
        print(_summary(name, a))
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
        for name, a in outputs.items():
            safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
            np.save(os.path.join(args.output_dir, safe + ".npy"), a)
        print(f"outputs written to {args.output_dir}")
    print(f"load {load_s:.2f} s; run {min(times):.3f} s (best of {len(times)}); "
          f"peak RSS {peak_rss_mib():.1f} MiB")
    return 0


def cmd_tune(args) -> int:
    from . import kernel_choice
    from .tune import tune_model
    feeds = _parse_inputs(args.input)
    kernel_choice.clear()
    t0 = time.perf_counter()
    from .sd.pipeline import parse_memory
    from .tune import default_cache_bytes, runs_cached_pass
    cache = parse_memory(args.cache_bytes) if args.cache_bytes is not None else default_cache_bytes()
    if not runs_cached_pass(cache):
        print(f"operator cache budget {cache / 2**20:.0f} MiB: the cached pass (Ram provider's choices) is skipped")
    path = tune_model(args.model_dir, feeds, threads=args.threads, provider=args.provider, cache_bytes=cache)
    for e in kernel_choice.table():
        secs = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in sorted(e["seconds"].items()))
        print(f"{e['key'][0]:8s} {e['choice']:8s} ({secs})  {e['key'][1:]}")
    where = path or "nowhere (the model directory is read-only)"
    print(f"tuned {len(kernel_choice.table())} op shapes in {time.perf_counter() - t0:.1f} s; "
          f"stored in {where}; peak RSS {peak_rss_mib():.1f} MiB")
    return 0


def token_opt(sp) -> None:
    sp.add_argument("--token-env", metavar="NAME", default=None,
                    help="for a model URL: send 'Authorization: Bearer $NAME' to its server (a hub "
                         "that needs a token; not to a host it redirects to), e.g. HF_TOKEN")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="onnxstream", description="Streaming ONNX inference with little memory.")
    sub = p.add_subparsers(dest="command", required=True)

    def run_opts(sp):
        sp.add_argument("--provider", default="prefetch", help="nocache | prefetch | ram (default prefetch)")
        token_opt(sp)
        sp.add_argument("--threads", type=int, default=None, help="threads for heavy math (default: all cores)")
        sp.add_argument("--backend", default="native", choices=["numpy", "native"],
                        help="native (default: C kernels and XNNPACK where available) or numpy (reference)")
        sp.add_argument("--operator-cache-mib", type=int, default=None,
                        help="MiB of packed XNNPACK operators kept across runs (default: the "
                             "model's weight bytes with --provider ram, 0 otherwise)")
        sp.add_argument("--attention-slices", type=int, default=0,
                        help="query-row slices for attention (0: sized to a 16 MiB budget)")
        sp.add_argument("--attention", default="auto", choices=["auto", "flash", "sliced"],
                        help="fused attention kernel on the native backend (default auto: measured or flash)")
        sp.add_argument("--max-weight-chunk-mib", type=int, default=8,
                        help="stream larger Conv/MatMul/Gemm weights in chunks of rows (0: off; default 8)")
        sp.add_argument("--activation-storage", default="fp32", choices=["fp32", "fp16"],
                        help="fp16: keep long-lived activations (skip connections) as FP16 meanwhile")
        sp.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "w8a8"],
                        help="computing precision (default auto: the model's own; fp16 needs FP16 arithmetic, "
                             "else runs fp32 with a warning; w8a8 needs a --quantize w8a8 model)")

    c = sub.add_parser("convert", help="convert an ONNX model into the streaming format")
    c.add_argument("model", help="MODEL.onnx (external data is read from beside it)")
    c.add_argument("out_dir")
    c.add_argument("--precision", choices=["fp32", "fp16-storage", "w8a32"], default=None,
                   help="weights: fp32 (default), fp16-storage (FP16, computed in FP32) or w8a32 (int8 per "
                        "output channel for Conv/MatMul/Gemm weights, computed in FP32)")
    c.add_argument("--fp16", action="store_true", help="alias of --precision fp16-storage")
    c.add_argument("--fix-shape", action="append", metavar="NAME=d0,d1,...",
                   help="pin an input's shape and fold the shape arithmetic (repeatable)")
    c.add_argument("--quantize", choices=["w8a8"], help="w8a8: static int8 quantization (QDQ form), "
                   "calibrated on --calibration")
    c.add_argument("--calibration", metavar="DATA.npz",
                   help="calibration inputs: arrays named after the model's inputs, samples stacked on a "
                        "new leading axis; or a folder of .npz input sets")
    c.add_argument("--calibration-method", default="percentile", choices=["minmax", "percentile"],
                   help="activation ranges: exact min/max, or percentiles (default)")
    c.add_argument("--percentile", type=float, default=99.99,
                   help="with --calibration-method percentile: range [P(100-p), P(p)] (default 99.99)")
    c.add_argument("--keep-fp32", nargs="+", metavar="PATTERN",
                   help="nodes (fnmatch on node names or op types) kept in float32")
    c.set_defaults(fn=cmd_convert)

    r = sub.add_parser("run", help="run a converted model on .npy inputs")
    r.add_argument("model_dir")
    r.add_argument("--input", action="append", metavar="NAME=FILE.npy", help="one per model input")
    r.add_argument("--output-dir", help="write each output as NAME.npy here")
    r.add_argument("--runs", type=int, default=1, help="run N times, report the best time")
    run_opts(r)
    r.set_defaults(fn=cmd_run)

    t = sub.add_parser("tune", help="measure XNNPACK vs BLAS per op shape for the native backend, "
                                     "store the choices beside the model")
    t.add_argument("model_dir")
    token_opt(t)
    t.add_argument("--input", action="append", metavar="NAME=FILE.npy",
                   help="inputs at the sizes you will run (one per model input)")
    t.add_argument("--provider", default="prefetch")
    t.add_argument("--threads", type=int, default=None, help="the thread count you will run with")
    t.add_argument("--cache-bytes", default=None, metavar="SIZE",
                   help="operator cache of the cached pass, e.g. 2G (default: half the available memory; "
                        "below 256M that pass is skipped)")
    t.set_defaults(fn=cmd_tune)

    from .sd import cli as sd_cli
    sd_cli.add_demo(sub, run_opts)
    sd_cli.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None) and "numpy" not in sys.modules:
        # OpenBLAS reads this once, when numpy is first imported.
        os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    from .errors import EngineError, GraphFormatError, WeightsError
    if getattr(args, "token_env", None):
        from weights_providers import http
        http.set_default_token_env(args.token_env)
    try:
        return args.fn(args)
    except (EngineError, GraphFormatError, WeightsError, OSError, ValueError) as e:
        print(f"onnxstream {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
