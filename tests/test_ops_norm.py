"""Normalisation ops against onnxruntime, at the shapes real exports use (SD UNet/VAE
GroupNorm, CLIP/BERT LayerNorm, ResNet BatchNorm, Llama RMSNorm), with awkward channel
counts (13, 19) and float16; plus a tracemalloc check that GroupNorm/InstanceNorm on a
large tensor allocate little beyond their output.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from onnx import helper, numpy_helper

from onnxstream_py import ops
from onnxstream_py.dtypes import numpy_to_onnx

from engine_runner import run_model
from op_testing import assert_matches, ort_outputs

RNG = np.random.default_rng(0)


def _model(nodes, inputs: dict, outputs: list, opset: int, initializers: dict | None = None):
    """Graph whose inputs are fed at run time and whose ``initializers`` are weights."""
    g_in = [helper.make_tensor_value_info(n, numpy_to_onnx(v.dtype), v.shape) for n, v in inputs.items()]
    # Outputs are the first input's dtype unless given as (name, dtype).
    first = numpy_to_onnx(next(iter(inputs.values())).dtype)
    g_out = [helper.make_tensor_value_info(o, first, None) if isinstance(o, str)
             else helper.make_tensor_value_info(o[0], numpy_to_onnx(o[1]), None) for o in outputs]
    inits = [numpy_helper.from_array(v, n) for n, v in (initializers or {}).items()]
    m = helper.make_model(helper.make_graph(nodes, "g", g_in, g_out, inits),
                          opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def _compare(model, feeds, rtol=1e-5, atol=1e-5):
    want = ort_outputs(model, feeds)
    got = run_model(model, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert_matches(g, w, rtol, atol, fp16_tol=2e-3)


def _act(shape, dtype=np.float32, offset=0.0, spread=1.0):
    return (RNG.standard_normal(shape) * spread + offset).astype(dtype)


# --------------------------------------------------------------------------- GroupNorm
@pytest.mark.parametrize("shape,groups", [((2, 64, 16, 16), 32), ((1, 19, 9, 13), 19), ((2, 38, 5, 7), 19),
                                          ((1, 13, 17, 3), 1)])
def test_groupnorm_as_torch_exports_it(shape, groups):
    # Reshape [N, G, -1] -> InstanceNormalization(ones, zeros) -> Reshape -> Mul gamma -> Add beta
    n, c = shape[:2]
    x = _act(shape, offset=3.0, spread=2.0)
    inits = {
        "shape_g": np.array([n, groups, -1], np.int64), "shape_x": np.array(shape, np.int64),
        "ones": np.ones(groups, np.float32), "zeros": np.zeros(groups, np.float32),
        "gamma": _act((c, 1, 1)), "beta": _act((c, 1, 1)),
    }
    nodes = [
        helper.make_node("Reshape", ["x", "shape_g"], ["xg"]),
        helper.make_node("InstanceNormalization", ["xg", "ones", "zeros"], ["ng"], epsilon=1e-5),
        helper.make_node("Reshape", ["ng", "shape_x"], ["nx"]),
        helper.make_node("Mul", ["nx", "gamma"], ["sx"]),
        helper.make_node("Add", ["sx", "beta"], ["y"]),
    ]
    _compare(_model(nodes, {"x": x}, ["y"], 17, inits), {"x": x})


@pytest.mark.parametrize("opset", [18, 21])
@pytest.mark.parametrize("shape,groups", [((2, 32, 8, 8), 8), ((1, 19, 5, 5), 19), ((2, 26, 3, 7), 13)])
def test_groupnormalization_op(opset, shape, groups):
    c = shape[1]
    pshape = (groups,) if opset == 18 else (c,)
    x = _act(shape, offset=-2.0)
    inits = {"scale": _act(pshape), "bias": _act(pshape)}
    node = helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["y"], num_groups=groups, epsilon=1e-5)
    _compare(_model([node], {"x": x}, ["y"], opset, inits), {"x": x})


def test_groupnorm_accuracy_on_large_image_with_offset():
    # float32 statistics over 4 * 128 * 128 elements with a mean far from zero, checked
    # against float64 numpy: onnxruntime's own GroupNormalization kernel is off by ~1e-3
    # here (one-pass variance), ours by ~3e-6.
    x = _act((1, 8, 128, 128), offset=20.0, spread=0.5)
    scale, bias = _act((8,)), _act((8,))
    node = helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["y"], num_groups=2)
    got = run_model(_model([node], {"x": x}, ["y"], 21, {"scale": scale, "bias": bias}), {"x": x})[0]
    xg = x.astype(np.float64).reshape(1, 2, -1)
    want = (xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + 1e-5)
    want = want.reshape(x.shape) * scale[:, None, None] + bias[:, None, None]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_instancenorm_fp16():
    x = _act((2, 19, 11, 13), np.float16, offset=1.0)
    inits = {"s": _act((19,), np.float16), "b": _act((19,), np.float16)}
    node = helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"])
    _compare(_model([node], {"x": x}, ["y"], 17, inits), {"x": x})


# --------------------------------------------------------------------------- LayerNorm / RMSNorm
@pytest.mark.parametrize("shape,axis", [((2, 77, 768), -1), ((1, 197, 19), -1), ((2, 13, 4, 5), 1),
                                        ((3, 127), 0)])
def test_layernorm(shape, axis):
    x = _act(shape, offset=0.5)
    norm_shape = shape[axis:]
    inits = {"w": _act(norm_shape), "b": _act(norm_shape)}
    node = helper.make_node("LayerNormalization", ["x", "w", "b"], ["y", "mean", "invstd"], axis=axis,
                            epsilon=1e-5)
    _compare(_model([node], {"x": x}, ["y", "mean", "invstd"], 17, inits), {"x": x}, atol=2e-5)


def test_layernorm_no_bias_single_output():
    x = _act((2, 77, 768))
    node = helper.make_node("LayerNormalization", ["x", "w"], ["y"], epsilon=1e-6)
    _compare(_model([node], {"x": x}, ["y"], 17, {"w": _act((768,))}), {"x": x}, atol=2e-5)


def test_layernorm_fp16():
    x = _act((2, 77, 768), np.float16)
    inits = {"w": _act((768,), np.float16), "b": _act((768,), np.float16)}
    node = helper.make_node("LayerNormalization", ["x", "w", "b"], ["y", "mean", "invstd"])
    _compare(_model([node], {"x": x}, ["y", ("mean", np.float32), ("invstd", np.float32)], 17, inits),
             {"x": x})


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_rmsnorm(dtype):
    x = _act((2, 19, 128), dtype)
    node = helper.make_node("RMSNormalization", ["x", "w"], ["y"], epsilon=1e-6)
    _compare(_model([node], {"x": x}, ["y"], 23, {"w": _act((128,), dtype)}), {"x": x})


# --------------------------------------------------------------------------- BatchNorm
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape", [(2, 19, 7, 7), (1, 64, 28, 28), (3, 13)])
def test_batchnorm_inference(shape, dtype):
    c = shape[1]
    x = _act(shape, dtype)
    inits = {"s": _act((c,), dtype), "b": _act((c,), dtype), "m": _act((c,), dtype),
             "v": (RNG.random(c) + 0.5).astype(dtype)}
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-5)
    _compare(_model([node], {"x": x}, ["y"], 15, inits), {"x": x})


def test_batchnorm_training_mode_matches_formula():
    # onnxruntime's CPU provider has no training kernel; check against the formula.
    x = _act((3, 5, 4, 4), offset=1.0)
    s, b, m, v = _act((5,)), _act((5,)), _act((5,)), RNG.random(5).astype(np.float32) + 0.5
    y, rm, rv = ops.lookup("BatchNormalization", 15).fn(x, s, b, m, v, epsilon=1e-5, momentum=0.9,
                                                         training_mode=1)
    bm, bv = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    want = (x - bm[:, None, None]) / np.sqrt(bv[:, None, None] + 1e-5) * s[:, None, None] + b[:, None, None]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rm, m * 0.9 + bm * 0.1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, v * 0.9 + bv * 0.1, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- Lp / MVN
@pytest.mark.parametrize("p,axis", [(2, -1), (1, 1), (2, 0)])
def test_lpnormalization(p, axis):
    x = _act((4, 19, 13))
    x[1, :, 3] = 0  # some zero-norm rows
    node = helper.make_node("LpNormalization", ["x"], ["y"], p=p, axis=axis)
    sess_model = _model([node], {"x": x}, ["y"], 17)
    got = run_model(sess_model, {"x": x})[0]
    norm = np.linalg.norm(x, ord=p, axis=axis, keepdims=True)
    want = np.divide(x, norm, out=np.zeros_like(x), where=norm != 0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("axes", [[0, 2, 3], [2, 3], [1]])
def test_meanvariancenormalization(axes):
    x = _act((2, 13, 5, 7), offset=2.0)
    node = helper.make_node("MeanVarianceNormalization", ["x"], ["y"], axes=axes)
    _compare(_model([node], {"x": x}, ["y"], 13), {"x": x})


# --------------------------------------------------------------------------- block tiling
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_tiny_blocks_match_float64(monkeypatch, dtype):
    # Blocks of 7 elements split rows and columns with ragged tails: the tiled statistics
    # and the tiled affine pass must agree with a plain float64 computation.
    from onnxstream_py.ops import norm
    monkeypatch.setattr(norm, "_BLOCK", 7)
    x = _act((2, 6, 5, 3), dtype, offset=4.0)
    s, b = _act((6,)), _act((6,))
    x64 = x.astype(np.float64)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=2e-3, atol=2e-3)

    xg = x64.reshape(2, 3, -1)
    want = ((xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + 1e-5)).reshape(x.shape)
    want = want * s[:, None, None] + b[:, None, None]
    got = ops.lookup("GroupNormalization", 21).fn(x, s, b, num_groups=3)
    assert got.dtype == dtype
    np.testing.assert_allclose(got.astype(np.float64), want, **tol)

    w = _act((5, 3))
    xl = x64.reshape(12, 15)
    mean, var = xl.mean(1, keepdims=True), xl.var(1, keepdims=True)
    want = ((xl - mean) / np.sqrt(var + 1e-5)).reshape(x.shape) * w
    y, m, inv = ops.lookup("LayerNormalization", 17).fn(x, w, axis=2)
    np.testing.assert_allclose(y.astype(np.float64), want, **tol)
    np.testing.assert_allclose(m.reshape(-1), mean.reshape(-1), rtol=1e-5)
    np.testing.assert_allclose(inv.reshape(-1), 1 / np.sqrt(var.reshape(-1) + 1e-5), rtol=1e-5)

    want = (xl / np.sqrt((xl ** 2).mean(1, keepdims=True) + 1e-5)).reshape(x.shape) * w
    got = ops.lookup("RMSNormalization", 23).fn(x, w, axis=2)
    np.testing.assert_allclose(got.astype(np.float64), want, **tol)


def test_strided_input():
    x = _act((2, 8, 6, 10))[:, :, :, ::2]
    s, b = _act((8,)), _act((8,))
    got = ops.lookup("InstanceNormalization", 17).fn(x, s, b)
    xc = x.astype(np.float64)
    want = (xc - xc.mean((2, 3), keepdims=True)) / np.sqrt(xc.var((2, 3), keepdims=True) + 1e-5)
    np.testing.assert_allclose(got, want * s[:, None, None] + b[:, None, None], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- memory
@pytest.mark.parametrize("which", ["GroupNormalization", "InstanceNormalization"])
def test_large_norm_allocates_about_one_output(which):
    x = np.ones((1, 32, 256, 256), np.float32)
    x[:, :, ::2] = 3.0
    if which == "GroupNormalization":
        fn = ops.lookup(which, 21).fn
        args, kw = (x, np.ones(32, np.float32), np.zeros(32, np.float32)), {"num_groups": 8}
    else:
        fn = ops.lookup(which, 17).fn
        args, kw = (x, np.ones(32, np.float32), np.zeros(32, np.float32)), {}
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        y = fn(*args, **kw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 1.2 * y.nbytes, f"{which}: peak {peak / 2**20:.1f} MiB for a {y.nbytes / 2**20:.1f} MiB output"
    np.testing.assert_allclose(y[0, 0, :2, :2], [[1, 1], [-1, -1]], atol=1e-5)
