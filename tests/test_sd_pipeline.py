"""The Stable Diffusion pipeline (onnxstream_py/sd) on the tiny optimum export shipped in the
package: convert-sd, generation against the same pipeline on onnxruntime (the reference runs
each network's ONNX export), seeds, CFG batching, tiled VAE decode, the PNG's parameters, the
CLI and bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from onnxstream_py.sd import pipeline as pl
from onnxstream_py.sd.cli import DEMO_EXPORT
from onnxstream_py.sd.convert import W8A8Vae, convert_sd


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The tiny pipeline converted twice: recommended settings (fp16-storage UNet) and all FP32."""
    root = tmp_path_factory.mktemp("sd")
    convert_sd(DEMO_EXPORT, str(root / "default"), log=lambda m: None, w8a8_vae=W8A8Vae(count=3, steps=4))
    convert_sd(DEMO_EXPORT, str(root / "fp32"), {"unet": "fp32"}, log=lambda m: None, w8a8_vae=None)
    return root


def _latents(cls, path, params, **kw):
    sd = cls(str(path), progress=False, **kw)
    cond, uncond = sd.encode_prompts(params.prompt, params.negative_prompt)
    return sd.denoise(cond, uncond, params)


PARAMS = dict(prompt="a red fox in the snow, (golden hour:1.3), [blurry]", negative_prompt="ugly", steps=6,
              seed=7, width=64, height=48)


def test_manifest_and_precisions(converted):
    m = json.load(open(converted / "default" / pl.MANIFEST))
    assert m["precisions"] == {"text_encoder": "fp32", "unet": "fp16-storage", "vae_decoder": "fp32",
                               "vae_decoder_w8a8": "w8a8"}
    assert "precision w8a8" in (converted / "default" / "vae_decoder_w8a8" / "graph.txt").read_text()
    assert (converted / "default" / "vae_decoder_w8a8" / "quant_report.txt").exists()
    assert (converted / "default" / "tokenizer" / "vocab.json").exists()
    assert "precision fp16-storage" in (converted / "default" / "unet" / "graph.txt").read_text()


@pytest.mark.parametrize("sampler", ["euler_a", "euler", "ddim", "dpmpp_2m", "lcm"])
def test_latents_match_the_onnxruntime_pipeline(converted, sampler):
    params = pl.GenerationParams(sampler=sampler, **PARAMS)
    got = _latents(pl.StableDiffusion, converted / "fp32", params)
    want = _latents(pl.OrtStableDiffusion, converted / "fp32", params)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    got16 = _latents(pl.StableDiffusion, converted / "default", params)
    assert np.abs(got16 - want).max() <= 1e-2 * np.abs(want).max()     # the bar (fp16-storage UNet)


def test_same_seed_same_latents_and_cfg_batching_is_exact_enough(converted):
    params = pl.GenerationParams(**PARAMS)
    a = _latents(pl.StableDiffusion, converted / "fp32", params)
    b = _latents(pl.StableDiffusion, converted / "fp32", params)
    np.testing.assert_array_equal(a, b)
    separate = _latents(pl.StableDiffusion, converted / "fp32", params, cfg_batch=False)
    np.testing.assert_allclose(separate, a, rtol=0, atol=1e-5 * np.abs(a).max())
    other = _latents(pl.StableDiffusion, converted / "fp32", pl.GenerationParams(**dict(PARAMS, seed=8)))
    assert np.abs(other - a).max() > 0.1 * np.abs(a).max()


def test_long_prompt_uses_several_windows(converted):
    sd = pl.StableDiffusion(str(converted / "fp32"), progress=False)
    long_prompt = ", ".join(f"word{i}" for i in range(60))
    cond, uncond = sd.encode_prompts(long_prompt, "")
    assert cond.shape[1] == uncond.shape[1] > 77 and cond.shape[1] % 77 == 0
    ref = pl.OrtStableDiffusion(str(converted / "fp32"), progress=False)
    c2, u2 = ref.encode_prompts(long_prompt, "")
    np.testing.assert_allclose(cond, c2, rtol=1e-4, atol=1e-5)
    params = pl.GenerationParams(long_prompt, "", 2, 7.5, "euler", False, 1, 32, 32)
    assert np.isfinite(sd.denoise(cond, uncond, params)).all()


def test_generate_png_carries_parameters(converted, tmp_path):
    from PIL import Image
    sd = pl.StableDiffusion(str(converted / "default"), progress=False)
    img = sd.generate("a lighthouse", "fog", steps=2, seed=123, width=64, height=32, guidance=5.0)
    assert img.size == (64, 32)
    pl.save_png(img, str(tmp_path / "x.png"))
    text = Image.open(tmp_path / "x.png").text["parameters"]
    assert text.startswith("a lighthouse\nNegative prompt: fog\nSteps: 2, Sampler: Euler a, CFG scale: 5, Seed: 123, "
                           "Size: 64x32")
    imgs = sd.generate("a lighthouse", steps=1, seed=5, width=32, height=32, num=2)
    assert len(imgs) == 2 and "Seed: 6," in imgs[1].info["parameters"]


def test_tiled_decode_blends_to_the_whole_for_a_local_decoder():
    """With a decoder that acts per latent pixel (nearest upsampling x 8), tiling must be
    exact: the blend weights of overlapping tiles sum to one everywhere."""
    z = np.random.default_rng(0).standard_normal((1, 4, 37, 29)).astype(np.float32)

    def decode(t):
        return np.repeat(np.repeat(t[:, :3], 8, axis=2), 8, axis=3)

    whole = decode(z)
    for tile in (16, 20, 29, 40):
        np.testing.assert_allclose(pl.decode_tiled(decode, z, tile, pl.TILE_OVERLAP), whole, rtol=1e-6, atol=1e-6)
    assert pl.tile_starts(37, 16, 8) == [0, 8, 16, 21]


def test_tiled_decode_of_the_real_decoder_is_close(converted):
    sd = pl.StableDiffusion(str(converted / "fp32"), progress=False)
    z = np.random.default_rng(1).standard_normal((1, 4, 24, 24)).astype(np.float32) * 0.18215
    whole = sd.decode(z)
    sd.vae_tile = 16
    tiled = sd.decode(z)
    assert tiled.shape == whole.shape == (1, 3, 192, 192)
    # each tile's GroupNorm statistics and mid-block attention see only the tile: close, not
    # identical (measured: correlation 0.975 at 16x16 tiles of 24x24 latents, 0.992 at 20x20)
    assert np.corrcoef(tiled.ravel(), whole.ravel())[0, 1] > 0.95


def test_tile_choice_under_a_memory_budget(converted):
    sd = pl.StableDiffusion(str(converted / "fp32"), progress=False, max_memory="300M")
    assert sd.tile_for(64, 64) is not None and sd.tile_for(64, 64) % 8 == 0
    assert pl.StableDiffusion(str(converted / "fp32"), progress=False, max_memory="4G").tile_for(16, 16) is None
    assert pl.StableDiffusion(str(converted / "fp32"), progress=False, max_memory=0).tile_for(64, 64) is None
    assert pl.StableDiffusion(str(converted / "fp32"), progress=False).tile_for(64, 64) is not None  # 300M default
    assert pl.parse_memory("none") == 0 and pl.parse_memory("400M") == 400 << 20 and pl.parse_memory("1.5G") == int(1.5 * (1 << 30))
    with pytest.raises(ValueError, match="memory size"):
        pl.parse_memory("lots")


def test_bad_input(converted, tmp_path):
    with pytest.raises(FileNotFoundError, match="onnxstream_sd.json"):
        pl.StableDiffusion(str(tmp_path))
    sd = pl.StableDiffusion(str(converted / "default"), progress=False)
    with pytest.raises(ValueError, match="multiples of 8"):
        sd.generate("x", width=60, height=64)
    with pytest.raises(ValueError, match="sampler"):
        sd.generate("x", sampler="plms", width=32, height=32, steps=1)
    with pytest.raises(FileNotFoundError, match="model.onnx"):
        convert_sd(str(tmp_path), str(tmp_path / "out"), log=lambda m: None)


def test_cli_sd_and_demo(converted, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = tmp_path / "cli.png"
    r = subprocess.run([sys.executable, "-m", "onnxstream_py", "sd", "--models-path", str(converted / "default"),
                        "--prompt", "a cat", "--steps", "2", "--width", "32", "--height", "32", "--seed", "9",
                        "--output", str(out), "--save-latents", str(tmp_path / "lat.npy")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert out.exists() and "peak RSS" in r.stdout and (tmp_path / "lat.npy").exists()
    r = subprocess.run([sys.executable, "-m", "onnxstream_py", "sd", "--models-path", str(converted / "default"),
                        "--decode-latents", str(tmp_path / "lat.npy"), "--output", str(tmp_path / "dec.png")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    from PIL import Image
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "dec.png")), np.asarray(Image.open(out)))
    r = subprocess.run([sys.executable, "-m", "onnxstream_py", "demo", "--steps", "2", "--size", "32",
                        "--out-dir", str(tmp_path / "demo"), "--output", str(tmp_path / "demo.png")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "demo.png").exists() and "vs the same pipeline on onnxruntime" in r.stdout


def test_rpi_decodes_with_the_w8a8_decoder(converted):
    """--rpi's decoder: calibrated by convert-sd on its own generations (3 here, at the UNet's
    128x128); PSNR against the FP32 decoder on the latents of another generation (the tiny random
    decoder measured ~31 dB; the full-size figure is in the README)."""
    params = pl.GenerationParams("a lighthouse on a cliff", "", 4, 7.5, "euler_a", False, 11, 128, 128)
    sd = pl.StableDiffusion(str(converted / "default"), progress=False)
    cond, uncond = sd.encode_prompts(params.prompt, "")
    lat = sd.denoise(cond, uncond, params)
    rpi = pl.StableDiffusion(str(converted / "default"), progress=False, rpi=True)
    assert rpi._vae_key() == "vae_decoder_w8a8" and not rpi.cfg_batch and rpi.provider == "nocache"
    to8 = lambda x: np.clip((x / 2 + 0.5) * 255, 0, 255)  # noqa: E731
    mse = float(((to8(sd.decode(lat)) - to8(rpi.decode(lat))) ** 2).mean())
    assert 10 * np.log10(255 ** 2 / mse) >= 25
