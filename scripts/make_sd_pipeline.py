"""A random-weight Stable Diffusion 1.5 pipeline, saved as a diffusers folder and exported to
ONNX through optimum exactly as a user would (`optimum-cli export onnx --task text-to-image`).

No weights can be downloaded here, so the networks are instantiated from SD 1.5's configs
(scripts/make_synthetic_sd15.py states them) with seeded random weights; the tokenizer is
CLIP's real byte-level BPE, built from the merges file that the open_clip_torch wheel ships
(`open_clip/bpe_simple_vocab_16e6.txt.gz`; scripts/make_clip_tokenizer.py builds the folder, from the
wheel or the merges committed under tests/fixtures/sd), and the scheduler config is SD 1.5's PNDM one.
`--tiny` keeps every block type with tiny widths and the first 2,000 BPE merges (vocabulary
2,514), for tests and the built-in demo (a few MB).

Needs torch, diffusers, transformers and optimum-onnx; they are NOT the engine's
dependencies. Seen working: torch 2.13.0 + optimum-onnx 0.1.0 (optimum 2.1.0, diffusers
0.39.0, transformers 4.57.6) in their own virtualenv:

    python3 -m venv /work/venv-optimum && /work/venv-optimum/bin/pip install torch==2.13.0 \
        && /work/venv-optimum/bin/pip install optimum-onnx==0.1.0 diffusers==0.39.0 transformers==4.57.6
    /work/venv-optimum/bin/python scripts/make_sd_pipeline.py OUT [--tiny] [--seed 0] [--wheel PATH]

writes OUT/diffusers/ (save_pretrained) and OUT/onnx/ (the optimum export: text_encoder/,
unet/ with external data for the full model, vae_decoder/, vae_encoder/, tokenizer/,
scheduler/, model_index.json). The full export takes ~6 minutes and ~10 GiB of RAM.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CLIP_MERGES = 49152 - 256 - 2          # CLIP's merge count (vocabulary 49408)
TINY_MERGES = 2000
SCHEDULER_CONFIG = {   # runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json, restated
    "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None,
}
TINY = {
    "text_encoder": dict(hidden_size=32, intermediate_size=37, projection_dim=32, num_hidden_layers=2,
                         num_attention_heads=4),
    "unet": dict(sample_size=16, layers_per_block=1, block_out_channels=(32, 64),
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                 attention_head_dim=8, norm_num_groups=8),
    # four blocks, as SD's, so one latent pixel is 8x8 image pixels
    "vae": dict(layers_per_block=1, block_out_channels=(8, 16, 16, 16), norm_num_groups=4, sample_size=128),
}


def tokenizer_source(path: str | None) -> str:
    """The merges source: --wheel, else make_clip_tokenizer's default (the wheel if on disk, else
    the merges file committed under tests/fixtures/sd)."""
    sys.path.insert(0, HERE)
    import make_clip_tokenizer as mct
    for c in (path, mct.DEFAULT_WHEEL, mct.FIXTURE):
        if c and os.path.isfile(c):
            return c
    raise SystemExit("no CLIP merges found: pass --wheel (pip download --no-deps open_clip_torch==3.3.0)")


def write_tokenizer_files(out_dir: str, source: str, merges_count: int) -> int:
    """CLIP's tokenizer folder with its first merges_count merges (make_clip_tokenizer defines
    the vocabulary); returns the vocabulary size."""
    import make_clip_tokenizer as mct
    merges = mct.read_merges(source)[:merges_count]
    mct.write_folder(out_dir, merges)
    return len(mct.build_vocab(merges))


def build_pipeline(out_dir: str, tiny: bool, seed: int, source: str) -> str:
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    sys.path.insert(0, HERE)
    from make_synthetic_sd15 import TEXT_ENCODER_CONFIG, UNET_CONFIG, VAE_CONFIG

    tok_dir = os.path.join(out_dir, "_tokenizer_src")
    vocab_size = write_tokenizer_files(tok_dir, source, TINY_MERGES if tiny else CLIP_MERGES)
    tokenizer = CLIPTokenizer(os.path.join(tok_dir, "vocab.json"), os.path.join(tok_dir, "merges.txt"),
                              pad_token="<|endoftext|>", model_max_length=77)
    te_cfg = dict(TEXT_ENCODER_CONFIG, vocab_size=vocab_size, **(TINY["text_encoder"] if tiny else {}),
                  bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    unet_cfg = dict(UNET_CONFIG, **(TINY["unet"] if tiny else {}))
    vae_cfg = dict(VAE_CONFIG, **(TINY["vae"] if tiny else {}))
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**te_cfg)).eval()
    unet = UNet2DConditionModel(**unet_cfg).eval()
    vae = AutoencoderKL(**vae_cfg).eval()
    if tiny:   # random weights give near-constant images; widen the decoder's output a little
        with torch.no_grad():
            vae.decoder.conv_out.weight.mul_(4.0)
    scheduler = PNDMScheduler.from_config(SCHEDULER_CONFIG)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    diffusers_dir = os.path.join(out_dir, "diffusers")
    pipe.save_pretrained(diffusers_dir)
    shutil.rmtree(tok_dir)
    return diffusers_dir


def export_onnx(diffusers_dir: str, onnx_dir: str) -> None:
    cli = os.path.join(os.path.dirname(sys.executable), "optimum-cli")
    cmd = [cli, "export", "onnx", "--model", diffusers_dir, "--task", "text-to-image", onnx_dir]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wheel", help="open_clip_torch wheel or merges file (default: make_clip_tokenizer's)")
    p.add_argument("--no-export", action="store_true", help="only the diffusers folder")
    args = p.parse_args(argv)
    t0 = time.time()
    diffusers_dir = build_pipeline(args.out_dir, args.tiny, args.seed, tokenizer_source(args.wheel))
    print(f"diffusers pipeline: {diffusers_dir} ({time.time() - t0:.0f} s)", flush=True)
    if not args.no_export:
        export_onnx(diffusers_dir, os.path.join(args.out_dir, "onnx"))
        print(f"optimum export: {os.path.join(args.out_dir, 'onnx')} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
