"""``onnxstream convert-sd EXPORT_DIR OUT_DIR``: a whole exported SD pipeline into the streaming format.

EXPORT_DIR is what ``optimum-cli export onnx --task text-to-image`` writes (text_encoder/,
unet/ with external data, vae_decoder/, vae_encoder/, tokenizer/, scheduler/,
model_index.json; each network a model.onnx, optionally with a config.json). Each network is
converted with the engine's converter (one tensor in memory at a time), the tokenizer and
scheduler folders are copied, and OUT_DIR/onnxstream_sd.json records what is where, with what
precision, and the VAE's scaling factor. vae_encoder is not needed for text-to-image and is
skipped.

Defaults are the recommended settings: FP16-storage UNet (half the reads, FP32 arithmetic,
error stated in the README), FP32 text encoder and VAE decoder, and beside the latter a W8A8
VAE decoder (``vae_decoder_w8a8/``, what ``--rpi`` decodes with), statically quantized on
calibration latents from a few short generations that convert-sd runs itself with the
just-converted networks (prompts, count, steps and size configurable): the latents the
decoder meets in use, not random ones.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from .pipeline import DEFAULT_SCALING_FACTOR, MANIFEST

NETWORKS = ("text_encoder", "unet", "vae_decoder")
DEFAULT_PRECISION = {"text_encoder": "fp32", "unet": "fp16-storage", "vae_decoder": "fp32"}
CALIBRATION_PROMPTS = (
    "a photograph of an astronaut riding a horse",
    "a watercolor landscape with mountains and a lake at sunset",
    "portrait of an old fisherman, dramatic lighting, detailed",
    "a city street at night in the rain, neon signs",
    "a bowl of fruit on a wooden table, still life",
    "an isometric illustration of a cozy cabin in the snow",
)


@dataclass
class W8A8Vae:
    """How convert-sd makes vae_decoder_w8a8 (None in convert_sd: no W8A8 decoder)."""
    prompts: tuple[str, ...] = CALIBRATION_PROMPTS
    count: int = 4                 # generations (prompts taken in turn, seeds 0, 1, ...)
    steps: int = 4
    size: int | None = None        # image side; None: the UNet's sample_size x 8 (512 for SD 1.5)
    method: str = "percentile"
    percentile: float = 99.99


def _model_file(folder: str) -> str:
    path = os.path.join(folder, "model.onnx")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder}: no model.onnx (is this an optimum text-to-image export?)")
    return path


def convert_sd(export_dir: str, out_dir: str, precisions: dict[str, str] | None = None, log=print,
               w8a8_vae: W8A8Vae | None = W8A8Vae()) -> dict:
    """Convert every network of export_dir into out_dir (and a W8A8 VAE decoder unless
    w8a8_vae is None); returns the manifest written."""
    if not os.path.isdir(export_dir):
        raise FileNotFoundError(f"{export_dir}: not a directory")
    from ..converter import convert
    prec = dict(DEFAULT_PRECISION, **(precisions or {}))
    os.makedirs(out_dir, exist_ok=True)
    manifest: dict = {"format": "onnxstream-sd", "version": 1, "source": os.path.abspath(export_dir),
                      "name": os.path.basename(os.path.normpath(export_dir)), "precisions": {}}
    for net in NETWORKS:
        src = _model_file(os.path.join(export_dir, net))
        t0 = time.perf_counter()
        report = convert(src, os.path.join(out_dir, net), precision=prec[net], log=log)
        log(f"{net}: {report.summary()} ({prec[net]}, {time.perf_counter() - t0:.1f} s)")
        manifest[net] = net
        manifest["precisions"][net] = prec[net]
    for folder in ("tokenizer", "scheduler"):
        src = os.path.join(export_dir, folder)
        if not os.path.isdir(src):
            raise FileNotFoundError(f"{export_dir}: no {folder}/ folder")
        dst = os.path.join(out_dir, folder)
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
        manifest[folder] = folder
    manifest["sample_size"] = _unet_sample_size(export_dir)
    manifest["vae_scaling_factor"] = DEFAULT_SCALING_FACTOR
    cfg = os.path.join(export_dir, "vae_decoder", "config.json")
    if os.path.isfile(cfg):
        with open(cfg, encoding="utf-8") as f:
            manifest["vae_scaling_factor"] = float(json.load(f).get("scaling_factor", DEFAULT_SCALING_FACTOR))
    write_manifest(out_dir, manifest)
    if w8a8_vae is not None:
        t0 = time.perf_counter()
        report = convert_w8a8_vae(export_dir, out_dir, manifest, w8a8_vae, log)
        manifest["vae_decoder_w8a8"] = "vae_decoder_w8a8"
        manifest["precisions"]["vae_decoder_w8a8"] = "w8a8"
        write_manifest(out_dir, manifest)
        log(f"vae_decoder_w8a8: {report.summary()} ({w8a8_vae.count} calibration latents, "
            f"{time.perf_counter() - t0:.1f} s)")
    return manifest


def calibration_latents(out_dir: str, cfg: W8A8Vae, log=print) -> np.ndarray:
    """[count, 1, 4, h, w] decoder inputs (final latents / scaling factor) of short generations
    with the converted pipeline in out_dir."""
    from .pipeline import GenerationParams, StableDiffusion
    sd = StableDiffusion(out_dir, progress=False, max_memory=0)
    size = cfg.size
    if size is None:
        size = int(sd.manifest.get("sample_size", 64)) * 8
    out = []
    for k in range(cfg.count):
        prompt = cfg.prompts[k % len(cfg.prompts)]
        params = GenerationParams(prompt, "", cfg.steps, 7.5, "euler_a", False, k, size, size)
        cond, uncond = sd.encode_prompts(params.prompt, params.negative_prompt)
        latents = sd.denoise(cond, uncond, params)
        out.append(latents / np.float32(sd.scaling_factor()))
        log(f"calibration latents {k + 1}/{cfg.count}: {prompt!r}, {cfg.steps} steps at {size}x{size}")
    return np.stack(out).astype(np.float32)


def convert_w8a8_vae(export_dir: str, out_dir: str, manifest: dict, cfg: W8A8Vae, log=print):
    from ..converter import convert
    from ..quantize import QuantizeConfig
    latents = calibration_latents(out_dir, cfg, log)
    with tempfile.TemporaryDirectory(prefix="onnxstream-sd-calib-") as tmp:
        data = os.path.join(tmp, "calibration.npz")
        np.savez(data, latent_sample=latents)
        # the per-tensor report goes to vae_decoder_w8a8/quant_report.txt, not the console
        return convert(_model_file(os.path.join(export_dir, "vae_decoder")), os.path.join(out_dir, "vae_decoder_w8a8"),
                       log=lambda m: None, quantize=QuantizeConfig("w8a8", data, cfg.method, cfg.percentile))


def _unet_sample_size(export_dir: str) -> int:
    """The UNet's latent side (config.json sample_size: 64 for SD 1.5, 96 for SD 2.x 768)."""
    cfg = os.path.join(export_dir, "unet", "config.json")
    if os.path.isfile(cfg):
        with open(cfg, encoding="utf-8") as f:
            return int(json.load(f).get("sample_size", 64))
    return 64


def write_manifest(out_dir: str, manifest: dict) -> None:
    tmp = os.path.join(out_dir, MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, MANIFEST))
