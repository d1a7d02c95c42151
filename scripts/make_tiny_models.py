"""Build tiny seeded random-weight models of every family the engine claims, export them to ONNX.

Usage: ``python scripts/make_tiny_models.py OUT_DIR [--only NAME ...] [--coverage docs/OP_COVERAGE.md]``

Each family (transformers' BERT, GPT-2, ViT, Whisper encoder, Llama, CLIP text encoder;
diffusers' SD 1.x / 2.x / XL UNets and the SD VAE encoder and decoder; small torch CNNs in
the style of ResNet, MobileNetV2, YOLO and a ConvTranspose image decoder) is built from a
config with seeded random weights (no download) and exported three ways: the TorchScript
exporter (``dynamo=False``) at opsets 14 and 17, and the dynamo exporter at opset 18.
An exporter failure is recorded, not fatal: it is not the engine's bug, but it is listed.

The trade-off: fixtures are kept tiny (a few hundred KB each) so they can be committed, at
the price of realistic sizes. Only the input *recipes* go into ``manifest.json``; the tests
draw seeded inputs from them and compute onnxruntime's reference outputs at test time, so
no reference tensors are stored. Every recipe is checked here once with onnxruntime, and a
second input size is kept only when the export really has dynamic axes that accept it.

Writes OUT_DIR/<family>_<exporter>.onnx, OUT_DIR/manifest.json and the op coverage report
(the op types, with domain and opset, of each fixture and their union), and prints the union.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import json
import pathlib
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
from fixture_inputs import draw_inputs, seed_of  # noqa: E402  (shared with tests/test_models.py)

# (name, dynamo?, opset): the three export flavours every family goes through.
EXPORTS = (("ts14", False, 14), ("ts17", False, 17), ("dynamo18", True, 18))


@dataclass
class InputSpec:
    """Recipe for one model input: shape per run and how to draw its values.

    kind: "normal" (standard normal), "uniform" (low..high), "int" (randint low..high-1),
    "mask" (ones, with the last two positions of batch row 0 set to 0: right padding).
    """
    name: str
    shapes: list[list[int]]  # one shape per run; run 0 is the export size
    dtype: str = "float32"
    kind: str = "normal"
    low: float = 0.0
    high: float = 1.0
    dynamic: dict[int, str] = field(default_factory=dict)  # axis -> symbolic dim name


@dataclass
class Family:
    name: str
    build: Callable[[], "torch.nn.Module"]  # noqa: F821
    inputs: list[InputSpec]
    outputs: list[str]
    note: str = ""


# ----------------------------------------------------------------------------------------
# Weight randomisation: default inits leave norms at 1/0 and BN statistics at 0/1, which
# would hide bugs in those ops. Perturb them (seeded) so every parameter matters.

def randomize(module):
    import torch
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.numel() == 0 or not p.dtype.is_floating_point:
                continue
            if bool((p == 0).all()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            elif bool((p == 1).all()):
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return module.eval()


# ----------------------------------------------------------------------------------------
# transformers families. Wrappers name forward arguments like the ONNX inputs (the dynamo
# exporter takes input names from them) and return plain tensors.

def _hf_wrapper(model, out_keys, arg_names):
    import torch

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *args):
            out = self.model(**dict(zip(arg_names, args)))
            return tuple(getattr(out, k) for k in out_keys)

    return Wrapper()


def build_bert():
    import torch
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=37, max_position_embeddings=64, type_vocab_size=2)
    m = BertModel(cfg)
    return _hf_wrapper(randomize(m), ["last_hidden_state", "pooler_output"],
                       ["input_ids", "attention_mask", "token_type_ids"])


def build_gpt2():
    import torch
    from transformers import GPT2Config, GPT2Model
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64, use_cache=False)
    m = GPT2Model(cfg)
    return _hf_wrapper(randomize(m), ["last_hidden_state"], ["input_ids", "attention_mask"])


def build_vit():
    import torch
    from transformers import ViTConfig, ViTModel
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=37)
    m = ViTModel(cfg)
    return _hf_wrapper(randomize(m), ["last_hidden_state", "pooler_output"], ["pixel_values"])


def build_whisper_encoder():
    import torch
    from transformers import WhisperConfig, WhisperModel
    torch.manual_seed(0)
    cfg = WhisperConfig(vocab_size=99, num_mel_bins=16, d_model=32, encoder_layers=2, decoder_layers=1,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37,
                        decoder_ffn_dim=37, max_source_positions=30, max_target_positions=32,
                        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    enc = WhisperModel(cfg).get_encoder()
    return _hf_wrapper(randomize(enc), ["last_hidden_state"], ["input_features"])


def build_llama():
    import torch
    from transformers import LlamaConfig, LlamaModel
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      rms_norm_eps=1e-6, use_cache=False)
    m = LlamaModel(cfg)
    return _hf_wrapper(randomize(m), ["last_hidden_state"], ["input_ids", "attention_mask"])


def build_clip_text():
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(0)
    cfg = CLIPTextConfig(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu")
    m = CLIPTextModel(cfg)
    return _hf_wrapper(randomize(m), ["last_hidden_state", "pooler_output"], ["input_ids"])


# ----------------------------------------------------------------------------------------
# diffusers families.

def _unet_wrapper(unet, with_text_time: bool):
    import torch

    class UNetWrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    class UNetXLWrapper(UNetWrapper):
        def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids):
            cond = {"text_embeds": text_embeds, "time_ids": time_ids}
            return self.unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=cond,
                             return_dict=False)[0]

    return (UNetXLWrapper if with_text_time else UNetWrapper)()


def build_unet_sd1():
    import torch
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(4, 8), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, attention_head_dim=2, norm_num_groups=2)
    return _unet_wrapper(randomize(unet), False)


def build_unet_sd2():
    import torch
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(4, 8), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, attention_head_dim=(2, 2), use_linear_projection=True,
        upcast_attention=True, norm_num_groups=2)
    return _unet_wrapper(randomize(unet), False)


def build_unet_sdxl():
    import torch
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(4, 8), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2), cross_attention_dim=8, attention_head_dim=(2, 2),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=8 + 6 * 4, norm_num_groups=2)
    return _unet_wrapper(randomize(unet), True)


def _tiny_vae():
    import torch
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(4, 8),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=2, sample_size=16)
    return randomize(vae)


def build_vae_encoder():
    import torch
    vae = _tiny_vae()

    class Enc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vae = vae

        def forward(self, sample):
            return self.vae.encode(sample).latent_dist.mean

    return Enc()


def build_vae_decoder():
    import torch
    vae = _tiny_vae()

    class Dec(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vae = vae

        def forward(self, latent_sample):
            return self.vae.decode(latent_sample).sample

    return Dec()


# ----------------------------------------------------------------------------------------
# torch-defined CNNs.

def build_resnet():
    import torch
    from torch import nn

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = torch.relu(self.b1(self.c1(x)))
            y = self.b2(self.c2(y))
            return torch.relu(y + (x if self.down is None else self.down(x)))

    class PreAct(nn.Module):
        # ResNet-v2 block: BatchNorm follows an Add, so no exporter can fold it into a Conv.
        def __init__(self, c):
            super().__init__()
            self.bn = nn.BatchNorm2d(c)
            self.conv = nn.Conv2d(c, c, 3, 1, 1)

        def forward(self, x):
            return x + self.conv(torch.relu(self.bn(x)))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
            self.blocks = nn.Sequential(Basic(8, 8, 1), Basic(8, 16, 2), PreAct(16))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(16, 10)

        def forward(self, pixel_values):
            x = self.blocks(self.stem(pixel_values))
            return self.fc(torch.flatten(self.pool(x), 1))

    torch.manual_seed(0)
    return randomize(ResNet())


def build_mobilenet():
    import torch
    from torch import nn

    def cbr(cin, cout, k, s, groups=1):
        return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU6())

    class InvRes(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            mid = cin * expand
            self.use_res = stride == 1 and cin == cout
            self.body = nn.Sequential(cbr(cin, mid, 1, 1), cbr(mid, mid, 3, stride, groups=mid),
                                      nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            return x + self.body(x) if self.use_res else self.body(x)

    class MobileNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(cbr(3, 8, 3, 2), InvRes(8, 8, 1, 1), InvRes(8, 12, 2, 4),
                                          InvRes(12, 12, 1, 4), cbr(12, 32, 1, 1))
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, 10))

        def forward(self, pixel_values):
            x = self.features(pixel_values)
            x = nn.functional.adaptive_avg_pool2d(x, 1).reshape(x.shape[0], -1)
            return self.classifier(x)

    torch.manual_seed(0)
    return randomize(MobileNet())


def build_yolo():
    import torch
    from torch import nn

    class ConvBNSiLU(nn.Module):
        def __init__(self, cin, cout, k=1, s=1):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, k, s, k // 2, bias=False)
            self.bn = nn.BatchNorm2d(cout)
            self.act = nn.SiLU()

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))

    class Bottleneck(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.cv1 = ConvBNSiLU(c, c, 3)
            self.cv2 = ConvBNSiLU(c, c, 3)

        def forward(self, x):
            return x + self.cv2(self.cv1(x))

    class C2f(nn.Module):
        def __init__(self, cin, cout, n=1):
            super().__init__()
            self.c = cout // 2
            self.cv1 = ConvBNSiLU(cin, 2 * self.c)
            self.cv2 = ConvBNSiLU((2 + n) * self.c, cout)
            self.m = nn.ModuleList(Bottleneck(self.c) for _ in range(n))

        def forward(self, x):
            y = list(self.cv1(x).chunk(2, 1))
            y.extend(m(y[-1]) for m in self.m)
            return self.cv2(torch.cat(y, 1))

    class SPPF(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.cv1 = ConvBNSiLU(cin, cin // 2)
            self.cv2 = ConvBNSiLU(cin * 2, cout)
            self.m = nn.MaxPool2d(5, 1, 2)

        def forward(self, x):
            x = self.cv1(x)
            y1 = self.m(x)
            y2 = self.m(y1)
            return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))

    class Yolo(nn.Module):
        def __init__(self, nc=3):
            super().__init__()
            self.nc, self.no = nc, nc + 4
            self.stem = ConvBNSiLU(3, 8, 3, 2)
            self.p3 = nn.Sequential(ConvBNSiLU(8, 16, 3, 2), C2f(16, 16))
            self.p4 = nn.Sequential(ConvBNSiLU(16, 16, 3, 2), C2f(16, 16), SPPF(16, 16))
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.neck = C2f(32, 16)
            self.head3 = nn.Conv2d(16, self.no, 1)
            self.head4 = nn.Conv2d(16, self.no, 1)

        def forward(self, images):
            p3 = self.p3(self.stem(images))
            p4 = self.p4(p3)
            n3 = self.neck(torch.cat((self.up(p4), p3), 1))
            b = images.shape[0]
            out = torch.cat((self.head3(n3).view(b, self.no, -1), self.head4(p4).view(b, self.no, -1)), 2)
            box, cls = out.split((4, self.nc), 1)
            return torch.cat((box, cls.sigmoid()), 1)

    torch.manual_seed(0)
    return randomize(Yolo())


def build_convtranspose_decoder():
    import torch
    from torch import nn

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.ReflectionPad2d(1), nn.Conv2d(8, 16, 3), nn.InstanceNorm2d(16, affine=True), nn.ReLU(),
                nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1),
                nn.InstanceNorm2d(8, affine=True), nn.ReLU(),
                nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1), nn.InstanceNorm2d(8, affine=True), nn.ReLU(),
                nn.ZeroPad2d((1, 2, 0, 1)), nn.Conv2d(8, 4, 3), nn.ReplicationPad2d(2), nn.Conv2d(4, 3, 5),
                nn.Tanh())

        def forward(self, features):
            return self.body(features)

    torch.manual_seed(0)
    return randomize(Decoder())


def _ids(name, shapes, high=99, dyn=True):
    return InputSpec(name, shapes, "int64", "int", 0, high, {0: "batch", 1: "seq"} if dyn else {})


def _mask(name, shapes):
    return InputSpec(name, shapes, "int64", "mask", dynamic={0: "batch", 1: "seq"})


def _img(name, shapes, hw=True):
    return InputSpec(name, shapes, dynamic={0: "batch", 2: "height", 3: "width"} if hw else {0: "batch"})


FAMILIES = [
    Family("bert", build_bert,
           [_ids("input_ids", [[2, 7], [1, 13]]), _mask("attention_mask", [[2, 7], [1, 13]]),
            _ids("token_type_ids", [[2, 7], [1, 13]], high=2)],
           ["last_hidden_state", "pooler_output"]),
    Family("gpt2", build_gpt2, [_ids("input_ids", [[2, 7], [1, 13]]), _mask("attention_mask", [[2, 7], [1, 13]])],
           ["last_hidden_state"]),
    Family("vit", build_vit, [_img("pixel_values", [[1, 3, 32, 32], [2, 3, 32, 32]], hw=False)],
           ["last_hidden_state", "pooler_output"]),
    Family("whisper_encoder", build_whisper_encoder,
           [_img("input_features", [[1, 16, 60], [2, 16, 60]], hw=False)], ["last_hidden_state"],
           note="Whisper requires exactly 2*max_source_positions frames: only the batch is dynamic"),
    Family("llama", build_llama, [_ids("input_ids", [[1, 7], [2, 13]]), _mask("attention_mask", [[1, 7], [2, 13]])],
           ["last_hidden_state"]),
    Family("clip_text", build_clip_text, [_ids("input_ids", [[1, 16], [2, 9]])],
           ["last_hidden_state", "pooler_output"]),
    Family("unet_sd1", build_unet_sd1,
           [InputSpec("sample", [[1, 4, 8, 8], [1, 4, 12, 16]], dynamic={2: "height", 3: "width"}),
            InputSpec("timestep", [[1], [1]], kind="uniform", low=0, high=1000),
            InputSpec("encoder_hidden_states", [[1, 7, 8], [1, 13, 8]], dynamic={1: "seq"})],
           ["out_sample"]),
    Family("unet_sd2", build_unet_sd2,
           [InputSpec("sample", [[1, 4, 8, 8], [1, 4, 12, 16]], dynamic={2: "height", 3: "width"}),
            InputSpec("timestep", [[1], [1]], kind="uniform", low=0, high=1000),
            InputSpec("encoder_hidden_states", [[1, 7, 8], [1, 13, 8]], dynamic={1: "seq"})],
           ["out_sample"]),
    Family("unet_sdxl", build_unet_sdxl,
           [InputSpec("sample", [[1, 4, 8, 8], [1, 4, 12, 16]], dynamic={2: "height", 3: "width"}),
            InputSpec("timestep", [[1], [1]], kind="uniform", low=0, high=1000),
            InputSpec("encoder_hidden_states", [[1, 7, 8], [1, 13, 8]], dynamic={1: "seq"}),
            InputSpec("text_embeds", [[1, 8], [1, 8]]),
            InputSpec("time_ids", [[1, 6], [1, 6]], kind="uniform", low=0, high=1024)],
           ["out_sample"]),
    Family("vae_encoder", build_vae_encoder, [_img("sample", [[1, 3, 16, 16], [1, 3, 24, 16]])], ["latent_mean"]),
    Family("vae_decoder", build_vae_decoder, [_img("latent_sample", [[1, 4, 8, 8], [1, 4, 12, 8]])], ["sample"]),
    Family("resnet", build_resnet, [_img("pixel_values", [[1, 3, 32, 32], [2, 3, 40, 48]])], ["logits"]),
    Family("mobilenet", build_mobilenet, [_img("pixel_values", [[1, 3, 32, 32], [2, 3, 40, 48]])], ["logits"]),
    Family("yolo", build_yolo, [_img("images", [[1, 3, 32, 32], [2, 3, 64, 48]])], ["detections"]),
    Family("convtranspose_decoder", build_convtranspose_decoder,
           [_img("features", [[1, 8, 8, 8], [2, 8, 6, 10]])], ["image"]),
]


# ----------------------------------------------------------------------------------------
# Export.

@contextlib.contextmanager
def _traceable_hf_masks():
    """Make transformers' attention-mask builders traceable by the TorchScript exporter.

    transformers >= 4.5x builds causal/padding masks with torch.vmap, which torch.jit.trace
    cannot record ("unordered_map::at"). Its own fallback for torch < 2.6 builds them with
    plain tensor ops; select that one for the duration of a TorchScript export (exporter
    front-ends such as optimum patch the same way). Restores everything on exit.
    """
    from transformers import masking_utils as mu
    saved = (mu._is_torch_greater_or_equal_than_2_6, mu.sdpa_mask, mu.AttentionMaskInterface._global_mapping["sdpa"])
    mu._is_torch_greater_or_equal_than_2_6 = False
    mu.sdpa_mask = mu.AttentionMaskInterface._global_mapping["sdpa"] = mu.sdpa_mask_older_torch
    try:
        yield
    finally:
        mu._is_torch_greater_or_equal_than_2_6, mu.sdpa_mask, mu.AttentionMaskInterface._global_mapping["sdpa"] = saved


def _strip_metadata(model: onnx.ModelProto) -> None:
    """Drop doc strings and metadata (stack traces, torch node names): half the bytes, no semantics."""
    def strip_graph(g):
        g.doc_string = ""
        del g.metadata_props[:]
        for v in list(g.input) + list(g.output) + list(g.value_info):
            v.doc_string = ""
            del v.metadata_props[:]
        for n in g.node:
            n.doc_string = ""
            del n.metadata_props[:]
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    strip_graph(a.g)
                for sub in a.graphs:
                    strip_graph(sub)
        for t in g.initializer:
            t.doc_string = ""
            del t.metadata_props[:]

    model.doc_string = ""
    del model.metadata_props[:]
    strip_graph(model.graph)


def _shorten_names(model: onnx.ModelProto) -> None:
    """Rename intermediate tensors to ``t<i>`` and drop node names.

    Exporters name every tensor after its module path (``/unet/down_blocks.0/.../Reshape_output_0``),
    which is most of a tiny model's bytes. Graph inputs, outputs and initializers keep their
    names; the graph is otherwise unchanged.
    """
    g = model.graph
    keep = {v.name for v in list(g.input) + list(g.output)} | {t.name for t in g.initializer} | {""}
    new = {}

    def rename(name):
        if name in keep:
            return name
        return new.setdefault(name, f"t{len(new)}")

    def walk(graph):
        for v in list(graph.input) + list(graph.output):
            v.name = rename(v.name)
        for n in graph.node:
            n.name = ""
            n.input[:] = [rename(x) for x in n.input]
            n.output[:] = [rename(x) for x in n.output]
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                for sub in a.graphs:
                    walk(sub)
        for v in graph.value_info:
            v.name = rename(v.name)

    walk(g)


def _export(module, fam: Family, feeds: dict, path: pathlib.Path, dynamo: bool, opset: int) -> list[np.ndarray]:
    """Export ``module`` at the run-0 ``feeds``; returns torch's own outputs for them."""
    import torch
    args = tuple(torch.from_numpy(v) for v in feeds.values())
    module.eval()  # wrappers are new Modules in training mode; exporters restore the mode they find
    with torch.no_grad():
        want = module(*args)
    want = [want] if isinstance(want, torch.Tensor) else list(want)
    names = [s.name for s in fam.inputs]
    log = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        warnings.simplefilter("ignore")
        if dynamo:
            # Keyed by forward's parameter names; the HF wrappers take *args, which gets a tuple.
            dims = [({a: torch.export.Dim.AUTO for a in s.dynamic} or None) for s in fam.inputs]
            params = list(inspect.signature(module.forward).parameters.values())
            if params[0].kind is inspect.Parameter.VAR_POSITIONAL:
                dyn = {params[0].name: tuple(dims)}
            else:
                dyn = {p.name: d for p, d in zip(params, dims)}
            prog = torch.onnx.export(module, args, dynamo=True, opset_version=opset, input_names=names,
                                     output_names=fam.outputs, dynamic_shapes=dyn, external_data=False)
            prog.save(str(path), external_data=False)
        else:
            dyn = {s.name: dict(s.dynamic) for s in fam.inputs if s.dynamic}
            with _traceable_hf_masks():
                torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset, input_names=names,
                                  output_names=fam.outputs, dynamic_axes=dyn, do_constant_folding=True)
    model = onnx.load(str(path))
    _strip_metadata(model)
    _shorten_names(model)
    onnx.save(model, str(path))
    return [w.numpy() for w in want]


def _is_dynamic(model: onnx.ModelProto) -> bool:
    for inp in model.graph.input:
        for d in inp.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                return True
    return False


def _check_runs(path: pathlib.Path, specs: list[dict], seed: int) -> tuple[list[int], str, list]:
    """Runs (by index) onnxruntime accepts with finite outputs, why a run was dropped, run-0 outputs."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ok, why, first = [], "", []
    for run in range(len(specs[0]["shapes"])):
        feeds = draw_inputs(specs, run, seed)
        feeds = {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}}
        try:
            outs = sess.run(None, feeds)
        except Exception as e:  # noqa: BLE001 - any ORT failure just drops the run
            first_line = str(e).splitlines()[0]
            why = (f"dynamic axes were requested, but onnxruntime rejects the size of run {run} "
                   f"(the exporter baked a size into the graph): ...{first_line[-110:]}")
            continue
        if not all(np.isfinite(o).all() for o in outs if o.dtype.kind == "f"):
            why = f"run {run} gives non-finite outputs in onnxruntime"
            continue
        ok.append(run)
        first = first or outs
    return ok, why, first


def op_table(model: onnx.ModelProto) -> list[tuple[str, str, int]]:
    """Sorted (domain, op_type, opset) of every node, including subgraphs and local functions."""
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    found = set()

    def walk(graph_nodes):
        for n in graph_nodes:
            dom = n.domain or "ai.onnx"
            found.add((dom, n.op_type, opsets.get(dom, 0)))
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g.node)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for g in a.graphs:
                        walk(g.node)

    walk(model.graph.node)
    for f in model.functions:
        walk(f.node)
    return sorted(found)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=pathlib.Path)
    ap.add_argument("--only", nargs="*", help="family names to (re)build; others are kept from the manifest")
    ap.add_argument("--coverage", type=pathlib.Path,
                    default=pathlib.Path(__file__).resolve().parent.parent / "docs" / "OP_COVERAGE.md")
    a = ap.parse_args(argv)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = a.out_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if (a.only and manifest_path.exists()) else \
        {"fixtures": {}, "failures": {}}

    for fam in FAMILIES:
        if a.only and fam.name not in a.only:
            continue
        for key in [k for k in list(manifest["fixtures"]) + list(manifest["failures"]) if k.startswith(fam.name + "_")]:
            manifest["fixtures"].pop(key, None)
            manifest["failures"].pop(key, None)
        specs = [vars(s) for s in fam.inputs]
        for exp_name, dynamo, opset in EXPORTS:
            fx = f"{fam.name}_{exp_name}"
            path = a.out_dir / f"{fx}.onnx"
            print(f"[{fx}] exporting ...", flush=True)
            try:
                seed = seed_of(fx)
                want = _export(fam.build(), fam, draw_inputs(specs, 0, seed), path, dynamo, opset)
                model = onnx.load(str(path))
                onnx.checker.check_model(model)
            except Exception as e:  # noqa: BLE001 - an exporter failure is recorded, not fatal
                msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
                print(f"[{fx}] EXPORT FAILED: {msg}", flush=True)
                traceback.print_exc(limit=3, file=sys.stdout)
                manifest["failures"][fx] = msg
                path.unlink(missing_ok=True)
                continue
            graph_inputs = {i.name for i in model.graph.input}
            used = [s for s in specs if s["name"] in graph_inputs]
            runs, why, got = _check_runs(path, used, seed)
            if 0 not in runs:
                manifest["failures"][fx] = f"exported, but onnxruntime cannot run it: {why}"
                print(f"[{fx}] ORT FAILED: {why}", flush=True)
                path.unlink(missing_ok=True)
                continue
            if not _is_dynamic(model):
                runs = [0]
                why = "export has static shapes"
            entry = {
                "file": path.name, "family": fam.name, "exporter": "dynamo" if dynamo else "torchscript",
                "opset": opset, "seed": seed, "runs": runs,
                "inputs": [{k: v for k, v in s.items() if k != "dynamic"} for s in used],
                "outputs": [o.name for o in model.graph.output],
                "ort_vs_torch_max_abs_err": max(float(np.max(np.abs(g - w))) for g, w in zip(got, want)),
            }
            if len(runs) < len(specs[0]["shapes"]):
                entry["single_size_reason"] = why
            if fam.note:
                entry["note"] = fam.note
            manifest["fixtures"][fx] = entry
            print(f"[{fx}] ok: {path.stat().st_size / 1024:.0f} KB, {len(model.graph.node)} nodes, runs {runs}, "
                  f"ORT vs torch {entry['ort_vs_torch_max_abs_err']:.2g}", flush=True)
    manifest["fixtures"] = dict(sorted(manifest["fixtures"].items()))
    manifest["failures"] = dict(sorted(manifest["failures"].items()))
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    union = write_coverage(a.out_dir, manifest, a.coverage)
    print("\nUnion of op types (domain, op, opsets):")
    for (dom, name), versions in union.items():
        print(f"  {dom:10s} {name:28s} {','.join(map(str, sorted(versions)))}")


def write_coverage(out_dir: pathlib.Path, manifest: dict, dest: pathlib.Path) -> dict:
    union: dict[tuple[str, str], set[int]] = {}
    users: dict[tuple[str, str], set[str]] = {}
    per_fixture = []
    for fx, entry in manifest["fixtures"].items():
        table = op_table(onnx.load(str(out_dir / entry["file"]), load_external_data=False))
        per_fixture.append((fx, entry, table))
        for dom, name, ver in table:
            union.setdefault((dom, name), set()).add(ver)
            users.setdefault((dom, name), set()).add(entry["family"])
    union = dict(sorted(union.items()))
    lines = [
        "# ONNX op coverage of the tiny model fixtures",
        "",
        "Generated by `python scripts/make_tiny_models.py tests/fixtures/models`; do not edit by hand.",
        "Each fixture is a tiny seeded random-weight model exported by torch "
        "(TorchScript exporter at opsets 14 and 17, dynamo exporter at opset 18);",
        "`tests/test_models.py` runs each one through onnxstream_py and compares with onnxruntime.",
        "",
        f"## Union of op types ({len(union)})",
        "",
        "| op | domain | opsets | families |",
        "|---|---|---|---|",
    ]
    for (dom, name), versions in union.items():
        lines.append(f"| {name} | {dom} | {', '.join(map(str, sorted(versions)))} | "
                     f"{', '.join(sorted(users[(dom, name)]))} |")
    lines += [
        "",
        "## Notes",
        "",
        "- TorchScript exports of transformers models run with transformers' own non-vmap mask builders "
        "(`sdpa_mask_older_torch`): the default vmap-based ones cannot be traced (`RuntimeError: unordered_map::at`).",
        "- TorchScript traces of GPT-2 and Llama bake the sequence length into the mask code, so those fixtures "
        "run at their export size only; the dynamo exports of the same models are fully dynamic.",
        "- GroupNorm (UNet, VAE) is exported as Reshape + InstanceNormalization + Reshape by both exporters "
        "at these opsets; BatchNormalization after a Conv is folded into the Conv, which is why the ResNet has "
        "a pre-activation block (BatchNormalization after an Add).",
        "",
        "## Exports that failed (exporter problems, not engine bugs)",
        "",
    ]
    if manifest["failures"]:
        lines += [f"- `{fx}`: {msg}" for fx, msg in manifest["failures"].items()]
    else:
        lines.append("None.")
    lines += ["", "## Op types per fixture", ""]
    for fx, entry, table in per_fixture:
        sizes = " / ".join("x".join(map(str, entry["inputs"][0]["shapes"][r])) for r in entry["runs"])
        extra = f"; single size: {entry['single_size_reason']}" if "single_size_reason" in entry else ""
        extra += f"; onnxruntime vs torch max abs error {entry['ort_vs_torch_max_abs_err']:.2g}"
        lines.append(f"### {fx}")
        lines.append("")
        lines.append(f"`{entry['file']}` ({entry['exporter']}, opset {entry['opset']}); "
                     f"first input at {sizes}{extra}.")
        lines.append("")
        lines.append(", ".join(f"{name}" + ("" if dom == "ai.onnx" else f" ({dom})") + f"@{ver}"
                               for dom, name, ver in sorted(table, key=lambda t: (t[1], t[0]))))
        lines.append("")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("\n".join(lines))
    return union


if __name__ == "__main__":
    main()
