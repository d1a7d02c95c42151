"""Build Stable Diffusion 1.5-shaped ONNX models with seeded random weights.

No weights can be downloaded here, so this script instantiates SD 1.5's three
inference networks from their configs (CLIP text encoder, UNet, VAE decoder),
fills them with seeded random weights and exports them the way the optimum /
diffusers ONNX exports name things:

    OUT_DIR/text_encoder/model.onnx   input_ids int32 [B,S] -> last_hidden_state, pooler_output
    OUT_DIR/unet/model.onnx(+_data)   sample [B,4,H,W], timestep float32 rank 0,
                                      encoder_hidden_states [B,77,768] -> out_sample
    OUT_DIR/vae_decoder/model.onnx    latent_sample [B,4,h,w] -> sample [B,3,8h,8w]
    OUT_DIR/synth.json                configs, parameter counts and input specs (read by bench.py)

The trade-off: the graphs are structurally identical to real SD 1.5 exports
(same ops, shapes, sizes, memory profile), but the numbers are meaningless, so
they serve for conversion, memory and parity benchmarks, never for images.
`--tiny` builds architecturally equivalent miniatures (a few MB in total) for
tests and demos.

Uses torch's TorchScript exporter (dynamo=False), opset 17, constant folding.
A model whose weights exceed the 2 GiB protobuf limit (the full UNet) is saved
with all its tensors in one external file `model.onnx_data`, as optimum does.
Each exported model is checked against onnxruntime at a second input shape, so
the dynamic axes are exercised too (`--no-verify` skips that).

Usage:
    python scripts/make_synthetic_sd15.py OUT_DIR [--tiny] [--seed N]
        [--models text_encoder,unet,vae_decoder] [--no-verify]
"""
import argparse
import gc
import json
import os
import shutil
import sys
import time

import numpy as np
import torch

MODELS = ("text_encoder", "unet", "vae_decoder")
OPSET = 17
PROTOBUF_LIMIT = 2 * 1024**3

# SD 1.5 (runwayml/stable-diffusion-v1-5) configs, restated field by field.
TEXT_ENCODER_CONFIG = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, projection_dim=768,
    num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
    hidden_act="quick_gelu", layer_norm_eps=1e-5,
    # SD 1.5 ships the legacy ids; with eos_token_id == 2 transformers pools at
    # argmax(input_ids), i.e. at the first occurrence of the highest id (<|endoftext|>).
    bos_token_id=0, eos_token_id=2, pad_token_id=1,
)
UNET_CONFIG = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                      "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D",
                    "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
    act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
)
VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32, act_fn="silu", sample_size=512,
)

# Miniatures: same block types and op mix, tiny widths.
TINY_TEXT_ENCODER_CONFIG = dict(
    TEXT_ENCODER_CONFIG, vocab_size=1000, hidden_size=32, intermediate_size=37,
    projection_dim=32, num_hidden_layers=2, num_attention_heads=4,
)
TINY_UNET_CONFIG = dict(
    UNET_CONFIG, sample_size=16, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
)
TINY_VAE_CONFIG = dict(
    VAE_CONFIG, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    norm_num_groups=8, sample_size=32,
)


class TextEncoderExport(torch.nn.Module):
    """CLIPTextModel returning a plain (last_hidden_state, pooler_output) tuple."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        out = self.model(input_ids=input_ids, return_dict=True)
        return out.last_hidden_state, out.pooler_output


class UNetExport(torch.nn.Module):
    """UNet2DConditionModel returning the bare noise prediction tensor."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.model(sample, timestep, encoder_hidden_states, return_dict=False)[0]


class VaeDecoderExport(torch.nn.Module):
    """AutoencoderKL decode path only: post_quant_conv then decoder."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample):
        return self.vae.decode(latent_sample, return_dict=False)[0]


def prompt_like_ids(batch, seq_len, vocab_size, generator):
    """Token ids shaped like a tokenized prompt: BOS, a few words, EOS, EOS padding.

    The two highest ids play CLIP's <|startoftext|> / <|endoftext|>, so the
    legacy pooling (argmax of ids) lands on the first EOS, as with real prompts.
    """
    bos, eos = vocab_size - 2, vocab_size - 1
    ids = np.full((batch, seq_len), eos, dtype=np.int32)
    for b in range(batch):
        n_words = int(generator.integers(3, max(4, min(20, seq_len - 2))))
        n_words = min(n_words, seq_len - 2)
        ids[b, 0] = bos
        ids[b, 1:1 + n_words] = generator.integers(1, vocab_size - 2, size=n_words)
    return ids


def build_text_encoder(tiny, seed):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = TINY_TEXT_ENCODER_CONFIG if tiny else TEXT_ENCODER_CONFIG
    torch.manual_seed(seed)
    # eager attention keeps the graph to plain MatMul/Softmax, as in the
    # widely circulated SD 1.5 ONNX exports.
    model = CLIPTextModel(CLIPTextConfig(**cfg, attn_implementation="eager")).eval()
    g = np.random.default_rng(seed)
    trace = (torch.from_numpy(prompt_like_ids(1, 77, cfg["vocab_size"], g)),)
    verify = (torch.from_numpy(prompt_like_ids(2, 19, cfg["vocab_size"], g)),)
    spec = dict(
        input_names=["input_ids"],
        output_names=["last_hidden_state", "pooler_output"],
        dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                      "last_hidden_state": {0: "batch", 1: "sequence"},
                      "pooler_output": {0: "batch"}},
        feeds={"input_ids": {"shape": [1, 77], "dtype": "int32",
                             "vocab_size": cfg["vocab_size"],
                             "bos": cfg["vocab_size"] - 2, "eos": cfg["vocab_size"] - 1}},
    )
    return TextEncoderExport(model), cfg, trace, verify, spec


def build_unet(tiny, seed):
    from diffusers import UNet2DConditionModel

    cfg = TINY_UNET_CONFIG if tiny else UNET_CONFIG
    torch.manual_seed(seed)
    model = UNet2DConditionModel(**cfg).eval()
    g = torch.Generator().manual_seed(seed)
    ctx = cfg["cross_attention_dim"]
    hw = 8 if tiny else 32
    # timestep is a float32 scalar of rank 0, as optimum exports it.
    trace = (torch.randn(1, 4, hw, hw, generator=g), torch.tensor(999.0),
             torch.randn(1, 77, ctx, generator=g))
    verify = (torch.randn(2, 4, hw + 8, hw + 16, generator=g), torch.tensor(501.0),
              torch.randn(2, 77, ctx, generator=g))
    latent = cfg["sample_size"]
    spec = dict(
        input_names=["sample", "timestep", "encoder_hidden_states"],
        output_names=["out_sample"],
        dynamic_axes={"sample": {0: "batch", 2: "height", 3: "width"},
                      "encoder_hidden_states": {0: "batch", 1: "sequence"},
                      "out_sample": {0: "batch", 2: "height", 3: "width"}},
        feeds={"sample": {"shape": [1, 4, latent, latent], "dtype": "float32"},
               "timestep": {"shape": [], "dtype": "float32", "value": 999.0},
               "encoder_hidden_states": {"shape": [1, 77, ctx], "dtype": "float32"}},
    )
    return UNetExport(model), cfg, trace, verify, spec


def build_vae_decoder(tiny, seed):
    from diffusers import AutoencoderKL

    cfg = TINY_VAE_CONFIG if tiny else VAE_CONFIG
    torch.manual_seed(seed)
    vae = AutoencoderKL(**cfg).eval()
    # Only the decode path is exported; drop the encoder so the parameter
    # count (and the RAM of this script) covers what is exported.
    vae.encoder = None
    vae.quant_conv = None
    g = torch.Generator().manual_seed(seed)
    hw = 8 if tiny else 32
    trace = (torch.randn(1, 4, hw, hw, generator=g),)
    verify = (torch.randn(2, 4, hw - 4, hw + 8, generator=g),)
    scale = 2 ** (len(cfg["block_out_channels"]) - 1)
    latent = cfg["sample_size"] // scale
    spec = dict(
        input_names=["latent_sample"],
        output_names=["sample"],
        dynamic_axes={"latent_sample": {0: "batch", 2: "height", 3: "width"},
                      "sample": {0: "batch", 2: "height", 3: "width"}},
        feeds={"latent_sample": {"shape": [1, 4, latent, latent], "dtype": "float32"}},
        upscale=scale,
    )
    return VaeDecoderExport(vae), cfg, trace, verify, spec


BUILDERS = {"text_encoder": build_text_encoder, "unet": build_unet,
            "vae_decoder": build_vae_decoder}


def check_outputs(name, outputs):
    """Random weights must still give finite, non-constant activations.

    The libraries' default initialisation passes as is (outputs have std ~0.3-1
    for the full and tiny sets: GroupNorm/LayerNorm keep every block in range),
    so no weight rescaling is applied; an explosion here is an error.
    """
    for i, t in enumerate(outputs):
        a = t.detach().float().numpy()
        if not np.all(np.isfinite(a)):
            raise RuntimeError(f"{name}: output {i} {a.shape} has non-finite values")
        std, peak = float(a.std()), float(np.abs(a).max())
        if std <= 1e-6 * max(peak, 1.0):
            raise RuntimeError(f"{name}: output {i} {a.shape} is constant (std {std:g})")
        if peak > 1e4:
            raise RuntimeError(f"{name}: output {i} {a.shape} exploded (max|x| {peak:g})")
        print(f"  {name} output {i} {list(a.shape)}: mean {a.mean():+.4f} std {std:.4f} "
              f"max|x| {peak:.4f}")


def export(module, args, spec, out_path, param_bytes):
    """TorchScript export; weights > 2 GiB go to one external data file."""
    out_dir = os.path.dirname(out_path)
    os.makedirs(out_dir, exist_ok=True)
    for f in os.listdir(out_dir):
        os.remove(os.path.join(out_dir, f))
    external = param_bytes >= PROTOBUF_LIMIT
    # A >2 GiB export is written by torch with one file per tensor; export into a
    # scratch dir and re-save as model.onnx + model.onnx_data.
    target = os.path.join(out_dir, "_export", "model.onnx") if external else out_path
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            module, args, target, dynamo=False, opset_version=OPSET,
            do_constant_folding=True, input_names=spec["input_names"],
            output_names=spec["output_names"], dynamic_axes=spec["dynamic_axes"],
        )
    return external, target


def resave_external(target, out_path):
    import onnx

    proto = onnx.load(target, load_external_data=True)
    onnx.save_model(proto, out_path, save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx_data",
                    size_threshold=1024)
    os.chmod(os.path.join(os.path.dirname(out_path), "model.onnx_data"), 0o644)
    del proto
    shutil.rmtree(os.path.dirname(target))


def verify_with_ort(name, path, spec, args, expected, tol=1e-3):
    """Run the exported model in onnxruntime and compare with torch."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feeds = {n: a.numpy() for n, a in zip(spec["input_names"], args)}
    got = sess.run(spec["output_names"], feeds)
    for oname, g, e in zip(spec["output_names"], got, expected):
        e = e.detach().numpy()
        if g.shape != e.shape:
            raise RuntimeError(f"{name}: ORT output {oname} shape {g.shape}, torch {e.shape}")
        err = float(np.abs(g - e).max())
        rel = err / max(float(np.abs(e).max()), 1e-12)
        print(f"  {name} ORT vs torch {oname} {list(g.shape)}: max abs err {err:.3g}, rel {rel:.3g}")
        if rel > tol:
            raise RuntimeError(f"{name}: ORT disagrees with torch on {oname} (rel {rel:.3g})")
    del sess


def describe_inputs(path):
    import onnx

    m = onnx.load(path, load_external_data=False)
    dims = lambda t: [d.dim_param or d.dim_value for d in t.type.tensor_type.shape.dim]
    return {i.name: dims(i) for i in m.graph.input}, {o.name: dims(o) for o in m.graph.output}


def make_one(name, out_dir, tiny, seed, verify):
    t0 = time.perf_counter()
    module, cfg, trace, verify_args, spec = BUILDERS[name](tiny, seed)
    n_params = sum(p.numel() for p in module.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    print(f"{name}: {n_params:,} params ({param_bytes / 2**20:.1f} MiB), "
          f"built in {time.perf_counter() - t0:.1f}s")

    t0 = time.perf_counter()
    as_tuple = lambda out: out if isinstance(out, tuple) else (out,)
    with torch.no_grad():
        ref_trace = as_tuple(module(*trace))
        ref_verify = as_tuple(module(*verify_args)) if verify else None
    check_outputs(name, ref_trace)
    if verify:
        check_outputs(name, ref_verify)
    print(f"  torch forward(s) {time.perf_counter() - t0:.1f}s")

    out_path = os.path.join(out_dir, name, "model.onnx")
    t0 = time.perf_counter()
    external, target = export(module, trace, spec, out_path, param_bytes)
    del module
    gc.collect()
    if external:
        resave_external(target, out_path)
    print(f"  exported {out_path}{' (+ model.onnx_data)' if external else ''} "
          f"in {time.perf_counter() - t0:.1f}s")

    inputs, outputs = describe_inputs(out_path)
    print(f"  inputs {inputs}\n  outputs {outputs}")
    if verify:
        t0 = time.perf_counter()
        verify_with_ort(name, out_path, spec, trace, ref_trace)
        verify_with_ort(name, out_path, spec, verify_args, ref_verify)
        print(f"  verified in {time.perf_counter() - t0:.1f}s")

    size = sum(os.path.getsize(os.path.join(out_dir, name, f))
               for f in os.listdir(os.path.join(out_dir, name)))
    return dict(config={k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
                params=n_params, bytes_on_disk=size, seed=seed,
                inputs=inputs, outputs=outputs, feeds=spec["feeds"],
                **({"upscale": spec["upscale"]} if "upscale" in spec else {}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--tiny", action="store_true", help="miniature models (a few MB)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--no-verify", dest="verify", action="store_false",
                    help="skip the onnxruntime vs torch check")
    args = ap.parse_args(argv)

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    os.makedirs(args.out_dir, exist_ok=True)
    manifest_path = os.path.join(args.out_dir, "synth.json")
    manifest = {}
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
    manifest.update(tiny=args.tiny, torch=torch.__version__, opset=OPSET)
    manifest.setdefault("models", {})

    t_all = time.perf_counter()
    for name in names:
        # Each model gets its own seed so a subset run reproduces the same weights.
        seed = args.seed * 1000 + MODELS.index(name)
        manifest["models"][name] = make_one(name, args.out_dir, args.tiny, seed, args.verify)
        gc.collect()
        with open(manifest_path, "w") as f:
            json.dump(manifest, f, indent=2)
    total = sum(manifest["models"][n]["params"] for n in names)
    print(f"done: {total:,} params in {time.perf_counter() - t_all:.1f}s -> {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
