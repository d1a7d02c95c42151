"""Error and memory of converted models against an FP32 reference, each run in its own process.

For every model directory (the reference first): a child process runs the model on each input set
of EVAL.npz (samples stacked on a leading axis, as make_calibration_latents.py writes them) with
the chosen provider, and reports its best run time and its peak RSS (getrusage). Outputs are
compared with the reference's: max abs error, NMSE, and PSNR of the image (values mapped
[-1, 1] -> [0, 255] after clipping, as the pipeline's postprocessing does) over all samples.

``--peak-ops N`` lists, per model, the N ops during which the process's peak RSS (getrusage max
RSS, read after every op through the interpreter's observer hook) rose the most, with the peak
reached and the live activations after the op: which op and which tensors hold the peak,
including transients inside an op that an RSS sample after each op misses.

    python3 scripts/eval_quantized.py --inputs /work/synth/sd15/_prec/quant/evaluation.npz \\
        --reference /work/synth/sd15/_bench/vae_decoder/converted \\
        /work/synth/sd15/_prec/quant/w8a8_percentile [--provider nocache] [--threads 2] [--peak-ops 8]
"""
import argparse
import json
import os
import subprocess
import sys

import onnxstream_py  # noqa: F401  (before numpy: sets OPENBLAS_THREAD_TIMEOUT)
import numpy as np


def child(model_dir: str, inputs: str, out: str, provider: str, threads: int, peak_ops: int) -> None:
    import resource
    import time
    from onnxstream_py import Model, RunOptions
    data = np.load(inputs)
    names = list(data.files)
    n = data[names[0]].shape[0]
    outs, times, rises = [], [], {}
    with Model(model_dir, provider=provider, options=RunOptions(threads=threads)) as m:
        if peak_ops:
            last = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]

            def hook(node, result):
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                if peak > last[0]:
                    outs_desc = ", ".join(f"{a.dtype.name}{list(a.shape)}" for a in result
                                          if isinstance(a, np.ndarray))
                    key = f"{node.op_type} {node.name} -> {outs_desc}"
                    rises[key] = max(rises.get(key, (0, 0))[0], peak - last[0]), peak
                    last[0] = peak
            m._interpreter.observer = hook
        for i in range(n):
            t0 = time.perf_counter()
            r = m.run({k: data[k][i] for k in names})
            times.append(time.perf_counter() - t0)
            outs.append(next(iter(r.values())))
    np.save(out, np.stack(outs))
    top = sorted(rises.items(), key=lambda kv: -kv[1][1])[:peak_ops]
    print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "best_s": min(times), "times": times,
                      "peak_ops": [f"peak {p / 1024:.0f} MiB (+{d / 1024:.0f}) during {k}" for k, (d, p) in top]}))


def run_child(model_dir, args, out, env=None):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", model_dir, "--inputs", args.inputs,
           "--out", out, "--provider", args.provider, "--threads", str(args.threads),
           "--peak-ops", str(args.peak_ops)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode:
        sys.exit(f"{model_dir}: child failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1]), p.stderr


def psnr(ref: np.ndarray, x: np.ndarray) -> float:
    a = (np.clip(ref.astype(np.float64), -1, 1) + 1) * 127.5
    b = (np.clip(x.astype(np.float64), -1, 1) + 1) * 127.5
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*")
    ap.add_argument("--reference")
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--provider", default="nocache")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peak-ops", type=int, default=0)
    ap.add_argument("--child")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.inputs, args.out, args.provider, args.threads, args.peak_ops)
        return 0
    tmp = os.path.join(os.path.dirname(os.path.abspath(args.inputs)), "_eval_outputs")
    os.makedirs(tmp, exist_ok=True)
    ref_out = os.path.join(tmp, "reference.npy")
    info, _ = run_child(args.reference, args, ref_out)
    ref = np.load(ref_out)
    print(f"{'model':40s} {'peak RSS':>9} {'best s':>7} {'PSNR dB':>8} {'min PSNR':>8} {'NMSE':>9} {'max abs':>8}")
    print(f"{os.path.basename(os.path.normpath(args.reference)):40s} {info['peak_rss_mib']:8.0f}M {info['best_s']:7.2f}"
          f" {'ref':>8}")
    for d in args.models:
        out = os.path.join(tmp, os.path.basename(os.path.normpath(d)) + ".npy")
        info, _ = run_child(d, args, out)
        x = np.load(out)
        per = [psnr(ref[i], x[i]) for i in range(len(x))]
        err = x.astype(np.float64) - ref
        nmse = float(np.sum(err ** 2) / np.sum(ref.astype(np.float64) ** 2))
        print(f"{os.path.basename(os.path.normpath(d)):40s} {info['peak_rss_mib']:8.0f}M {info['best_s']:7.2f}"
              f" {psnr(ref, x):8.2f} {min(per):8.2f} {nmse:9.2e} {float(np.abs(err).max()):8.3g}")
        for line in info.get("peak_ops", []):
            print("    " + line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
