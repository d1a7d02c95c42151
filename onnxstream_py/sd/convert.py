"""``onnxstream convert-sd EXPORT_DIR OUT_DIR``: a whole exported SD pipeline into the streaming format.

EXPORT_DIR is what ``optimum-cli export onnx --task text-to-image`` writes (text_encoder/,
unet/ with external data, vae_decoder/, vae_encoder/, tokenizer/, scheduler/,
model_index.json; each network a model.onnx, optionally with a config.json). Each network is
converted with the engine's converter (one tensor in memory at a time), the tokenizer and
scheduler folders are copied, and OUT_DIR/onnxstream_sd.json records what is where, with what
precision, and the VAE's scaling factor. vae_encoder is not needed for text-to-image and is
skipped.

Defaults are the recommended settings: FP16-storage UNet (half the reads, FP32 arithmetic,
error stated in the README), FP32 text encoder and VAE decoder.
"""
from __future__ import annotations

import json
import os
import shutil
import time

from .pipeline import DEFAULT_SCALING_FACTOR, MANIFEST

NETWORKS = ("text_encoder", "unet", "vae_decoder")
DEFAULT_PRECISION = {"text_encoder": "fp32", "unet": "fp16-storage", "vae_decoder": "fp32"}


def _model_file(folder: str) -> str:
    path = os.path.join(folder, "model.onnx")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder}: no model.onnx (is this an optimum text-to-image export?)")
    return path


def convert_sd(export_dir: str, out_dir: str, precisions: dict[str, str] | None = None, log=print) -> dict:
    """Convert every network of export_dir into out_dir; returns the manifest written."""
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
    manifest["vae_scaling_factor"] = DEFAULT_SCALING_FACTOR
    cfg = os.path.join(export_dir, "vae_decoder", "config.json")
    if os.path.isfile(cfg):
        with open(cfg, encoding="utf-8") as f:
            manifest["vae_scaling_factor"] = float(json.load(f).get("scaling_factor", DEFAULT_SCALING_FACTOR))
    write_manifest(out_dir, manifest)
    return manifest


def write_manifest(out_dir: str, manifest: dict) -> None:
    tmp = os.path.join(out_dir, MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, MANIFEST))
