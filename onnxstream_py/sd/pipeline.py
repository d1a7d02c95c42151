"""Stable Diffusion text-to-image on the streaming engine: ``StableDiffusion(path).generate(...)``.

A converted pipeline folder (``onnxstream convert-sd``, sd/convert.py) holds the three
networks in the streaming format, the tokenizer and the scheduler config, and a manifest
(``onnxstream_sd.json``). One network runs at a time and its provider is closed before the
next one streams (peak memory = the largest stage, not their sum):

  text encoder   prompt and negative prompt, 75-token windows concatenated, per-token
                 weights from the ``(word:1.3)`` syntax applied to the hidden states
  UNet x steps   classifier-free guidance as ONE batch-2 pass per step by default, so each
                 step reads the UNet's weights once (``cfg_batch=False``: two batch-1 passes,
                 less activation memory, twice the weight reads)
  VAE decoder    whole, or in overlapping latent tiles blended linearly (``tile`` or chosen
                 under ``max_memory``), each tile through the same converted decoder via its
                 dynamic height/width

Noise comes from numpy's PCG64 seeded with the 64-bit seed, so a seed gives the same image
on every machine and run. Trade-off: the scheduler math is numpy float32/float64 on the host
(negligible next to the UNet), and the text encoder runs once per prompt, not per image.
"""
from __future__ import annotations

import dataclasses
import json
import os
import resource
import time
from typing import Callable

import numpy as np

MANIFEST = "onnxstream_sd.json"
LATENT_CHANNELS = 4
VAE_SCALE = 8                        # pixels per latent pixel
DEFAULT_SCALING_FACTOR = 0.18215     # SD 1.x/2.x VAE; a vae_decoder/config.json may say otherwise
# Peak RSS of the FP32 VAE decoder grows with the latent area: measured on the synthetic SD 1.5
# decoder (native, 2 threads, DiskNoCache): 799 MiB at 64x64 latents (4096 px), 227 at 32x32,
# i.e. ~0.185 MiB per latent pixel above a ~40 MiB base; a 32x32 tile after the full pipeline's
# UNet stage took the process from 66 to 287 MiB (0.215). Used, with that margin, for the tile.
VAE_MIB_PER_LATENT_PX = 0.22
# the W8A8 decoder (int8 activations, banded convs): 177 MiB whole at 64x64 latents in a fresh
# process (~45 MiB of it the interpreter), ~0.032 MiB per latent pixel; with a margin:
VAE_W8A8_MIB_PER_LATENT_PX = 0.035
TILE_OVERLAP = 8                     # latent pixels shared by neighbouring tiles (64 image px)
# The whole process's budget when none is given: the bar for 512x512 (a whole FP32
# decode at 512x512 peaks near 800 MiB, so it is tiled); --rpi: 256 MiB. max_memory=0: no budget.
DEFAULT_MAX_MEMORY = 300 << 20
RPI_MAX_MEMORY = 256 << 20
SAMPLER_NAMES = {"euler_a": "Euler a", "euler": "Euler", "ddim": "DDIM", "dpmpp_2m": "DPM++ 2M",
                 "lcm": "LCM"}


def _read_text(path_or_url: str) -> str:
    """A small text file from disk or, for an http(s):// URL, from a web server (nothing written)."""
    from weights_providers import http
    if http.is_url(path_or_url):
        return http.fetch_text(path_or_url)
    with open(path_or_url, encoding="utf-8") as f:
        return f.read()


def _join(path: str, rel: str) -> str:
    from weights_providers import http
    return http.join_url(path, rel) if http.is_url(path) else os.path.join(path, rel)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def parse_memory(spec: str | int | None) -> int | None:
    """'400M', '1.5G', '512MiB' or a byte count -> bytes; None stays None; 0 / 'none' -> 0."""
    if spec is None or isinstance(spec, int):
        return spec
    if str(spec).strip().lower() in ("0", "none", "off"):
        return 0
    s = str(spec).strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:], 1)
    try:
        value = float(s[:-1] if s[-1:] in "KMG" else s)
    except ValueError:
        raise ValueError(f"memory size {spec!r}: expected e.g. 400M or 1.5G") from None
    if value < 0:
        raise ValueError(f"memory size {spec!r} must not be negative")
    return int(value * mult)


@dataclasses.dataclass
class GenerationParams:
    prompt: str
    negative_prompt: str = ""
    steps: int = 20
    guidance: float = 7.5
    sampler: str = "euler_a"
    karras: bool = False
    seed: int = 0
    width: int = 512
    height: int = 512

    def validate(self) -> None:
        if self.width % 8 or self.height % 8 or self.width < 8 or self.height < 8:
            raise ValueError(f"width and height must be positive multiples of 8, got {self.width}x{self.height}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0 <= self.seed < 1 << 64:
            raise ValueError(f"seed must be in [0, 2**64), got {self.seed}")

    def a1111(self, model_name: str = "") -> str:
        """The generation parameters in AUTOMATIC1111's PNG ``parameters`` text format."""
        lines = [self.prompt]
        if self.negative_prompt:
            lines.append(f"Negative prompt: {self.negative_prompt}")
        sampler = SAMPLER_NAMES.get(self.sampler, self.sampler)
        fields = [f"Steps: {self.steps}", f"Sampler: {sampler}"]
        if self.karras:
            fields.append("Schedule type: Karras")
        fields += [f"CFG scale: {self.guidance:g}", f"Seed: {self.seed}", f"Size: {self.width}x{self.height}"]
        if model_name:
            fields.append(f"Model: {model_name}")
        fields.append("Version: onnxstream_py")
        lines.append(", ".join(fields))
        return "\n".join(lines)


@dataclasses.dataclass
class StageTimes:
    text_encoder: float = 0.0
    unet: float = 0.0
    vae: float = 0.0

    def summary(self) -> str:
        total = self.text_encoder + self.unet + self.vae
        return (f"text encoder {self.text_encoder:.2f} s, UNet {self.unet:.2f} s, VAE decoder {self.vae:.2f} s, "
                f"total {total:.2f} s; peak RSS {peak_rss_mib():.1f} MiB")


class StableDiffusion:
    """A converted SD pipeline folder (or a URL, through the HTTP provider when present).

    provider: "nocache" (default), "prefetch" or "ram" for the networks; rpi=True selects the
    smallest-memory settings (separate CFG passes, the w8a8 VAE decoder when the folder has
    one, tiles under a 256 MiB budget)."""

    def __init__(self, path: str, *, threads: int | None = None, provider: str | None = None,
                 rpi: bool = False, max_memory: str | int | None = None, cfg_batch: bool | None = None,
                 vae_tile: int | None = None, options=None, progress: bool = True):
        from ..options import RunOptions
        self.path = path
        manifest = _join(path, MANIFEST)
        if "://" not in manifest and not os.path.isfile(manifest):
            raise FileNotFoundError(f"{path}: no {MANIFEST}; convert an exported pipeline with "
                                    f"`onnxstream convert-sd EXPORT_DIR {path}`")
        self.manifest = json.loads(_read_text(manifest))
        self.rpi = rpi
        # DiskNoCache by default: it streams weights above RunOptions.max_weight_chunk_bytes in
        # row chunks, while DiskPrefetch reads whole tensors ahead and an fp16-storage weight is
        # widened whole (the UNet's 1280x2560x3x3 conv: 59 MB read + 118 MB float32). Measured on
        # the full synthetic SD 1.5, batch-2 UNet at 512x512: 206 MiB peak against 334 MiB.
        self.provider = provider or "nocache"
        if max_memory is None:
            max_memory = RPI_MAX_MEMORY if rpi else DEFAULT_MAX_MEMORY
        self.max_memory = parse_memory(max_memory) or None      # 0: no budget, decode whole
        self.cfg_batch = (not rpi) if cfg_batch is None else cfg_batch
        self.vae_tile = vae_tile
        self.options = options or RunOptions(threads=threads)
        self.progress = progress
        self.times = StageTimes()
        self._tokenizer = None

    # ---- parts
    def _sub(self, key: str) -> str:
        rel = self.manifest.get(key)
        if rel is None:
            raise FileNotFoundError(f"{self.path}: {MANIFEST} names no {key!r}")
        return _join(self.path, rel)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from .tokenizer import CLIPTokenizer
            self._tokenizer = CLIPTokenizer(self._sub("tokenizer"))
        return self._tokenizer

    def scheduler(self, name: str, karras: bool = False):
        from .schedulers import make_scheduler
        config = self._sub("scheduler")
        if "://" in config:     # a URL: the config as a dict (schedulers read local files)
            config = json.loads(_read_text(_join(config, "scheduler_config.json")))
        return make_scheduler(name, config, karras=karras)

    def _model(self, key: str, provider: str | None = None) -> "Network":
        from ..model import Model
        return EngineNetwork(Model(self._sub(key), provider=provider or self.provider, options=self.options))

    def _vae_key(self) -> str:
        return "vae_decoder_w8a8" if self.rpi and "vae_decoder_w8a8" in self.manifest else "vae_decoder"

    def _bar(self, total: int, desc: str):
        if not self.progress:
            return None
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit="step" if desc == "UNet" else "it", leave=True)

    # ---- stages
    def encode_prompts(self, prompt: str, negative_prompt: str = "") -> tuple[np.ndarray, np.ndarray]:
        """(conditional, unconditional) text embeddings [1, 77*k, C], the same k windows each."""
        tok = self.tokenizer
        cond_ids, cond_w = tok.weighted(prompt)
        unc_ids, unc_w = tok.weighted(negative_prompt)
        windows = max(len(cond_ids), len(unc_ids))
        cond_ids, cond_w = _pad_windows(tok, cond_ids, cond_w, windows)
        unc_ids, unc_w = _pad_windows(tok, unc_ids, unc_w, windows)
        self._tokenizer = None      # ~17 MiB that the UNet and VAE stages need not carry
        from .prompt import apply_emphasis
        t0 = time.perf_counter()
        bar = self._bar(2 * windows, "text encoder")
        with self._model("text_encoder", provider="nocache" if self.rpi else None) as te:
            dtype = te.inputs[te.input_names[0]][0]
            out = []
            for ids, weights in ((cond_ids, cond_w), (unc_ids, unc_w)):
                parts = []
                for window, w in zip(ids, weights):
                    h = te.run({te.input_names[0]: np.asarray(window, dtype=dtype)})[te.output_names[0]]
                    parts.append(apply_emphasis(h, np.asarray(w).reshape(-1)))
                    if bar is not None:
                        bar.update(1)
                out.append(np.concatenate(parts, axis=1))
        if bar is not None:
            bar.close()
        self.times.text_encoder += time.perf_counter() - t0
        return out[0], out[1]

    def denoise(self, cond: np.ndarray, uncond: np.ndarray, params: GenerationParams,
                latents: np.ndarray | None = None, callback: Callable | None = None) -> np.ndarray:
        """The sampling loop; returns the final latents [1, 4, h/8, w/8] (float32)."""
        sched = self.scheduler(params.sampler, params.karras)
        sched.set_timesteps(params.steps)
        rng = np.random.Generator(np.random.PCG64(params.seed))
        shape = (1, LATENT_CHANNELS, params.height // VAE_SCALE, params.width // VAE_SCALE)
        if latents is None:
            from .schedulers import draw_noise
            latents = draw_noise(rng, shape)
        latents = (latents * np.float32(sched.init_noise_sigma)).astype(np.float32)
        t0 = time.perf_counter()
        bar = self._bar(len(sched.timesteps), "UNet")
        guided = params.guidance != 1.0
        with self._model("unet") as unet:
            t_dtype, t_shape = unet.inputs["timestep"]
            s_dtype, e_dtype = unet.inputs["sample"][0], unet.inputs["encoder_hidden_states"][0]

            def run(x, emb):
                # optimum exports timestep as a rank-0 float32; older exports as [batch]
                t_arr = np.full(() if t_shape is not None and len(t_shape) == 0 else (x.shape[0],), t, dtype=t_dtype)
                return unet.run({"sample": x.astype(s_dtype, copy=False), "timestep": t_arr,
                                 "encoder_hidden_states": emb.astype(e_dtype, copy=False)})[unet.output_names[0]]

            for i, t in enumerate(sched.timesteps):
                x = sched.scale_model_input(latents, t).astype(np.float32, copy=False)
                if not guided:
                    eps = run(x, cond)
                elif self.cfg_batch:
                    both = run(np.concatenate([x, x]), np.concatenate([uncond, cond]))
                    eps = both[:1] + np.float32(params.guidance) * (both[1:] - both[:1])
                else:
                    e_u = run(x, uncond)
                    e_c = run(x, cond)
                    eps = e_u + np.float32(params.guidance) * (e_c - e_u)
                latents = np.asarray(sched.step(eps.astype(np.float32), t, latents, rng), dtype=np.float32)
                if bar is not None:
                    bar.update(1)
                if callback is not None:
                    callback(i, t, latents)
        if bar is not None:
            bar.close()
        self.times.unet += time.perf_counter() - t0
        return latents

    def scaling_factor(self) -> float:
        return float(self.manifest.get("vae_scaling_factor", DEFAULT_SCALING_FACTOR))

    def tile_for(self, latent_h: int, latent_w: int) -> int | None:
        """Latent tile side for the VAE decode: the given one, else the largest multiple of 8
        whose estimated peak fits max_memory (None: decode whole)."""
        if self.vae_tile:
            return None if self.vae_tile >= max(latent_h, latent_w) else self.vae_tile
        if self.max_memory is None:
            return None
        from ..interpreter import current_rss_bytes
        per_px = VAE_W8A8_MIB_PER_LATENT_PX if self._vae_key().endswith("w8a8") else VAE_MIB_PER_LATENT_PX
        # what the process holds now (the UNet's model is closed and its memory trimmed), not
        # its peak so far
        budget_mib = (self.max_memory - max(current_rss_bytes(), 60 << 20)) / 2**20
        if latent_h * latent_w * per_px <= budget_mib:
            return None
        side = int(np.sqrt(max(budget_mib, 0) / per_px)) // 8 * 8
        return max(side, 2 * TILE_OVERLAP)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Latents [1, 4, h, w] -> image [1, 3, 8h, 8w] in [-1, 1] (float32)."""
        z = (latents / np.float32(self.scaling_factor())).astype(np.float32)
        t0 = time.perf_counter()
        tile = self.tile_for(z.shape[2], z.shape[3])
        with self._model(self._vae_key()) as vae:
            name, out_name = vae.input_names[0], vae.output_names[0]
            if tile is None:
                bar = self._bar(1, "VAE decode")
                img = vae.run({name: z})[out_name]
                if bar is not None:
                    bar.update(1)
                    bar.close()
            else:
                img = decode_tiled(lambda t: vae.run({name: t})[out_name], z, tile, TILE_OVERLAP,
                                   self._bar(len(tile_starts(z.shape[2], tile, TILE_OVERLAP))
                                             * len(tile_starts(z.shape[3], tile, TILE_OVERLAP)), "VAE decode"))
        self.times.vae += time.perf_counter() - t0
        return img

    def generate(self, prompt: str, negative_prompt: str = "", *, steps: int = 20, guidance: float = 7.5,
                 sampler: str = "euler_a", karras: bool = False, seed: int | None = None, width: int = 512,
                 height: int = 512, num: int = 1, callback: Callable | None = None):
        """PIL image(s) for the prompt: one Image when num == 1, else a list (seeds seed, seed+1, ...).
        Each image carries its parameters in ``image.info["parameters"]`` (saved as a PNG text chunk
        by save_png)."""
        if seed is None:
            seed = int(np.random.default_rng().integers(0, 1 << 63))
        images = []
        cond, uncond = self.encode_prompts(prompt, negative_prompt)
        for k in range(num):
            params = GenerationParams(prompt, negative_prompt, steps, guidance, sampler, karras,
                                      (seed + k) % (1 << 64), width, height)
            params.validate()
            latents = self.denoise(cond, uncond, params, callback=callback)
            images.append(to_pil(self.decode(latents), params.a1111(self.manifest.get("name", ""))))
        return images[0] if num == 1 else images


# ---------------------------------------------------------------- networks

class Network:
    """What the pipeline needs of a network: inputs {name: (numpy dtype, shape or None)},
    input_names, output_names, run(feeds) -> {name: array}, close()."""
    inputs: dict
    input_names: list
    output_names: list

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class EngineNetwork(Network):
    def __init__(self, model):
        self.model = model
        self.inputs = {v.name: (np.dtype(v.dtype), v.shape) for v in model.graph.inputs}
        self.input_names, self.output_names = model.input_names, model.output_names

    def run(self, feeds):
        return self.model.run(feeds)

    def close(self):
        self.model.close()


class OrtNetwork(Network):
    """The same network's ONNX export on onnxruntime (benchmarks and tests: the reference)."""
    _DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int32)": np.int32,
               "tensor(int64)": np.int64}

    def __init__(self, onnx_path: str, threads: int | None = None):
        import onnxruntime as ort
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        self.session = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
        self.inputs = {i.name: (np.dtype(self._DTYPES[i.type]), tuple(i.shape)) for i in self.session.get_inputs()}
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds):
        return dict(zip(self.output_names, self.session.run(None, feeds)))

    def close(self):
        self.session = None


class OrtStableDiffusion(StableDiffusion):
    """The same pipeline (tokenizer, schedulers, guidance, tiling) with each network run by
    onnxruntime from the ONNX export the folder was converted from (manifest "source", or
    export_dir): the reference of scripts/bench_sd.py and the tests."""

    def __init__(self, path: str, export_dir: str | None = None, **kwargs):
        # onnxruntime holds whole networks anyway: no memory budget, so no tiles (unless asked)
        kwargs.setdefault("max_memory", 0)
        super().__init__(path, **kwargs)
        self.export_dir = export_dir or self.manifest["source"]

    def _model(self, key: str, provider: str | None = None) -> Network:
        net = "vae_decoder" if key.startswith("vae_decoder") else key
        return OrtNetwork(os.path.join(self.export_dir, net, "model.onnx"), self.options.threads)


# ---------------------------------------------------------------- helpers

def _pad_windows(tok, ids: list, weights: list, n: int):
    """Extend to n windows with empty-prompt windows (weight 1), as A1111 pads the shorter prompt."""
    ids, weights = list(ids), list(weights)
    if len(ids) < n:
        empty_ids, empty_w = tok.weighted("")
        while len(ids) < n:
            ids.append(empty_ids[0])
            weights.append(empty_w[0])
    return ids, weights


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` covering [0, size) with at least ``overlap`` shared."""
    if tile >= size:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return sorted(set(starts))


def _ramp(length: int, before: int, after: int) -> np.ndarray:
    """Blend weights along one axis of a tile: linear ramps over the overlaps shared with the
    tile before and after (weights of overlapping tiles sum to 1 after normalisation)."""
    w = np.ones(length, np.float32)
    if before:
        w[:before] = (np.arange(before, dtype=np.float32) + 0.5) / before
    if after:
        w[length - after:] = np.minimum(w[length - after:], (np.arange(after, 0, -1, dtype=np.float32) - 0.5) / after)
    return w


def decode_tiled(decode: Callable[[np.ndarray], np.ndarray], z: np.ndarray, tile: int, overlap: int,
                 bar=None) -> np.ndarray:
    """Decode z [1, 4, h, w] in overlapping tiles and blend them linearly over the overlaps."""
    _, _, h, w = z.shape
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    out = acc = None
    for iy, y0 in enumerate(ys):
        for ix, x0 in enumerate(xs):
            th, tw = min(tile, h), min(tile, w)
            part = decode(np.ascontiguousarray(z[:, :, y0:y0 + th, x0:x0 + tw]))
            if out is None:
                out = np.zeros((1, part.shape[1], h * VAE_SCALE, w * VAE_SCALE), np.float32)
                acc = np.zeros((h * VAE_SCALE, w * VAE_SCALE), np.float32)
            by = (ys[iy - 1] + th - y0) * VAE_SCALE if iy else 0
            ay = (y0 + th - ys[iy + 1]) * VAE_SCALE if iy + 1 < len(ys) else 0
            bx = (xs[ix - 1] + tw - x0) * VAE_SCALE if ix else 0
            axx = (x0 + tw - xs[ix + 1]) * VAE_SCALE if ix + 1 < len(xs) else 0
            wgt = np.outer(_ramp(th * VAE_SCALE, by, ay), _ramp(tw * VAE_SCALE, bx, axx))
            sy, sx = slice(y0 * VAE_SCALE, (y0 + th) * VAE_SCALE), slice(x0 * VAE_SCALE, (x0 + tw) * VAE_SCALE)
            out[:, :, sy, sx] += part * wgt
            acc[sy, sx] += wgt
            del part
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    out /= acc
    return out


def to_pil(image: np.ndarray, parameters: str = ""):
    """[1, 3, H, W] in [-1, 1] -> PIL RGB image (the diffusers mapping: (x / 2 + 0.5) clipped,
    times 255, rounded); ``parameters`` goes to image.info for save_png."""
    from PIL import Image
    x = np.clip(image[0].transpose(1, 2, 0) / 2 + 0.5, 0, 1)
    pil = Image.fromarray((x * 255).round().astype(np.uint8), "RGB")
    if parameters:
        pil.info["parameters"] = parameters
    return pil


def save_png(image, path: str) -> None:
    """Save with the generation parameters in a tEXt chunk (AUTOMATIC1111's ``parameters`` key)."""
    from PIL.PngImagePlugin import PngInfo
    meta = PngInfo()
    if image.info.get("parameters"):
        meta.add_text("parameters", image.info["parameters"])
    image.save(path, pnginfo=meta)
