"""Calibration and evaluation inputs for the SD 1.5 VAE decoder, drawn like the pipeline's.

The pipeline decodes ``latents / 0.18215`` (diffusers: ``vae.decode(latents / vae.config.scaling_factor)``),
where ``latents`` are the output of the diffusion loop. 0.18215 was chosen so that VAE-encoded
images, multiplied by it, have unit variance, which is the distribution a trained UNet's
denoising loop lands on. Our UNet has random weights, so a diffusion run would produce
meaningless latents: we draw the latents as N(0, 1) (that unit-variance target) and scale them
as the pipeline does, so the decoder sees inputs of std ~5.5 (1 / 0.18215), not N(0, 1).

Writes OUT_DIR/calibration.npz and OUT_DIR/evaluation.npz: ``latent_sample`` float32
[n, 1, 4, h, w] (samples stacked on a new leading axis, as ``onnxstream convert --calibration``
reads them), from disjoint seeds.

    python3 scripts/make_calibration_latents.py /work/synth/sd15/_prec/quant [--n 4] [--size 64]
"""
import argparse
import os

import onnxstream_py  # noqa: F401  (before numpy: sets OPENBLAS_THREAD_TIMEOUT)
import numpy as np

SCALING_FACTOR = 0.18215
CALIBRATION_SEED = 1000
EVALUATION_SEED = 2000


def pipeline_latents(n: int, size: int, seed: int) -> np.ndarray:
    """[n, 1, 4, size, size]: N(0, 1) latents as the decoder receives them (/ 0.18215)."""
    rng = np.random.default_rng(seed)
    latents = rng.standard_normal((n, 1, 4, size, size)).astype(np.float32)
    return (latents / np.float32(SCALING_FACTOR)).astype(np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--n", type=int, default=4, help="samples per set (default 4)")
    ap.add_argument("--size", type=int, default=64, help="latent height and width (64: 512x512 images)")
    args = ap.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    for name, seed in (("calibration", CALIBRATION_SEED), ("evaluation", EVALUATION_SEED)):
        a = pipeline_latents(args.n, args.size, seed)
        path = os.path.join(args.out_dir, f"{name}.npz")
        np.savez(path, latent_sample=a)
        print(f"{path}: latent_sample {a.dtype.name}{list(a.shape)} std {a.std():.3f} (seed {seed})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
