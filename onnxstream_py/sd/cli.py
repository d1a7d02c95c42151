"""``onnxstream sd`` and ``onnxstream convert-sd`` (registered by onnxstream_py/cli.py).

    onnxstream convert-sd EXPORT_DIR OUT_DIR [--unet fp16-storage] [--text-encoder fp32] [--vae-decoder fp32]
    onnxstream sd --models-path DIR --prompt "..." [--neg-prompt ...] [--steps 20] [--guidance 7.5]
        [--sampler euler_a|euler|ddim|dpmpp_2m|lcm] [--karras] [--seed N] [--width 512 --height 512]
        [--num 1] [--output out.png] [--threads N] [--rpi] [--max-memory 400M] [--cfg-separate]
        [--vae-tile N] [--preview-steps] [--save-latents F.npy] [--decode-latents F.npy]
"""
from __future__ import annotations

import os
import time

PRECISIONS = ("fp32", "fp16-storage", "w8a32")


def add_commands(sub) -> None:
    c = sub.add_parser("convert-sd", help="convert an optimum text-to-image export (a whole SD pipeline)")
    c.add_argument("export_dir")
    c.add_argument("out_dir")
    c.add_argument("--text-encoder", default="fp32", choices=PRECISIONS)
    c.add_argument("--unet", default="fp16-storage", choices=PRECISIONS)
    c.add_argument("--vae-decoder", default="fp32", choices=PRECISIONS)
    c.add_argument("--no-vae-w8a8", action="store_true", help="skip the W8A8 VAE decoder (--rpi's)")
    c.add_argument("--calibration-prompts", metavar="FILE", help="prompts for the calibration generations, one per line")
    c.add_argument("--calibration-count", type=int, default=4, help="calibration generations (default 4)")
    c.add_argument("--calibration-steps", type=int, default=4, help="steps per calibration generation (default 4)")
    c.add_argument("--calibration-size", type=int, default=None, help="image side (default: the UNet's, 512 for SD 1.5)")
    c.add_argument("--calibration-method", default="percentile", choices=["minmax", "percentile"])
    c.add_argument("--percentile", type=float, default=99.99)
    c.set_defaults(fn=cmd_convert_sd)

    s = sub.add_parser("sd", help="generate images with a converted Stable Diffusion pipeline")
    s.add_argument("--models-path", required=True, help="a folder made by convert-sd (or its http(s):// URL)")
    from ..cli import token_opt
    token_opt(s)
    s.add_argument("--prompt", default="")
    s.add_argument("--neg-prompt", default="")
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--guidance", type=float, default=7.5)
    s.add_argument("--sampler", default="euler_a", choices=["euler_a", "euler", "ddim", "dpmpp_2m", "lcm"])
    s.add_argument("--karras", action="store_true", help="Karras sigmas (dpmpp_2m, euler)")
    s.add_argument("--seed", type=int, default=None, help="64-bit seed (default: random, printed)")
    s.add_argument("--width", type=int, default=512)
    s.add_argument("--height", type=int, default=512)
    s.add_argument("--num", type=int, default=1, help="images (seeds seed, seed+1, ...)")
    s.add_argument("--output", default="out.png", help="PNG path; with --num > 1, _N is added")
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--provider", choices=["nocache", "prefetch", "ram"], default=None,
                   help="weights provider for the networks (default nocache: chunked reads, least memory)")
    s.add_argument("--rpi", action="store_true", help="smallest memory: DiskNoCache, separate CFG passes, "
                                                     "w8a8 VAE decoder if converted, tiled decode under 256M")
    s.add_argument("--max-memory", default=None, help="process budget, e.g. 400M (default 300M, --rpi 256M; 0: none): the VAE decode is tiled to stay under it")
    s.add_argument("--cfg-separate", action="store_true", help="two batch-1 UNet passes per step (less memory)")
    s.add_argument("--vae-tile", type=int, default=None, help="latent tile side for the VAE decode")
    s.add_argument("--preview-steps", action="store_true", help="write a cheap latent preview PNG after each step")
    s.add_argument("--save-latents", default=None, help="save the final latents (.npy)")
    s.add_argument("--decode-latents", default=None, help="skip sampling: decode these latents (.npy)")
    s.set_defaults(fn=cmd_sd)


def cmd_convert_sd(args) -> int:
    from .convert import CALIBRATION_PROMPTS, W8A8Vae, convert_sd
    from .pipeline import peak_rss_mib
    t0 = time.perf_counter()
    w8a8 = None
    if not args.no_vae_w8a8:
        prompts = CALIBRATION_PROMPTS
        if args.calibration_prompts:
            with open(args.calibration_prompts, encoding="utf-8") as f:
                prompts = tuple(line.strip() for line in f if line.strip())
            if not prompts:
                raise ValueError(f"--calibration-prompts {args.calibration_prompts}: no prompts in the file")
        if args.calibration_count < 1 or args.calibration_steps < 1:
            raise ValueError("--calibration-count and --calibration-steps must be >= 1")
        w8a8 = W8A8Vae(prompts, args.calibration_count, args.calibration_steps, args.calibration_size,
                       args.calibration_method, args.percentile)
    convert_sd(args.export_dir, args.out_dir,
               {"text_encoder": args.text_encoder, "unet": args.unet, "vae_decoder": args.vae_decoder},
               w8a8_vae=w8a8)
    print(f"converted {args.export_dir} -> {args.out_dir} in {time.perf_counter() - t0:.1f} s, "
          f"peak RSS {peak_rss_mib():.1f} MiB")
    return 0


def _outputs(path: str, n: int) -> list[str]:
    if n == 1:
        return [path]
    root, ext = os.path.splitext(path)
    return [f"{root}_{k}{ext or '.png'}" for k in range(n)]


def latent_preview(latents, path: str) -> None:
    """A cheap RGB preview of SD 1.x latents (a fixed linear map of the 4 channels, no VAE)."""
    import numpy as np
    from PIL import Image
    m = np.array([[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]],
                 np.float32)
    rgb = np.einsum("chw,cr->hwr", latents[0], m)
    img = np.clip((rgb + 1) * 127.5, 0, 255).astype(np.uint8)
    Image.fromarray(img, "RGB").resize((img.shape[1] * 8, img.shape[0] * 8), Image.NEAREST).save(path)


def cmd_sd(args) -> int:
    import numpy as np
    from .pipeline import GenerationParams, StableDiffusion, peak_rss_mib, save_png, to_pil
    t0 = time.perf_counter()
    sd = StableDiffusion(args.models_path, threads=args.threads, provider=args.provider, rpi=args.rpi,
                         max_memory=args.max_memory, cfg_batch=False if args.cfg_separate else None,
                         vae_tile=args.vae_tile)
    seed = args.seed if args.seed is not None else int(np.random.default_rng().integers(0, 1 << 63))
    outputs = _outputs(args.output, args.num)
    if args.decode_latents:
        latents = np.load(args.decode_latents).astype(np.float32)
        img = to_pil(sd.decode(latents))
        save_png(img, outputs[0])
        print(f"wrote {outputs[0]}; {sd.times.summary()}")
        return 0
    cond, uncond = sd.encode_prompts(args.prompt, args.neg_prompt)
    for k, out in enumerate(outputs):
        params = GenerationParams(args.prompt, args.neg_prompt, args.steps, args.guidance, args.sampler, args.karras,
                                  (seed + k) % (1 << 64), args.width, args.height)
        params.validate()
        preview = None
        if args.preview_steps:
            root, _ = os.path.splitext(out)
            preview = lambda i, t, lat: latent_preview(lat, f"{root}_preview.png")  # noqa: E731
        latents = sd.denoise(cond, uncond, params, callback=preview)
        if args.save_latents:
            np.save(args.save_latents if args.num == 1 else _outputs(args.save_latents, args.num)[k], latents)
        img = to_pil(sd.decode(latents), params.a1111(sd.manifest.get("name", "")))
        save_png(img, out)
        print(f"wrote {out} (seed {params.seed})")
    print(f"{sd.times.summary()}; wall {time.perf_counter() - t0:.2f} s")
    print(f"peak RSS {peak_rss_mib():.1f} MiB")
    return 0


DEMO_EXPORT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "tiny_sd15")


def add_demo(sub, run_opts) -> None:
    d = sub.add_parser("demo", help="convert the tiny synthetic SD 1.5 pipeline shipped with the package and "
                                    "generate a PNG (compared with the same pipeline on onnxruntime)")
    d.add_argument("--out-dir", help="where to write the converted pipeline (default: a temp dir)")
    d.add_argument("--output", default="demo.png")
    d.add_argument("--prompt", default="a watercolor painting of a lighthouse at dusk, (warm light:1.2)")
    d.add_argument("--steps", type=int, default=10)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--size", type=int, default=128, help="image side (multiple of 8)")
    run_opts(d)
    d.set_defaults(fn=cmd_demo)


def cmd_demo(args) -> int:
    """Convert the embedded export (a few MB), generate one image, and check the final latents
    against the same pipeline with onnxruntime running the ONNX export."""
    import tempfile

    import numpy as np
    from .convert import convert_sd
    from .pipeline import GenerationParams, OrtStableDiffusion, StableDiffusion, peak_rss_mib, save_png, to_pil
    from ..cli import _options
    t0 = time.perf_counter()
    out_dir = args.out_dir or os.path.join(tempfile.gettempdir(), "onnxstream_demo_sd")
    convert_sd(DEMO_EXPORT, out_dir, log=lambda m: None, w8a8_vae=None)
    print(f"converted the tiny SD 1.5 pipeline ({DEMO_EXPORT}) -> {out_dir} in {time.perf_counter() - t0:.1f} s")
    params = GenerationParams(args.prompt, "blurry, low quality", args.steps, 7.5, "euler_a", False, args.seed,
                              args.size, args.size)
    params.validate()
    sd = StableDiffusion(out_dir, provider=args.provider, options=_options(args))
    cond, uncond = sd.encode_prompts(params.prompt, params.negative_prompt)
    latents = sd.denoise(cond, uncond, params)
    img = to_pil(sd.decode(latents), params.a1111("tiny synthetic SD 1.5 (random weights)"))
    save_png(img, args.output)
    ours_rss = peak_rss_mib()
    print(f"wrote {args.output} ({img.size[0]}x{img.size[1]}, {args.steps} steps euler_a, seed {args.seed}); "
          f"{sd.times.summary()}")
    import importlib.util
    if importlib.util.find_spec("onnxruntime") is None:
        print("(onnxruntime not installed: skipping the comparison)")
        return 0
    ref = OrtStableDiffusion(out_dir, export_dir=DEMO_EXPORT, progress=False)
    c, u = ref.encode_prompts(params.prompt, params.negative_prompt)
    want = ref.denoise(c, u, params)
    err = float(np.abs(latents - want).max() / np.abs(want).max())
    print(f"final latents vs the same pipeline on onnxruntime: max abs error {err:.2e} x max|ref| "
          f"(UNet stored fp16, computed fp32); onnxruntime: {ref.times.summary().split(';')[0]}")
    print(f"total {time.perf_counter() - t0:.1f} s; peak RSS before the onnxruntime comparison {ours_rss:.1f} MiB")
    return 0
