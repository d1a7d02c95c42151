"""Benchmark the HTTP weights provider against DiskPrefetch on one converted model (issue 7's bars).

Serves the model directory with a private nginx on 127.0.0.1 (tests/nginx_server.py; the
directory is symlinked into nginx's root, nothing copied), then runs the model in fresh
processes: DiskPrefetch from the directory, Http from the URL, alternating, ``--runs`` runs
each. Every child reports seconds per run, CPU seconds per run (its own, and nginx's: both
share this machine's cores; the least of its runs is printed), peak RSS (ru_maxrss: start-up, load and all runs),
the bytes it wrote to storage during its runs (/proc/self/io write_bytes, after - before) and
a SHA-256 of its outputs. Prints a Markdown table and the bars:
  Http seconds per run <= 1.2x DiskPrefetch's, Http peak RSS <= DiskPrefetch's + 32 MiB,
  outputs bitwise identical, 0 bytes written.

    python3 scripts/bench_http.py [--model /work/synth/sd15/_bench/unet/converted]
        [--inputs /work/synth/sd15/_bench/unet/inputs.npz] [--runs 2] [--threads 2]

``--nocache``: the least-memory pair instead: DiskNoCache against Http(budget_bytes=0) with
tensors streamed by rows (what a model URL opened with provider "nocache" gets; bitwise equal
to DiskNoCache) and fetched whole (stream=False; bitwise equal to DiskPrefetch).

``--faults RATE``: the issue's fault bar at full size: DiskPrefetch once for the reference
output, then Http through tests/fault_proxy.py (drops, 503, 429, stalls, truncation, flipped
bytes, in turn, on RATE of the requests, seeded) for ``--runs`` consecutive runs in one
process; prints each run's time and whether its output is bitwise DiskPrefetch's, and the
faults injected. E.g. ``--faults 0.1 --runs 10 --http-timeout 1``: stalls (1.5 s) outlast the
timeout.

``--download``: no compute; fetch every tensor of the model in file order, ``--runs`` passes
per variant (the first one dropped), alternating variants in one process: Http with and
without reusing dropped mappings (``keep`` 2 / 0) and with 1 or 2 parallel ranges per big
tensor. Prints wall seconds and CPU seconds (this process, nginx) per pass.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BENCH = "/work/synth/sd15/_bench/unet"


# Http variants: (read-ahead budget, None = RunOptions.prefetch_bytes; stream by rows)
HTTP_VARIANTS = {"http": (None, False), "http-nocache": (0, True), "http-nocache-whole": (0, False)}
LABELS = {"prefetch": "DiskPrefetch", "nocache": "DiskNoCache", "http": "Http (nginx, 127.0.0.1)",
          "http-nocache": "Http budget 0, stream=True", "http-nocache-whole": "Http budget 0, stream=False"}


def written_bytes() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return -1


def nginx_cpu() -> float:
    """CPU seconds (user + system) used so far by every nginx process on this machine."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"nginx" not in f.read():
                    continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return total


def child(args) -> None:
    sys.path.insert(0, REPO)
    import resource

    import onnxstream_py  # noqa: F401  (before numpy: thread settings)
    import numpy as np
    from onnxstream_py import Model, RunOptions
    from weights_providers import Http

    feeds = dict(np.load(args.inputs))
    opts = RunOptions(threads=args.threads)
    t0 = time.perf_counter()
    if args.provider.startswith("http"):
        budget, stream = HTTP_VARIANTS[args.provider]
        if budget is None:
            budget = opts.prefetch_bytes if args.http_budget_mib is None else args.http_budget_mib << 20
        provider = Http(args.model, budget_bytes=budget, stream=stream, timeout=args.http_timeout)
    else:
        provider = args.provider
    model = Model(args.model, provider=provider, options=opts)
    load_s = time.perf_counter() - t0
    times, cpu, server_cpu, shas = [], [], [], []
    w0 = written_bytes()
    for _ in range(args.runs):
        r0, n0, t1 = resource.getrusage(resource.RUSAGE_SELF), nginx_cpu(), time.perf_counter()
        out = model.run(feeds)
        times.append(time.perf_counter() - t1)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
        server_cpu.append(nginx_cpu() - n0)
        digest = hashlib.sha256()
        for name in sorted(out):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(out[name]).tobytes())
        shas.append(digest.hexdigest())
    w1 = written_bytes()
    stats = getattr(model.provider, "stats", None)
    model.close()
    print(json.dumps({"provider": args.provider, "load_s": load_s, "run_s": times, "cpu_s": cpu,
                      "nginx_cpu_s": server_cpu,
                      "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "written": w1 - w0, "sha256": shas[-1], "run_sha256": shas, "stats": stats}))


def download_passes(url: str, runs: int) -> None:
    """Wall and CPU seconds of fetching every tensor, per Http variant (see --download)."""
    import resource

    from weights_providers import Http

    variants = {f"keep {keep}, parallel {par}": (keep, par) for keep in (0, 2) for par in (1, 2)}
    providers = {}
    for name, (keep, par) in variants.items():
        h = Http(url, budget_bytes=0, parallel=par)
        h._mappings.keep = keep
        providers[name] = h
    names = [e.name for e in sorted(h.index.entries.values(), key=lambda e: e.offset)]
    nbytes = sum(e.nbytes for e in h.index.entries.values())
    for h in providers.values():
        h.plan(names)
    results = {name: [] for name in providers}
    for _ in range(max(2, runs)):
        for name, h in providers.items():
            r0, n0, t0 = resource.getrusage(resource.RUSAGE_SELF), nginx_cpu(), time.perf_counter()
            for n in names:
                h.get(n)      # dropped at once, as the engine drops a weight after its op
            wall = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            ours = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
            results[name].append((wall, ours, nginx_cpu() - n0))
            h.restart()
    for h in providers.values():
        h.close()
    print(f"{nbytes / 1e9:.2f} GB per pass, {max(2, runs) - 1} passes per variant after one dropped\n")
    print("| Http variant | wall s per pass (min-max) | CPU s, this process | CPU s, nginx |")
    print("|---|---|---|---|")
    for name, rs in results.items():
        rs = rs[1:]
        print(f"| {name} | {min(r[0] for r in rs):.2f}-{max(r[0] for r in rs):.2f} | "
              f"{sum(r[1] for r in rs) / len(rs):.2f} | {sum(r[2] for r in rs) / len(rs):.2f} |")


def fault_runs(model: str, port: int, args) -> None:
    """DiskPrefetch once for the reference, then Http through the fault proxy for --runs runs."""
    from fault_proxy import KINDS, FaultProxy

    disk = run_child(model, "prefetch", argparse.Namespace(**{**vars(args), "runs": 1}))
    with FaultProxy(port, seed=args.seed, rate=args.faults, stall_seconds=args.stall) as proxy:
        t0 = time.perf_counter()
        http = run_child(f"{proxy.url}/m", "http", args)
        wall = time.perf_counter() - t0
        faults, requests = proxy.faults(), len(proxy.log)
    same = all(sha == disk["sha256"] for sha in http["run_sha256"])
    print(f"model {model}; Http through the fault proxy (rate {args.faults}, seed {args.seed}, stalls "
          f"{args.stall} s, Http timeout {args.http_timeout} s), {args.runs} consecutive runs, "
          f"{wall:.0f} s in all\n")
    print("| run | s | output = DiskPrefetch's |")
    print("|---|---|---|")
    for i, (t, sha) in enumerate(zip(http["run_s"], http["run_sha256"]), 1):
        print(f"| {i} | {t:.2f} | {'yes' if sha == disk['sha256'] else 'NO'} |")
    print(f"\nDiskPrefetch s/run {disk['run_s'][0]:.2f}; requests through the proxy {requests}, faults "
          f"{sum(faults.values())} ({requests / max(1, sum(faults.values())):.1f} requests per fault): {faults}")
    print(f"Http failures seen and retried: {http['stats']['failures']}")
    print(f"  every run's output bitwise DiskPrefetch's: {'PASS' if same else 'FAIL'}")
    print(f"  every fault kind injected: {'PASS' if set(faults) == set(KINDS) else 'FAIL'}")
    print(f"  at least 1 fault per 20 requests: {'PASS' if sum(faults.values()) * 20 >= requests else 'FAIL'}")


def run_child(model: str, provider: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--model", model, "--provider", provider,
           "--inputs", args.inputs, "--runs", str(args.runs), "--threads", str(args.threads)]
    if args.http_budget_mib is not None:
        cmd += ["--http-budget-mib", str(args.http_budget_mib)]
    cmd += ["--http-timeout", str(args.http_timeout)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"child {provider} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=f"{BENCH}/converted")
    ap.add_argument("--inputs", default=f"{BENCH}/inputs.npz")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="alternating disk/http child pairs")
    ap.add_argument("--download", action="store_true", help="fetch passes only, no compute (see above)")
    ap.add_argument("--nocache", action="store_true",
                    help="DiskNoCache against Http(budget_bytes=0) streaming big tensors by rows and not")
    ap.add_argument("--http-budget-mib", type=int, default=None,
                    help="Http's read-ahead budget (default: RunOptions.prefetch_bytes, as Model gives it)")
    ap.add_argument("--faults", type=float, default=None, metavar="RATE",
                    help="Http through tests/fault_proxy.py injecting a fault into this fraction of "
                         "requests (every kind in turn); --runs consecutive runs (see above)")
    ap.add_argument("--http-timeout", type=float, default=10.0, help="Http's socket timeout, seconds")
    ap.add_argument("--stall", type=float, default=1.5, help="--faults: seconds a stalled response stays silent")
    ap.add_argument("--seed", type=int, default=7, help="--faults: the proxy's schedule")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--provider", default="prefetch", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    sys.path.insert(0, os.path.join(REPO, "tests"))
    from nginx_server import start_nginx, stop_nginx

    model = os.path.abspath(args.model)
    with tempfile.TemporaryDirectory(prefix="bench_http_") as tmp:
        root, work = os.path.join(tmp, "root"), os.path.join(tmp, "nginx")
        os.makedirs(root)
        os.symlink(model, os.path.join(root, "m"))
        proc, port = start_nginx(root, work)
        url = f"http://127.0.0.1:{port}/m"
        if args.download:
            try:
                return download_passes(url, args.runs)
            finally:
                stop_nginx(proc)
        if args.faults is not None:
            try:
                return fault_runs(model, port, args)
            finally:
                stop_nginx(proc)
        try:
            names = (["prefetch", "http"] if not args.nocache
                     else ["nocache", "http-nocache", "http-nocache-whole"])
            results = {name: [] for name in names}
            for _ in range(args.rounds):
                for name in results:
                    results[name].append(run_child(model if name == "prefetch" else url, name, args))
        finally:
            stop_nginx(proc)

    def best(rs, key):
        return min(min(r["run_s"]) for r in rs) if key == "run" else max(r["peak_rss_kib"] for r in rs)

    print(f"model {model}, {args.runs} runs per process, {args.rounds} process(es) each, "
          f"{args.threads} threads\n")
    print("| provider | load s | s per run (each) | best s/run | CPU s per run: ours + nginx | peak RSS MiB "
          "| bytes written | output sha256 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rs in results.items():
        for r in rs:
            ours, server = min(r["cpu_s"]), min(r["nginx_cpu_s"])
            print(f"| {LABELS[name]} | {r['load_s']:.2f} | "
                  f"{', '.join(f'{t:.2f}' for t in r['run_s'])} | {min(r['run_s']):.2f} | "
                  f"{ours:.2f} + {server:.2f} | {r['peak_rss_kib'] / 1024:.0f} | {r['written']} | {r['sha256'][:16]} |")
    disk, https = names[0], names[1:]
    d_t, d_m = best(results[disk], "run"), best(results[disk], "rss") / 1024
    print()
    for name in https:
        h_t, h_m = best(results[name], "run"), best(results[name], "rss") / 1024
        same = {r["sha256"] for r in results[name]} == {r["sha256"] for r in results[disk]} \
            and len({r["sha256"] for r in results[disk]}) == 1
        written = max(r["written"] for r in results[name])
        print(f"{LABELS[name]} against {LABELS[disk]}; stats {results[name][-1]['stats']}")
        bar = name == "http"       # issue 7's bars are on the read-ahead pair
        verdict = f" (bar <= 1.2): {'PASS' if h_t <= 1.2 * d_t else 'FAIL'}" if bar else ""
        print(f"  time ratio {h_t / d_t:.3f}{verdict}")
        print(f"  peak RSS {h_m:.0f} vs {d_m:.0f} MiB, {h_m - d_m:+.1f}"
              + (f" (bar <= +32): {'PASS' if h_m <= d_m + 32 else 'FAIL'}" if bar else ""))
        print(f"  outputs bitwise identical: {'PASS' if same else 'FAIL'}")
        print(f"  bytes written during Http runs: {written} ({'PASS' if written == 0 else 'FAIL'})")

if __name__ == "__main__":
    main()
