"""Conv, ConvTranspose and pooling against onnxruntime, at scaled-down SD UNet/VAE shapes and
at the awkward ones real exports produce (Cin 13/19, 127-tall kernels, stride-2 downsampling,
MobileNet depthwise + Clip, Whisper's 1-D stem, decoder ConvTranspose), float16 included;
plus tile-boundary checks with a tiny chunk budget and tracemalloc bounds on the scratch.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from onnx import helper, numpy_helper

from onnxstream_py.dtypes import numpy_to_onnx
from onnxstream_py.ops import conv as conv_mod
from onnxstream_py.ops.conv import conv_nd

from engine_runner import run_model
from op_testing import assert_matches, ort_outputs

RNG = np.random.default_rng(0)


def _model(nodes, inputs: dict, initializers: dict, opset: int = 17, out_dtype=None):
    g_in = [helper.make_tensor_value_info(n, numpy_to_onnx(v.dtype), v.shape) for n, v in inputs.items()]
    dt = numpy_to_onnx(out_dtype or next(iter(inputs.values())).dtype)
    outs = [o for o in nodes[-1].output if o]
    g_out = [helper.make_tensor_value_info(o, dt if i == 0 else 7, None) for i, o in enumerate(outs)]
    inits = [numpy_helper.from_array(v, n) for n, v in initializers.items()]
    m = helper.make_model(helper.make_graph(nodes, "g", g_in, g_out, inits),
                          opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def _compare(model, feeds, rtol=1e-4, atol=1e-4):
    want = ort_outputs(model, feeds)
    got = run_model(model, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert_matches(g, w, rtol, atol)


def _conv_case(x_shape, w_shape, bias=True, dtype=np.float32, op="Conv", post=None, **attrs):
    x = RNG.standard_normal(x_shape).astype(dtype)
    fan_in = int(np.prod(w_shape[1:]))
    w = (RNG.standard_normal(w_shape) / np.sqrt(fan_in)).astype(dtype)
    inits = {"w": w}
    names = ["x", "w"]
    if bias:
        cout = w_shape[0] if op == "Conv" else w_shape[1] * attrs.get("group", 1)
        inits["b"] = RNG.standard_normal(cout).astype(dtype)
        names.append("b")
    nodes = [helper.make_node(op, names, ["y" if post is None else "t"], **attrs)]
    if post is not None:
        nodes.append(post)
    return _model(nodes, {"x": x}, inits), {"x": x}


# --------------------------------------------------------------------------- Conv
CONV_CASES = {
    # name: (x shape, w shape, attrs)
    "unet_3x3": ((1, 32, 16, 16), (32, 32, 3, 3), dict(pads=[1, 1, 1, 1])),
    "unet_3x3_batch2_widen": ((2, 64, 8, 8), (96, 64, 3, 3), dict(pads=[1, 1, 1, 1], kernel_shape=[3, 3])),
    "unet_down_s2_p1": ((1, 32, 17, 17), (32, 32, 3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 2])),
    "unet_1x1_proj": ((1, 48, 12, 12), (32, 48, 1, 1), dict()),
    "resnet_1x1_s2": ((2, 19, 13, 13), (13, 19, 1, 1), dict(strides=[2, 2])),
    "resnet_stem_7x7_s2": ((1, 3, 37, 37), (16, 3, 7, 7), dict(pads=[3, 3, 3, 3], strides=[2, 2])),
    "cin13_cout19": ((1, 13, 19, 23), (19, 13, 3, 3), dict(pads=[1, 1, 1, 1])),
    "tall_127x3": ((1, 2, 131, 7), (5, 2, 127, 3), dict(pads=[1, 0, 2, 1])),
    "asym_pads_dil2": ((1, 8, 15, 14), (6, 8, 3, 3), dict(pads=[0, 2, 1, 3], dilations=[2, 2])),
    "same_upper_s2": ((1, 8, 15, 14), (6, 8, 3, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    "same_lower_4x4": ((1, 8, 9, 10), (6, 8, 4, 4), dict(auto_pad="SAME_LOWER")),
    "valid_s3": ((1, 8, 16, 17), (6, 8, 3, 2), dict(auto_pad="VALID", strides=[3, 2])),
    "grouped_4": ((2, 16, 9, 9), (24, 4, 3, 3), dict(group=4, pads=[1, 1, 1, 1])),
    "depthwise_mult2": ((1, 8, 9, 9), (16, 1, 3, 3), dict(group=8, pads=[1, 1, 1, 1])),
    "whisper_1d_stem": ((1, 80, 300), (64, 80, 3), dict(pads=[1, 1])),
    "whisper_1d_s2": ((1, 64, 301), (64, 64, 3), dict(pads=[1, 1], strides=[2])),
    "conv1d_k127": ((1, 3, 200), (4, 3, 127), dict(pads=[63, 63])),
    "conv3d": ((1, 4, 5, 6, 7), (5, 4, 3, 3, 3), dict(pads=[1, 1, 1, 1, 1, 1], strides=[1, 2, 1])),
}


@pytest.mark.parametrize("name", list(CONV_CASES))
def test_conv(name):
    xs, ws, attrs = CONV_CASES[name]
    _compare(*_conv_case(xs, ws, **attrs))


def test_conv_without_bias():
    _compare(*_conv_case((1, 19, 11, 13), (13, 19, 3, 3), bias=False, pads=[1, 1, 1, 1]))


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_mobilenet_with_clip(stride):
    clip = helper.make_node("Clip", ["t", "lo", "hi"], ["y"])
    model, feeds = _conv_case((2, 32, 15, 15), (32, 1, 3, 3), group=32, pads=[1, 1, 1, 1], strides=[stride] * 2,
                              post=clip)
    model.graph.initializer.extend([numpy_helper.from_array(np.array(0, np.float32), "lo"),
                                    numpy_helper.from_array(np.array(6, np.float32), "hi")])
    _compare(model, feeds)


@pytest.mark.parametrize("name", ["unet_3x3", "unet_down_s2_p1", "unet_1x1_proj", "depthwise_mult2"])
def test_conv_float16(name):
    xs, ws, attrs = CONV_CASES[name]
    _compare(*_conv_case(xs, ws, dtype=np.float16, **attrs))


def test_depthwise_float16():
    _compare(*_conv_case((1, 24, 13, 13), (24, 1, 5, 5), dtype=np.float16, group=24, pads=[2, 2, 2, 2]))


@pytest.mark.parametrize("name", ["unet_3x3", "tall_127x3", "asym_pads_dil2", "grouped_4", "whisper_1d_s2",
                                  "conv3d", "unet_1x1_proj"])
def test_conv_tiny_chunks_match(name, monkeypatch):
    """A 4 KiB budget forces one-row tiles, so every tile boundary and padded edge is hit."""
    xs, ws, attrs = CONV_CASES[name]
    model, feeds = _conv_case(xs, ws, **attrs)
    monkeypatch.setattr(conv_mod, "CHUNK_BYTES", 4096)
    _compare(model, feeds)


def _conv_ref64(x, w, b, strides, pads, groups=1):
    """float64 direct-loop 2-D conv: the readable twin of conv_nd (small sizes only)."""
    n, cin, h, wd = x.shape
    cout, cig, kh, kw = w.shape
    xp = np.zeros((n, cin, h + pads[0] + pads[2], wd + pads[1] + pads[3]))
    xp[:, :, pads[0]:pads[0] + h, pads[1]:pads[1] + wd] = x
    oh = (xp.shape[2] - kh) // strides[0] + 1
    ow = (xp.shape[3] - kw) // strides[1] + 1
    y = np.zeros((n, cout, oh, ow))
    cog = cout // groups
    for o in range(cout):
        g = o // cog
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, g * cig:(g + 1) * cig, i:i + strides[0] * oh:strides[0], j:j + strides[1] * ow:strides[1]]
                y[:, o] += np.einsum("nchw,c->nhw", patch, w[o, :, i, j].astype(np.float64))
        if b is not None:
            y[:, o] += b[o]
    return y


def test_mixed_fp16_weight_fp32_activation():
    x = RNG.standard_normal((1, 19, 13, 11)).astype(np.float32)
    w16 = (RNG.standard_normal((13, 19, 3, 3)) * 0.2).astype(np.float16)
    b = RNG.standard_normal(13).astype(np.float32)
    y = conv_nd(x, w16, b, [2, 1], [1, 1, 1, 0], None, 1)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, _conv_ref64(x, w16, b, [2, 1], [1, 1, 1, 0]), rtol=1e-5, atol=1e-5)
    # fp16 activation with fp32 weight: output follows the activation.
    y16 = conv_nd(x.astype(np.float16), w16.astype(np.float32), b, [1, 1], [1, 1, 1, 1], None, 1)
    assert y16.dtype == np.float16
    ref = _conv_ref64(x.astype(np.float16), w16, b, [1, 1], [1, 1, 1, 1])
    np.testing.assert_allclose(y16.astype(np.float32), ref, rtol=5e-3, atol=5e-3)


def test_mixed_weight_tiny_chunks(monkeypatch):
    """Weight cast in several output-channel blocks and fp16 output through the fp32 scratch."""
    monkeypatch.setattr(conv_mod, "CHUNK_BYTES", 2048)
    x = RNG.standard_normal((1, 13, 9, 10)).astype(np.float16)
    w = (RNG.standard_normal((19, 13, 3, 3)) * 0.2).astype(np.float16)
    y = conv_nd(x, w, None, None, [1, 1, 1, 1], None, 1)
    ref = _conv_ref64(x, w, None, [1, 1], [1, 1, 1, 1])
    np.testing.assert_allclose(y.astype(np.float32), ref, rtol=5e-3, atol=5e-3)


@pytest.mark.parametrize("groups", [1, 2])
def test_weight_slicing_into_output_view(groups):
    """conv_nd on output-channel slices of the weight, written into views of one output."""
    x = RNG.standard_normal((2, 8, 10, 9)).astype(np.float32)
    w = RNG.standard_normal((12, 8 // groups, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(12).astype(np.float32)
    full = conv_nd(x, w, b, None, [1, 1, 1, 1], None, groups)
    y = np.empty_like(full)
    if groups == 1:
        for c0 in range(0, 12, 5):
            conv_nd(x, w[c0:c0 + 5], b[c0:c0 + 5], None, [1, 1, 1, 1], None, 1, out=y[:, c0:c0 + 5])
    else:
        for g in range(2):
            conv_nd(x[:, g * 4:(g + 1) * 4], w[g * 6:(g + 1) * 6], b[g * 6:(g + 1) * 6], None, [1, 1, 1, 1], None, 1,
                    out=y[:, g * 6:(g + 1) * 6])
    np.testing.assert_allclose(y, full, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(full, _conv_ref64(x, w, b, [1, 1], [1, 1, 1, 1], groups), rtol=1e-4, atol=1e-4)


def test_conv_error_names_op_and_shapes():
    with pytest.raises(ValueError, match="Conv.*weight"):
        conv_nd(np.zeros((1, 4, 5, 5), np.float32), np.zeros((3, 3, 3, 3), np.float32))


# --------------------------------------------------------------------------- scratch bounds
def _peak_extra(fn):
    tracemalloc.start()
    try:
        res = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return res, peak


@pytest.mark.parametrize("k,stride", [(3, 1), (3, 2), (1, 1)])
def test_conv_scratch_is_bounded(k, stride):
    x = RNG.standard_normal((1, 64, 256, 256), dtype=np.float32)
    w = (RNG.standard_normal((64, 64, k, k), dtype=np.float32) * 0.05)
    pad = k // 2
    y, peak = _peak_extra(lambda: conv_nd(x, w, None, [stride] * 2, [pad] * 4, None, 1))
    bound = y.nbytes + w.nbytes + 2 * conv_mod.CHUNK_BYTES
    assert peak < bound, f"peak {peak / 2**20:.1f} MiB >= {bound / 2**20:.1f} MiB"
    if k == 1:
        assert peak < y.nbytes + (1 << 20)  # pointwise: a single matmul on views, no im2col
    # spot-check a few output pixels against a direct dot product
    xp = np.pad(x[0], ((0, 0), (pad, pad), (pad, pad)))
    for (i, j) in [(0, 0), (5, 17), (y.shape[2] - 1, y.shape[3] - 1)]:
        want = np.einsum("chw,ochw->o", xp[:, i * stride:i * stride + k, j * stride:j * stride + k], w)
        np.testing.assert_allclose(y[0, :, i, j], want, rtol=1e-4, atol=1e-4)


def test_depthwise_scratch_is_bounded():
    x = RNG.standard_normal((1, 64, 256, 256), dtype=np.float32)
    w = RNG.standard_normal((64, 1, 3, 3), dtype=np.float32)
    y, peak = _peak_extra(lambda: conv_nd(x, w, None, None, [1] * 4, None, 64))
    assert peak < y.nbytes + 2 * conv_mod.CHUNK_BYTES


def test_fp16_conv_scratch_is_bounded():
    x = RNG.standard_normal((1, 64, 128, 128)).astype(np.float16)
    w = (RNG.standard_normal((128, 64, 3, 3)) * 0.05).astype(np.float16)
    y, peak = _peak_extra(lambda: conv_nd(x, w, None, None, [1] * 4, None, 1))
    assert y.dtype == np.float16
    assert peak < y.nbytes + 3 * conv_mod.CHUNK_BYTES


# --------------------------------------------------------------------------- ConvTranspose
CONVT_CASES = {
    "decoder_k4_s2_p1": ((1, 16, 8, 8), (16, 8, 4, 4), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    "k3_s2_outpad": ((2, 13, 7, 6), (13, 19, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])),
    "groups_2_dil": ((1, 8, 5, 6), (8, 3, 3, 3), dict(group=2, dilations=[2, 1])),
    "output_shape": ((1, 4, 5, 5), (4, 6, 3, 3), dict(strides=[3, 2], output_shape=[16, 12])),
    "same_upper": ((1, 4, 5, 6), (4, 6, 3, 3), dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    "1d_s4": ((1, 6, 11), (6, 5, 8), dict(strides=[4], pads=[2, 2])),
    "3d": ((1, 3, 3, 4, 4), (3, 2, 2, 3, 3), dict(strides=[2, 1, 2])),
}


@pytest.mark.parametrize("name", list(CONVT_CASES))
def test_conv_transpose(name):
    xs, ws, attrs = CONVT_CASES[name]
    _compare(*_conv_case(xs, ws, op="ConvTranspose", **attrs))


def test_conv_transpose_tiny_chunks_and_fp16(monkeypatch):
    xs, ws, attrs = CONVT_CASES["k3_s2_outpad"]
    monkeypatch.setattr(conv_mod, "CHUNK_BYTES", 2048)
    _compare(*_conv_case(xs, ws, **attrs, op="ConvTranspose"))
    _compare(*_conv_case(xs, ws, **attrs, op="ConvTranspose", dtype=np.float16))


# --------------------------------------------------------------------------- pooling
def _pool_case(op, x_shape, dtype=np.float32, n_out=1, opset=19, **attrs):
    x = (RNG.standard_normal(x_shape) * 10).astype(dtype)
    outs = ["y", "i"][:n_out]
    return _model([helper.make_node(op, ["x"], outs, **attrs)], {"x": x}, {}, opset=opset), {"x": x}


POOL_CASES = {
    "resnet_maxpool": ("MaxPool", (2, 8, 19, 19), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "maxpool_ceil_dil": ("MaxPool", (1, 3, 13, 14), dict(kernel_shape=[3, 2], strides=[2, 3], dilations=[2, 1],
                                                         ceil_mode=1)),
    "maxpool_same_upper": ("MaxPool", (1, 3, 13, 14), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")),
    "maxpool_1d": ("MaxPool", (2, 5, 127), dict(kernel_shape=[4], strides=[3], pads=[1, 2])),
    "maxpool_3d": ("MaxPool", (1, 2, 5, 6, 7), dict(kernel_shape=[2, 3, 2], strides=[2, 1, 2])),
    "avgpool_pad_exclude": ("AveragePool", (1, 4, 13, 13), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
    "avgpool_pad_include": ("AveragePool", (1, 4, 13, 13), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                                                count_include_pad=1)),
    "avgpool_ceil_s2": ("AveragePool", (1, 4, 13, 14), dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
    "avgpool_ceil_include": ("AveragePool", (1, 4, 13, 14), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1,
                                                                 pads=[1, 1, 1, 1], count_include_pad=1)),
    "avgpool_same_lower": ("AveragePool", (1, 4, 13, 14), dict(kernel_shape=[4, 3], auto_pad="SAME_LOWER")),
    "lppool_p2": ("LpPool", (1, 4, 13, 14), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "lppool_p3": ("LpPool", (1, 4, 12, 12), dict(kernel_shape=[2, 2], strides=[2, 2], p=3)),
    "global_avg": ("GlobalAveragePool", (2, 19, 7, 13), dict()),
    "global_max": ("GlobalMaxPool", (2, 19, 7, 13), dict()),
    "global_lp": ("GlobalLpPool", (2, 19, 7, 13), dict(p=2)),
}


@pytest.mark.parametrize("name", list(POOL_CASES))
def test_pool(name):
    op, xs, attrs = POOL_CASES[name]
    _compare(*_pool_case(op, xs, **attrs), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", ["resnet_maxpool", "avgpool_pad_exclude", "global_avg"])
def test_pool_float16(name):
    op, xs, attrs = POOL_CASES[name]
    _compare(*_pool_case(op, xs, dtype=np.float16, **attrs))


def test_maxpool_uint8():
    _compare(*_pool_case("MaxPool", (1, 3, 9, 9), dtype=np.uint8, kernel_shape=[2, 2], strides=[2, 2]))


@pytest.mark.parametrize("storage_order", [0, 1])
def test_maxpool_indices(storage_order):
    _compare(*_pool_case("MaxPool", (2, 3, 9, 11), n_out=2, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                         storage_order=storage_order))
