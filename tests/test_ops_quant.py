"""QuantizeLinear / DequantizeLinear against onnx's ReferenceEvaluator, through the whole engine.

Swept inputs: exact ties (x / scale = k + 0.5, which round half to even), values beyond the
target's range (saturation), per-tensor / per-axis / blocked scales, zero points at both ends,
every integer target the engine supports, opsets 10 to 23. Bad inputs (scale shape, axis,
unsupported types) must raise an OpError naming the node.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxstream_py.dtypes import numpy_to_onnx
from onnxstream_py.errors import OpError

from engine_runner import run_model


def _model(op_type, x, scale, zp, opset, out_elem, **attrs):
    inits = [numpy_helper.from_array(scale, "s")]
    names = ["x", "s"]
    if zp is not None:
        inits.append(numpy_helper.from_array(zp, "zp"))
        names.append("zp")
    node = helper.make_node(op_type, names, ["y"], name="qnode", **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", numpy_to_onnx(x.dtype), x.shape)],
                          [helper.make_tensor_value_info("y", out_elem, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _sweep(shape, scale, seed=0):
    """Values on exact .5 ties, around zero, and far beyond int8/int16 range."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    ties = (rng.integers(-300, 300, n) + 0.5).astype(np.float32)
    wide = rng.standard_normal(n).astype(np.float32) * 400
    x = np.where(rng.random(n) < 0.5, ties, wide).astype(np.float32).reshape(shape)
    return x * scale


def _check(model, feeds, backend):
    ref = model
    if model.opset_import[0].version < 19:      # the reference evaluator has DequantizeLinear from 19 on,
        ref = onnx.ModelProto()                  # and its integer semantics did not change since 10
        ref.CopyFrom(model)
        ref.opset_import[0].version = 19
    want = ReferenceEvaluator(ref).run(None, feeds)[0]
    got = run_model(model, feeds, backend=backend)[0]
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("qtype", [np.int8, np.uint8, np.int16, np.uint16])
@pytest.mark.parametrize("opset", [10, 13, 19, 21, 23])
def test_quantize_per_tensor(qtype, opset, backend):
    info = np.iinfo(qtype)
    if opset < 21 and qtype not in (np.int8, np.uint8):
        pytest.skip("16/32-bit quantized types arrived in opset 21")
    for zp_val in (0, info.min, info.max, int(info.min // 2 + info.max // 2)):
        x = _sweep((2, 13, 19), np.float32(0.25))
        zp = np.array(zp_val, dtype=qtype)
        _check(_model("QuantizeLinear", x, np.array(0.25, np.float32), zp, opset, numpy_to_onnx(np.dtype(qtype))),
               {"x": x}, backend)


@pytest.mark.parametrize("opset", [13, 19, 21, 23])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_quantize_dequantize_per_axis(opset, axis, backend):
    x = _sweep((3, 13, 19), np.float32(1.0), seed=2)
    n = x.shape[axis]
    scale = np.linspace(0.05, 2.0, n).astype(np.float32)
    zp = np.random.default_rng(3).integers(-20, 20, n).astype(np.int8)
    x = x * scale.reshape([-1 if i == axis % 3 else 1 for i in range(3)])
    _check(_model("QuantizeLinear", x, scale, zp, opset, TensorProto.INT8, axis=axis), {"x": x}, backend)
    q = np.random.default_rng(4).integers(-128, 128, x.shape).astype(np.int8)
    _check(_model("DequantizeLinear", q, scale, zp, opset, TensorProto.FLOAT, axis=axis), {"x": q}, backend)


@pytest.mark.parametrize("block", [2, 4, 5])
def test_quantize_dequantize_blocked(block, backend):
    x = _sweep((3, 13), np.float32(0.5), seed=5)
    nb = -(-13 // block)
    scale = np.random.default_rng(6).uniform(0.1, 1.0, (3, nb)).astype(np.float32)
    zp = np.random.default_rng(7).integers(0, 255, (3, nb)).astype(np.uint8)
    _check(_model("QuantizeLinear", x, scale, zp, 21, TensorProto.UINT8, axis=1, block_size=block),
           {"x": x}, backend)
    q = np.random.default_rng(8).integers(0, 256, x.shape).astype(np.uint8)
    _check(_model("DequantizeLinear", q, scale, zp, 21, TensorProto.FLOAT, axis=1, block_size=block),
           {"x": q}, backend)


@pytest.mark.parametrize("qtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32])
def test_dequantize_types(qtype, backend):
    info = np.iinfo(qtype)
    lo, hi = max(info.min, -(1 << 20)), min(info.max, 1 << 20)
    q = np.random.default_rng(9).integers(lo, hi, (2, 127), endpoint=True).astype(qtype)
    q.flat[:2] = (info.min, info.max)
    for zp in (None, np.array(hi // 3, qtype)):
        _check(_model("DequantizeLinear", q, np.array(0.037, np.float32), zp, 21, TensorProto.FLOAT), {"x": q}, backend)


def test_quantize_output_dtype_and_float16_scale(backend):
    x = _sweep((13,), np.float32(0.5)).astype(np.float16)
    m = _model("QuantizeLinear", x, np.array(0.5, np.float16), None, 21, TensorProto.INT16,
               output_dtype=TensorProto.INT16)
    _check(m, {"x": x}, backend)
    q = np.arange(-6, 7, dtype=np.int8)
    _check(_model("DequantizeLinear", q, np.array(0.5, np.float16), None, 21, TensorProto.FLOAT16), {"x": q}, backend)


@pytest.mark.parametrize("case", ["scale_shape", "axis", "blocked_shape", "zp_dtype"])
def test_bad_input_names_the_node(case, backend):
    x = np.ones((2, 13), np.float32)
    q = np.ones((2, 13), np.int8)
    if case == "scale_shape":
        m, feeds = _model("DequantizeLinear", q, np.ones(5, np.float32), None, 13, TensorProto.FLOAT, axis=1), {"x": q}
    elif case == "axis":
        m, feeds = _model("QuantizeLinear", x, np.ones(2, np.float32), np.zeros(2, np.int8), 13,
                          TensorProto.INT8, axis=3), {"x": x}
    elif case == "blocked_shape":
        m, feeds = _model("DequantizeLinear", q, np.ones((2, 3), np.float32), None, 21, TensorProto.FLOAT,
                          axis=1, block_size=4), {"x": q}
    else:
        m, feeds = _model("DequantizeLinear", q, np.ones(1, np.float32), np.zeros(1, np.uint8), 13,
                          TensorProto.FLOAT), {"x": q}
    with pytest.raises(Exception) as e:
        run_model(m, feeds, backend=backend)
    err = e.value
    while not isinstance(err, OpError) and err.__cause__ is not None:
        err = err.__cause__
    assert isinstance(err, OpError) or "qnode" in str(e.value) or "Quantize" in str(e.value), e.value
    assert "qnode" in str(err) or "Quantize" in str(err)


# ---------------------------------------------------------------- native kernel vs its numpy twin

@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
@pytest.mark.parametrize("shape,axis", [((13,), 0), ((127, 19), 1), ((19, 13, 3, 3), 0), ((3, 127, 70), 1),
                                        ((2, 13, 1), 2), ((5, 7, 13), 1), ((300, 259), 0), ((300, 259), 1)])
def test_native_dequantize_matches_twin(dtype, shape, axis, ctx):
    from onnxstream_py import native
    from onnxstream_py.ops.quant import dequantize
    rng = np.random.default_rng(sum(shape) + axis)
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    x.flat[:2] = (info.min, info.max)
    scale = rng.uniform(1e-3, 1.0, shape[axis]).astype(np.float32)
    zp = rng.integers(info.min, info.max, shape[axis], endpoint=True).astype(dtype)
    for s, z in ((scale, None), (scale, zp), (scale[:1], zp[:1]), (np.float32(0.5), None)):
        got = native.dequantize_8bit_f32(x, s, z, axis, pool=ctx.pool)
        np.testing.assert_array_equal(got, dequantize(x, s, z, axis))   # same float32 operations


@pytest.mark.parametrize("case", ["scale_len", "axis", "zp_dtype", "x_dtype", "strided"])
def test_native_dequantize_bad_input(case, ctx):
    from onnxstream_py import native
    x = np.zeros((4, 13), np.int8)
    args = dict(x=x, scale=np.ones(13, np.float32), zero_point=None, axis=1)
    if case == "scale_len":
        args["scale"] = np.ones(4, np.float32)
    elif case == "axis":
        args["axis"] = 2
    elif case == "zp_dtype":
        args["zero_point"] = np.zeros(13, np.uint8)
    elif case == "x_dtype":
        args["x"] = x.astype(np.int16)
    else:
        args["x"] = np.zeros((13, 4), np.int8).T
    with pytest.raises(ValueError, match="DequantizeLinear"):
        native.dequantize_8bit_f32(args["x"], args["scale"], args["zero_point"], args["axis"], pool=ctx.pool)
