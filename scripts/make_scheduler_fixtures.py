#!/usr/bin/env python3
"""Write tests/fixtures/sd/scheduler_trajectories.npz: diffusers' sampling trajectories for the scheduler tests.

    python3 scripts/make_scheduler_fixtures.py [--out tests/fixtures/sd/scheduler_trajectories.npz]

Needs torch + diffusers (here: torch 2.13.0, diffusers 0.39.0); CI has neither, so tests/test_sd_schedulers.py
compares our schedulers against this file (and live against diffusers when importable). The cases, the fake model
and the sampling loop are in tests/sd_scheduler_protocol.py: SD 1.5 (epsilon) and SD 2.1 (v_prediction) configs,
every sampler (plus Karras variants) at 1, 4, 10 and 25 steps, and "leading"/"trailing" spacings at 10 steps, on
[1, 4, 8, 8] latents with the noise of numpy's PCG64 (seed 1234) injected into diffusers' randn_tensor. To stay
small (~150 KB) it keeps the sample after the first and after the last step of each run (errors compound: the
last one checks the whole trajectory; the live comparison checks every step), plus timesteps and sigmas
(NaN-padded rows, one per case, in the order of `keys`).
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import onnxstream_py  # noqa: E402,F401  (before numpy: thread settings)
import numpy as np  # noqa: E402

from onnxstream_py.sd.schedulers import draw_noise  # noqa: E402
from sd_scheduler_protocol import CASES, SEED, STEPS, case_key, run_diffusers  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "sd", "scheduler_trajectories.npz"))
    a = ap.parse_args(argv)
    import diffusers
    import torch
    diffusers.utils.logging.set_verbosity_error()
    keys, first, last = [], [], []
    timesteps = np.full((len(CASES), max(STEPS)), np.nan)
    sigmas = np.full((len(CASES), max(STEPS) + 1), np.nan, dtype=np.float32)
    for i, case in enumerate(CASES):
        ts, sg, traj = run_diffusers(*case)
        keys.append(case_key(*case))
        first.append(traj[0])
        last.append(traj[-1])
        timesteps[i, :len(ts)] = ts
        if sg is not None:
            sigmas[i, :len(sg)] = sg
    out = dict(noise_probe=draw_noise(np.random.default_rng(SEED), (8,)), keys=np.array(keys),
               first=np.stack(first).astype(np.float32), last=np.stack(last).astype(np.float32),
               timesteps=timesteps, sigmas=sigmas)
    np.savez_compressed(a.out, **out)
    print(f"wrote {a.out}: {len(CASES)} cases, {os.path.getsize(a.out) // 1024} KB "
          f"(diffusers {diffusers.__version__}, torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
