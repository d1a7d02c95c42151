"""Whole-pipeline benchmark: `onnxstream sd` against the same pipeline on onnxruntime.

Both runs use our tokenizer, scheduler, guidance and decode code (onnxstream_py/sd/pipeline.py);
only the networks differ: the converted models on the engine, or onnxruntime sessions on the
ONNX export the folder was converted from (OrtStableDiffusion). Each runs in a fresh process,
whose peak RSS (getrusage max RSS) is the whole pipeline's; the final latents of the two are
compared (the issue's bar: max abs error <= 1e-2 x max|reference|).

Usage:
    python scripts/bench_sd.py CONVERTED_DIR [--export EXPORT_DIR] [--steps 10] [--size 512]
        [--sampler euler_a] [--threads 2] [--seed 0] [--rpi] [--provider prefetch] [--cfg-separate]
        [--max-memory 300M] [--skip-ort] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "a photograph of an astronaut riding a horse on mars, (highly detailed:1.2), sharp focus"
NEGATIVE = "blurry, low quality"


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models_path")
    p.add_argument("--export", help="the ONNX export (default: the manifest's source)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--sampler", default="euler_a")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rpi", action="store_true")
    p.add_argument("--provider", default=None)
    p.add_argument("--cfg-separate", action="store_true")
    p.add_argument("--max-memory", default=None)
    p.add_argument("--skip-ort", action="store_true")
    p.add_argument("--json")
    p.add_argument("--child", choices=["onnxstream", "onnxruntime"], help=argparse.SUPPRESS)
    p.add_argument("--latents-out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child(args) -> None:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))
    sys.path.insert(0, ROOT)
    import onnxstream_py  # noqa: F401  (sets OpenBLAS' thread timeout before numpy loads)
    import numpy as np
    from onnxstream_py.options import RunOptions
    from onnxstream_py.sd import pipeline as pl
    opts = RunOptions(threads=args.threads)
    kw = dict(rpi=args.rpi, provider=args.provider, max_memory=args.max_memory, options=opts, progress=False,
              cfg_batch=False if args.cfg_separate else None)
    if args.child == "onnxstream":
        sd = pl.StableDiffusion(args.models_path, **kw)
    else:
        if args.max_memory is None:
            kw.pop("max_memory")        # onnxruntime: whole decode (it holds every network whole anyway)
        sd = pl.OrtStableDiffusion(args.models_path, export_dir=args.export, **kw)
    params = pl.GenerationParams(PROMPT, NEGATIVE, args.steps, 7.5, args.sampler, False, args.seed, args.size,
                                 args.size)
    t0 = time.perf_counter()
    cond, uncond = sd.encode_prompts(params.prompt, params.negative_prompt)
    latents = sd.denoise(cond, uncond, params)
    image = sd.decode(latents)
    total = time.perf_counter() - t0
    np.save(args.latents_out, latents)
    print(json.dumps({"text_encoder": sd.times.text_encoder, "unet": sd.times.unet, "vae": sd.times.vae,
                      "total": total, "peak_rss_mib": pl.peak_rss_mib(), "image_mean": float(image.mean())}))


def run_child(which: str, args, latents_out: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), args.models_path, "--child", which, "--latents-out", latents_out,
           "--steps", str(args.steps), "--size", str(args.size), "--sampler", args.sampler,
           "--threads", str(args.threads), "--seed", str(args.seed)]
    for flag, value in (("--export", args.export), ("--provider", args.provider), ("--max-memory", args.max_memory)):
        if value:
            cmd += [flag, value]
    cmd += ["--rpi"] if args.rpi else []
    cmd += ["--cfg-separate"] if args.cfg_separate else []
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{which} run failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    args = _args(argv)
    if args.child:
        child(args)
        return 0
    import numpy as np
    with tempfile.TemporaryDirectory() as d:
        ours = run_child("onnxstream", args, os.path.join(d, "ours.npy"))
        lat = np.load(os.path.join(d, "ours.npy"))
        ref = None
        if not args.skip_ort:
            ref = run_child("onnxruntime", args, os.path.join(d, "ref.npy"))
            want = np.load(os.path.join(d, "ref.npy"))
    mode = "rpi" if args.rpi else (args.provider or "nocache")
    print(f"SD pipeline {args.size}x{args.size}, {args.steps} steps {args.sampler}, {args.threads} threads, "
          f"mode {mode}{', CFG separate' if args.cfg_separate else ''}")
    row = lambda n, r: (f"  {n:<12} text encoder {r['text_encoder']:7.2f} s  UNet {r['unet']:8.2f} s  "  # noqa: E731
                        f"VAE {r['vae']:7.2f} s  total {r['total']:8.2f} s  peak RSS {r['peak_rss_mib']:7.1f} MiB")
    print(row("onnxstream", ours))
    result = {"args": vars(args), "onnxstream": ours}
    if ref is not None:
        print(row("onnxruntime", ref))
        err = float(np.abs(lat - want).max() / np.abs(want).max())
        ratio = ours["total"] / ref["total"]
        print(f"  time ratio onnxstream/onnxruntime {ratio:.2f}x; final latents max abs error {err:.2e} x max|ref|")
        result.update(onnxruntime=ref, ratio=ratio, latents_error=err)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
