"""Benchmark onnxstream_py against onnxruntime on the SD 1.5 models.

For each model in MODELS_DIR/{text_encoder,unet,vae_decoder}/model.onnx:

1. convert it with `python -m onnxstream_py convert MODEL.onnx OUT_DIR` in a
   child process, recording the converter's seconds and peak RSS (from
   os.wait4, i.e. the child's ru_maxrss);
2. build seeded feeds (prompt-like token ids; UNet sample/latent ~N(0,1) at
   64x64 latents, timestep 999.0; text context ~N(0,1)) and save them to .npz;
3. run onnxstream_py (per --provider) and onnxruntime (CPUExecutionProvider,
   everything in RAM) each in a fresh child (scripts/_bench_child.py);
4. compare the outputs with onnxruntime's: max abs error and max abs error /
   max|reference| (the bar is <= 1e-3), and print a markdown table.

Fresh processes cost start-up time but make peak RSS honest. Input shapes come
from the model's own ONNX inputs (symbolic dims: batch 1, sequence 77, spatial
--latent-size), so real optimum exports work as well as the synthetic ones;
`synth.json` written by make_synthetic_sd15.py supplies the vocabulary size.

Usage:
    python scripts/bench.py [--models-dir /work/synth/sd15]
        [--models text_encoder,unet,vae_decoder] [--provider nocache[,prefetch,ram]]
        [--runs 1] [--threads 2] [--out-json F] [--engines ort,onnxstream] [--backends numpy,native]
        [--precisions fp32,fp16-storage,w8a32[,fp16,w8a8]]

Quality report (--precisions): each model is converted once per stored precision (fp32 into
WORK/MODEL/converted, the others into WORK/MODEL/converted_<precision>, reused with
--skip-convert) and run on the native backend with the first --provider; run-time modes (fp16)
reuse the fp32 conversion with RunOptions.precision. Per model and mode it prints seconds,
peak RSS, max abs error, NMSE against the FP32 native output, PSNR in dB for image outputs (the
VAE decoder: image in [-1, 1] mapped to [0, 255] as the pipeline does) and the size of
weights.bin. w8a8 needs a calibrated conversion: see W8A8_CONVERT.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "_bench_child.py")
MODELS = ("text_encoder", "unet", "vae_decoder")
REL_ERR_BAR = 1e-3
SD15_VOCAB = 49408
NP_DTYPES = {1: np.float32, 6: np.int32, 7: np.int64, 10: np.float16, 11: np.float64}


def child_env(threads):
    """Pin BLAS/OpenMP pools to --threads so both engines get the same cores."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    # what `import onnxstream_py` sets before numpy loads (see its __init__); the child
    # imports numpy first, so it is set here (onnxruntime does not use OpenBLAS)
    env.setdefault("OPENBLAS_THREAD_TIMEOUT", "8")
    repo = os.path.dirname(HERE)
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_measured(cmd, env, timeout=None):
    """Run cmd; return (returncode, stdout, stderr, seconds, peak RSS KiB of the child).

    The child is reaped with os.wait4 (not Popen.wait) to get its own rusage;
    its output goes through temporary files so no pipe can fill up meanwhile.
    """
    with tempfile.TemporaryFile("w+") as fout, tempfile.TemporaryFile("w+") as ferr:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=fout, stderr=ferr, env=env, text=True)
        timer = threading.Timer(timeout, p.kill) if timeout else None
        if timer:
            timer.start()
        _, status, usage = os.wait4(p.pid, 0)
        secs = time.perf_counter() - t0
        if timer:
            timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        fout.seek(0)
        ferr.seek(0)
        out, err = fout.read(), ferr.read()
    if p.returncode < 0:
        err += f"\n[bench] child killed by signal {-p.returncode}"
    return p.returncode, out, err, secs, usage.ru_maxrss


def graph_inputs(model_path, env):
    """[(name, numpy dtype, dims with str for symbolic)] of the model's real inputs.

    Parsed in a child so this process stays small (see _bench_child.describe).
    """
    cmd = [sys.executable, CHILD, "--describe", model_path]
    rc, out, err, _, _ = run_measured(cmd, env)
    if rc != 0:
        raise RuntimeError(f"cannot read the inputs of {model_path}:\n{tail(err)}")
    return [(name, NP_DTYPES[et], dims) for name, et, dims in json.loads(out)]


def prompt_like_ids(shape, vocab_size, rng):
    """BOS, 3-19 word ids, then EOS to the end (CLIP pads with <|endoftext|>)."""
    bos, eos = vocab_size - 2, vocab_size - 1
    ids = np.full(shape, eos, dtype=np.int64)
    for row in ids.reshape(-1, shape[-1]):
        n = min(int(rng.integers(3, 20)), shape[-1] - 2)
        row[0] = bos
        row[1:1 + n] = rng.integers(1, vocab_size - 2, size=n)
    return ids


def make_feeds(model_path, env, vocab_size, latent_size, seed):
    """Seeded feeds for the model's inputs: ids, timestep 999, else ~N(0,1)."""
    rng = np.random.default_rng(seed)
    sizes = {"batch": 1, "batch_size": 1, "sequence": 77, "sequence_length": 77,
             "height": latent_size, "width": latent_size}
    feeds = {}
    for name, dtype, dims in graph_inputs(model_path, env):
        shape = []
        for axis, d in enumerate(dims):
            if isinstance(d, int) and d > 0:
                shape.append(d)
            elif d in sizes:
                shape.append(sizes[d])
            else:  # unnamed dynamic dim: batch first, spatial last
                shape.append(1 if axis == 0 else latent_size)
        if "input_ids" in name:
            feeds[name] = prompt_like_ids(shape, vocab_size, rng).astype(dtype)
        elif "timestep" in name:
            feeds[name] = np.full(shape, 999.0, dtype=dtype)
        else:
            feeds[name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def convert(model_path, out_dir, env, timeout):
    cmd = [sys.executable, "-m", "onnxstream_py", "convert", model_path, out_dir]
    rc, out, err, secs, rss = run_measured(cmd, env, timeout)
    row = dict(engine="convert", provider="-", seconds=secs,
               peak_rss_kib=rss, ok=rc == 0)
    if rc != 0:
        row["error"] = tail(err or out)
    return row


def run_child(engine, model, inputs, outputs, args, env, provider="ram", precision="auto"):
    cmd = [sys.executable, CHILD, "--engine", engine, "--model", model,
           "--inputs", inputs, "--outputs", outputs, "--runs", str(args.runs),
           "--threads", str(args.threads), "--provider", provider, "--precision", precision]
    rc, out, err, secs, rss = run_measured(cmd, env, args.timeout)
    if rc != 0:
        return dict(engine=engine, provider=provider, ok=False, peak_rss_kib=rss,
                    wall_s=secs, error=tail(err or out))
    report = json.loads(out.strip().splitlines()[-1])
    report.update(ok=True, wall_s=secs)
    return report


def tail(text, n=12):
    return "\n".join(text.strip().splitlines()[-n:])


def compare(got_path, ref_path):
    """Worst max abs error and max abs error / max|ref| over the reference outputs."""
    worst_abs, worst_rel, notes = 0.0, 0.0, []
    with np.load(got_path) as got, np.load(ref_path) as ref:
        for name in ref.files:
            r = ref[name].astype(np.float64)
            if name not in got.files:
                notes.append(f"missing output {name}")
                worst_abs = worst_rel = float("inf")
                continue
            g = got[name].astype(np.float64)
            if g.shape != r.shape:
                notes.append(f"{name}: shape {g.shape}, expected {r.shape}")
                worst_abs = worst_rel = float("inf")
                continue
            err = float(np.abs(g - r).max()) if r.size else 0.0
            if not np.isfinite(err):
                err = float("inf")
            scale = float(np.abs(r).max()) if r.size else 0.0
            worst_abs = max(worst_abs, err)
            worst_rel = max(worst_rel, err / scale if scale > 0 else err)
    return worst_abs, worst_rel, notes


def bench_model(name, args, env, vocab_size):
    model_path = os.path.join(args.models_dir, name, "model.onnx")
    work = os.path.join(args.work_dir, name)
    os.makedirs(work, exist_ok=True)
    feeds = make_feeds(model_path, env, vocab_size, args.latent_size, args.seed)
    inputs = os.path.join(work, "inputs.npz")
    np.savez(inputs, **feeds)
    print(f"[{name}] feeds " + ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in feeds.items()),
          flush=True)

    rows = []
    ref_out = os.path.join(work, "out_ort.npz")
    ort_ok = False
    if "ort" in args.engines:
        print(f"[{name}] onnxruntime ...", flush=True)
        rows.append(run_child("ort", model_path, inputs, ref_out, args, env))
        ort_ok = rows[-1]["ok"]

    if "onnxstream" in args.engines:
        converted = os.path.join(work, "converted")
        if args.skip_convert and os.path.isdir(converted):
            conv = dict(engine="convert", provider="-", ok=True, skipped=True)
        else:
            print(f"[{name}] convert ...", flush=True)
            conv = convert(model_path, converted, env, args.timeout)
        rows.append(conv)
        for backend in args.backends:
            engine = "onnxstream" if backend == "numpy" else "onnxstream-native"
            if backend == "native" and conv["ok"] and not args.no_tune:
                # ordinary runs use stored kernel choices: measure them first (untimed)
                print(f"[{name}] onnxstream tune (native kernel choices) ...", flush=True)
                tune = run_child("onnxstream-tune", converted, inputs, os.path.join(work, "out_tune.npz"),
                                 args, env, "ram")
                if not tune["ok"]:
                    rows.append(tune)
            for provider in args.providers:
                if not conv["ok"]:
                    break
                print(f"[{name}] onnxstream_py {backend} ({provider}) ...", flush=True)
                out = os.path.join(work, f"out_{engine}_{provider}.npz")
                row = run_child(engine, converted, inputs, out, args, env, provider)
                if row["ok"] and ort_ok:
                    row["max_abs_err"], row["rel_err"], notes = compare(out, ref_out)
                    if notes:
                        row["compare_notes"] = notes
                rows.append(row)
    for r in rows:
        r["model"] = name
        if not r.get("ok", False):
            print(f"[{name}] {r['engine']} FAILED:\n{r.get('error', '')}", flush=True)
    return rows


# ---------------------------------------------------------------- precision quality report

# mode -> (stored precision converted with `convert --precision`, RunOptions.precision)
PRECISION_MODES = {"fp32": ("fp32", "fp32"), "fp16-storage": ("fp16-storage", "auto"),
                   "w8a32": ("w8a32", "auto"), "fp16": ("fp32", "fp16"), "w8a8": ("w8a8", "w8a8")}
IMAGE_OUTPUTS = {"vae_decoder"}    # outputs that are images in [-1, 1]: PSNR reported


def W8A8_CONVERT(model_path, out_dir, args):
    """Hook: the command converting model_path to w8a8 (QDQ) in out_dir, or None when it cannot
    be done with these arguments (the row then says why). Calibration data exists for the VAE
    decoder only: 4 latents drawn like the pipeline's (scripts/make_calibration_latents.py,
    written beside out_dir)."""
    if os.path.basename(os.path.dirname(os.path.abspath(model_path))) != "vae_decoder":
        return None
    cal_dir = os.path.join(os.path.dirname(os.path.abspath(out_dir)), "calibration")
    subprocess.run([sys.executable, os.path.join(HERE, "make_calibration_latents.py"), cal_dir,
                    "--size", str(args.latent_size)], check=True, stdout=subprocess.DEVNULL)
    return [sys.executable, "-m", "onnxstream_py", "convert", model_path, out_dir, "--quantize", "w8a8",
            "--calibration", os.path.join(cal_dir, "calibration.npz")]


def convert_precision(model_path, out_dir, stored, env, args):
    if stored == "w8a8":
        cmd = W8A8_CONVERT(model_path, out_dir, args)
        if cmd is None:
            return dict(engine="convert", ok=False, error="w8a8: no calibrated conversion available (W8A8_CONVERT)")
    else:
        cmd = [sys.executable, "-m", "onnxstream_py", "convert", model_path, out_dir, "--precision", stored]
    rc, out, err, secs, rss = run_measured(cmd, env, args.timeout)
    row = dict(engine="convert", seconds=secs, peak_rss_kib=rss, ok=rc == 0)
    if rc != 0:
        row["error"] = tail(err or out)
    return row


def quality(got_path, ref_path, image):
    """(max abs error, NMSE, PSNR dB or None) of every output against the FP32 run, worst over outputs."""
    worst = [0.0, 0.0, None]
    with np.load(got_path) as got, np.load(ref_path) as ref:
        for name in ref.files:
            r, g = ref[name].astype(np.float64), got[name].astype(np.float64)
            if g.shape != r.shape:
                return float("inf"), float("inf"), None
            d = g - r
            worst[0] = max(worst[0], float(np.abs(d).max()) if d.size else 0.0)
            den = float(np.sum(r * r))
            worst[1] = max(worst[1], float(np.sum(d * d)) / den if den else 0.0)
            if image:
                # the pipeline's uint8 image: (x / 2 + 0.5).clip(0, 1) * 255
                to255 = lambda x: np.clip(x / 2 + 0.5, 0, 1) * 255.0   # noqa: E731
                mse = float(np.mean((to255(g) - to255(r)) ** 2))
                psnr = float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
                worst[2] = psnr if worst[2] is None else min(worst[2], psnr)
    return tuple(worst)


def precision_report(name, args, env, vocab_size):
    """Rows of the quality table for one model: one per mode in args.precisions."""
    model_path = os.path.join(args.models_dir, name, "model.onnx")
    work = os.path.join(args.work_dir, name)
    os.makedirs(work, exist_ok=True)
    inputs = os.path.join(work, "inputs.npz")
    if not (args.skip_convert and os.path.exists(inputs)):
        np.savez(inputs, **make_feeds(model_path, env, vocab_size, args.latent_size, args.seed))
    provider = args.providers[0]
    modes = list(dict.fromkeys(["fp32"] + args.precisions))      # fp32 first: the reference
    ref_out = os.path.join(work, f"out_precision_fp32_{provider}.npz")
    rows = []
    for mode in modes:
        stored, run_precision = PRECISION_MODES[mode]
        converted = os.path.join(work, "converted" if stored == "fp32" else f"converted_{stored}")
        row = dict(model=name, mode=mode, provider=provider)
        if not (args.skip_convert and os.path.exists(os.path.join(converted, "weights.bin"))):
            print(f"[{name}] convert --precision {stored} ...", flush=True)
            conv = convert_precision(model_path, converted, stored, env, args)
            if not conv["ok"]:
                row.update(ok=False, error=conv["error"])
                rows.append(row)
                print(f"[{name}] {mode}: convert FAILED:\n{conv['error']}", flush=True)
                continue
            row["convert_s"] = conv["seconds"]
        row["weights_bytes"] = os.path.getsize(os.path.join(converted, "weights.bin"))
        print(f"[{name}] run {mode} ({provider}) ...", flush=True)
        out = os.path.join(work, f"out_precision_{mode}_{provider}.npz")
        res = run_child("onnxstream-native", converted, inputs, out, args, env, provider, run_precision)
        row.update(res)
        row["mode"] = mode
        if res["ok"] and os.path.exists(ref_out):
            row["max_abs_err"], row["nmse"], row["psnr_db"] = quality(out, ref_out, name in IMAGE_OUTPUTS)
        elif not res["ok"]:
            print(f"[{name}] {mode} FAILED:\n{res.get('error', '')}", flush=True)
        rows.append(row)
    return rows


def precision_table(rows):
    base = {r["model"]: r for r in rows if r["mode"] == "fp32" and r.get("ok")}
    lines = ["| model | mode | provider | s/run | peak RSS MiB | max abs err | NMSE | PSNR dB | weights.bin MiB | size ratio |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        b = base.get(r["model"])
        size = r.get("weights_bytes")
        ratio = size / b["weights_bytes"] if b and size else None
        s = f"{r['s_per_run']:.3f}" if r.get("ok") else "FAILED"
        rss = r.get("peak_rss_kib")
        lines.append(f"| {r['model']} | {r['mode']} | {r['provider']} | {s} | {fmt(rss / 1024 if rss else None, '.0f')} | "
                     f"{fmt(r.get('max_abs_err'), '.3g')} | {fmt(r.get('nmse'), '.3g')} | {fmt(r.get('psnr_db'), '.1f')} | "
                     f"{fmt(size / 2**20 if size else None, '.1f')} | {fmt(ratio, '.3f')} |")
    lines += ["", "Errors are against the same model's FP32 run on the native backend (same feeds). NMSE = "
              "sum (y - y_fp32)^2 / sum y_fp32^2; PSNR on the image mapped to [0, 255]; size ratio = "
              "weights.bin / FP32's."]
    return "\n".join(lines)


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def table(rows):
    """Markdown table; ratios are against the same model's onnxruntime row."""
    ort = {r["model"]: r for r in rows if r["engine"] == "ort" and r.get("ok")}
    lines = ["| model | engine | provider | s/run | first run s | peak RSS MiB | RSS ratio | "
             "speed ratio vs ORT | max abs err | rel err |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        rss = r.get("peak_rss_kib")
        rss_mib = rss / 1024 if rss else None
        base = ort.get(r["model"])
        if not r.get("ok"):
            s = "FAILED"
        elif r["engine"] == "convert":
            s = "skipped" if r.get("skipped") else f"{r['seconds']:.2f} (convert)"
        else:
            s = f"{r['s_per_run']:.3f}"
        first = fmt(r.get("first_run_s"), ".3f")
        rss_ratio = speed = None
        if base and r["engine"] != "ort" and r.get("ok") and rss:
            rss_ratio = rss / base["peak_rss_kib"]
            if r["engine"] != "convert":
                speed = base["s_per_run"] / r["s_per_run"]
        err = fmt(r.get("max_abs_err"), ".3g")
        rel = r.get("rel_err")
        rel_s = "-" if rel is None else f"{rel:.3g} {'ok' if rel <= REL_ERR_BAR else 'FAIL'}"
        lines.append(f"| {r['model']} | {r['engine']} | {r.get('provider', '-')} | {s} | {first} | "
                     f"{fmt(rss_mib, '.0f')} | {fmt(rss_ratio, '.2f')} | {fmt(speed, '.2f')} | "
                     f"{err} | {rel_s} |")
    lines += ["", f"s/run: best of the runs; first run s: the first, cold one (Ram reads and keeps every "
              f"weight then). RSS ratio = peak RSS / onnxruntime's; speed ratio = onnxruntime s/run / "
              f"engine s/run (> 1 is faster than ORT); rel err = max abs err / max|ORT output| "
              f"(bar <= {REL_ERR_BAR:g}). convert row: converter wall seconds and peak RSS."]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models-dir", default="/work/synth/sd15")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--provider", default="nocache",
                    help="onnxstream_py weights provider(s), comma separated")
    ap.add_argument("--engines", default="ort,onnxstream")
    ap.add_argument("--backends", default="native", help="onnxstream_py backends: native,numpy (comma list)")
    ap.add_argument("--no-tune", action="store_true",
                    help="native backend: use the stored kernel choices / default rule without measuring first")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latent-size", type=int, default=None,
                    help="latent height/width for UNet and VAE (default 64, or the tiny set's size)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work-dir", default=None,
                    help="converted models, feeds and outputs (default MODELS_DIR/_bench)")
    ap.add_argument("--skip-convert", action="store_true",
                    help="reuse an existing converted model")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per child")
    ap.add_argument("--out-json", default=None)
    ap.add_argument("--precisions", default=None,
                    help="quality report instead of the engine comparison: modes among "
                         + ",".join(PRECISION_MODES) + " (comma list; fp32 always runs, as the reference)")
    args = ap.parse_args(argv)

    args.providers = [p for p in args.provider.split(",") if p]
    args.engines = [e for e in args.engines.split(",") if e]
    args.backends = [b for b in args.backends.split(",") if b]
    args.work_dir = args.work_dir or os.path.join(args.models_dir, "_bench")
    names = [m for m in args.models.split(",") if m]

    manifest = {}
    synth = os.path.join(args.models_dir, "synth.json")
    if os.path.exists(synth):
        with open(synth) as f:
            manifest = json.load(f).get("models", {})
    feeds_spec = manifest.get("text_encoder", {}).get("feeds", {}).get("input_ids", {})
    vocab_size = feeds_spec.get("vocab_size", SD15_VOCAB)
    if args.latent_size is None:
        unet_feed = manifest.get("unet", {}).get("feeds", {}).get("sample", {})
        args.latent_size = unet_feed.get("shape", [1, 4, 64, 64])[-1]

    env = child_env(args.threads)
    load1 = os.getloadavg()[0]
    if load1 > (os.cpu_count() or 1) - args.threads + 0.5:
        # Timings (OpenBLAS spin-waits especially) degrade badly on a busy machine.
        print(f"[bench] warning: load average {load1:.1f} on {os.cpu_count()} CPUs; "
              f"s/run figures will be inflated", flush=True)
    if args.precisions:
        args.precisions = [p for p in args.precisions.split(",") if p]
        unknown = [p for p in args.precisions if p not in PRECISION_MODES]
        if unknown:
            ap.error(f"--precisions: unknown mode(s) {unknown}; known: {', '.join(PRECISION_MODES)}")
        rows = []
        for name in names:
            rows.extend(precision_report(name, args, env, vocab_size))
        print()
        print(precision_table(rows))
        if args.out_json:
            with open(args.out_json, "w") as f:
                json.dump(dict(models_dir=args.models_dir, threads=args.threads, load_average=os.getloadavg(),
                               rows=rows), f, indent=2)
        return 1 if any(not r.get("ok") for r in rows if r["mode"] != "w8a8") else 0
    rows = []
    for name in names:
        rows.extend(bench_model(name, args, env, vocab_size))

    # A child starts with this process's peak RSS as its ru_maxrss floor (see
    # _bench_child.describe), so report it: RSS figures below it mean nothing.
    floor_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print()
    print(table(rows))
    print(f"RSS floor (this process's peak, inherited by each child): {floor_kib / 1024:.0f} MiB")
    if args.out_json:
        with open(args.out_json, "w") as f:
            json.dump(dict(models_dir=args.models_dir, runs=args.runs, threads=args.threads,
                           latent_size=args.latent_size, rss_floor_kib=floor_kib,
                           load_average=os.getloadavg(),
                           rows=rows), f, indent=2)
    bad = [r for r in rows if not r.get("ok") or r.get("rel_err", 0) > REL_ERR_BAR]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
