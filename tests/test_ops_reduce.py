"""Reductions, ArgMax/ArgMin, CumSum and the Softmax family against onnxruntime, at the
shapes real exports use (LayerNorm-style ReduceMean over [2,77,768], GroupNorm-style
statistics over spatial axes, attention softmax over [2,8,77,77]) plus awkward sizes
(13, 19, 127), in float32 and float16; axes as attribute (opset 13) and as input (18);
a tracemalloc check that Softmax allocates little beyond its output.
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

RNG = np.random.default_rng(2)

REDUCE_OPS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"]


def _model(op_type, x: np.ndarray, out_dtype, opset: int, consts: dict | None = None, **attrs):
    consts = consts or {}
    names = ["x"] + [n if v is not None else "" for n, v in consts.items()]
    node = helper.make_node(op_type, names, ["out"], **attrs)
    g_in = [helper.make_tensor_value_info("x", numpy_to_onnx(x.dtype), x.shape)]
    g_out = [helper.make_tensor_value_info("out", numpy_to_onnx(out_dtype), None)]
    inits = [numpy_helper.from_array(v, n) for n, v in consts.items() if v is not None]
    m = helper.make_model(helper.make_graph([node], "g", g_in, g_out, inits),
                          opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def _ort(model, feeds):
    return ort_outputs(model, feeds)[0]


def _compare(op_type, x, opset, consts=None, out_dtype=None, rtol=1e-5, atol=1e-6, **attrs):
    """float16 x is checked against ORT on the same values in float32, rounded to float16."""
    out_dtype = np.dtype(out_dtype or x.dtype)
    got = run_model(_model(op_type, x, out_dtype, opset, consts, **attrs), {"x": x})[0]
    if x.dtype == np.float16:
        x32 = x.astype(np.float32)
        o32 = np.float32 if out_dtype == np.float16 else out_dtype
        want = _ort(_model(op_type, x32, o32, opset, consts, **attrs), {"x": x32}).astype(out_dtype)
    else:
        want = _ort(_model(op_type, x, out_dtype, opset, consts, **attrs), {"x": x})
    assert_matches(got, want, rtol, atol, fp16_tol=2e-3, finite_only=True)
    return got


def _x(shape, dtype=np.float32, lo=-2.0, hi=2.0):
    return RNG.uniform(lo, hi, shape).astype(dtype)


def _positive_if_needed(op_type, x):
    # LogSum needs a positive sum; Prod over many elements needs values near 1.
    if op_type == "ReduceLogSum":
        return np.abs(x) + x.dtype.type(0.1)
    if op_type == "ReduceProd":
        return (x * x.dtype.type(0.1) + x.dtype.type(1)).astype(x.dtype)
    return x


# --------------------------------------------------------------------------- Reduce*
AXES_CASES = [
    ((2, 77, 768), [-1], 1),          # LayerNorm mean/var
    ((2, 32, 13, 19), [2, 3], 1),     # GroupNorm statistics
    ((2, 13, 19), [0, 2], 0),
    ((127,), [0], 0),
    ((3, 13, 19), None, 0),           # all axes
    ((3, 13, 19), None, 1),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape,axes,keepdims", AXES_CASES)
@pytest.mark.parametrize("op_type", REDUCE_OPS)
def test_reduce_axes_attribute_opset13(op_type, shape, axes, keepdims, dtype):
    x = _positive_if_needed(op_type, _x(shape, dtype))
    attrs = {"keepdims": keepdims}
    consts = None
    if op_type == "ReduceSum":      # axes became an input at opset 13 for ReduceSum only
        consts = {"axes": None if axes is None else np.array(axes, np.int64)}
    elif axes is not None:
        attrs["axes"] = axes
    _compare(op_type, x, 13, consts, rtol=2e-5, atol=1e-5, **attrs)


@pytest.mark.parametrize("shape,axes,keepdims", AXES_CASES)
@pytest.mark.parametrize("op_type", REDUCE_OPS)
def test_reduce_axes_input_opset18(op_type, shape, axes, keepdims):
    x = _positive_if_needed(op_type, _x(shape))
    consts = {"axes": None if axes is None else np.array(axes, np.int64)}
    _compare(op_type, x, 18, consts, rtol=2e-5, atol=1e-5, keepdims=keepdims)


@pytest.mark.parametrize("op_type", REDUCE_OPS)
def test_reduce_noop_with_empty_axes(op_type):
    x = _positive_if_needed(op_type, _x((3, 19)))
    # Reducing over no axes keeps every element as its own set: x for Sum/Mean/Max/Min/Prod,
    # |x| for L1/L2, x^2 for SumSquare, log x for LogSum (onnxruntime agrees).
    got = _compare(op_type, x, 18, {"axes": np.array([], np.int64)}, noop_with_empty_axes=1)
    if op_type in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd"):
        np.testing.assert_array_equal(got, x)
    _compare(op_type, x, 18, {"axes": np.array([], np.int64)}, noop_with_empty_axes=0, rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("op_type,identity", [
    ("ReduceSum", 0.0), ("ReduceProd", 1.0), ("ReduceMax", -np.inf), ("ReduceMin", np.inf),
    ("ReduceL1", 0.0), ("ReduceL2", 0.0), ("ReduceSumSquare", 0.0), ("ReduceLogSum", -np.inf),
    ("ReduceLogSumExp", -np.inf),
])
def test_reduce_empty_set(op_type, identity):
    x = np.zeros((2, 0, 4), np.float32)
    got = ops.lookup(op_type, 18).fn(x, np.array([1], np.int64), keepdims=1)
    assert got.shape == (2, 1, 4) and got.dtype == np.float32
    np.testing.assert_array_equal(got, np.full((2, 1, 4), identity, np.float32))


@pytest.mark.parametrize("op_type", ["ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd"])
@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_reduce_int(op_type, dtype):
    x = RNG.integers(-4, 5, (3, 13, 5)).astype(dtype)
    _compare(op_type, x, 18, {"axes": np.array([1], np.int64)}, keepdims=0)


def test_reduce_opset1_and_opset11_attribute_versions():
    x = _x((2, 13, 19))
    for opset in (1, 11):
        got = ops.lookup("ReduceMean", opset).fn(x, axes=[1], keepdims=0)
        np.testing.assert_allclose(got, x.mean(axis=1), rtol=1e-6)
        got = ops.lookup("ReduceSum", opset).fn(x, axes=[-1])
        np.testing.assert_allclose(got, x.sum(axis=-1, keepdims=True), rtol=1e-5)


def test_reduce_bad_axis_names_the_op():
    with pytest.raises(ValueError, match="ReduceMean"):
        ops.lookup("ReduceMean", 18).fn(_x((2, 3)), np.array([2], np.int64))


def test_reduce_logsumexp_is_stable():
    x = np.array([[1000.0, 1000.0], [-1000.0, -1000.0], [-np.inf, -np.inf]], np.float32)
    got = ops.lookup("ReduceLogSumExp", 18).fn(x, np.array([1], np.int64), keepdims=0)
    np.testing.assert_allclose(got, [1000 + np.log(2), -1000 + np.log(2), -np.inf], rtol=1e-6)


# --------------------------------------------------------------------------- ArgMax / ArgMin
@pytest.mark.parametrize("op_type", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("axis,keepdims,last", [(0, 1, 0), (1, 0, 0), (-1, 1, 1), (2, 0, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_argmax_argmin(op_type, axis, keepdims, last, dtype):
    x = RNG.integers(-3, 3, (4, 13, 19)).astype(dtype)   # many ties, so select_last_index matters
    _compare(op_type, x, 13, out_dtype=np.int64, axis=axis, keepdims=keepdims, select_last_index=last)


def test_argmax_logits_fp16():
    x = _x((2, 127, 513), np.float16, -20, 20)     # GPT-2 / Whisper logits, awkward vocab
    _compare("ArgMax", x, 13, out_dtype=np.int64, axis=-1, keepdims=0)


# --------------------------------------------------------------------------- CumSum
@pytest.mark.parametrize("exclusive,reverse", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("axis", [0, -1, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.int32])
def test_cumsum(axis, exclusive, reverse, dtype):
    x = RNG.integers(-5, 6, (3, 13, 19)).astype(dtype)
    _compare("CumSum", x, 14, {"axis": np.array(axis, np.int64)}, exclusive=exclusive, reverse=reverse)


def test_cumsum_position_ids_from_attention_mask():
    # HF exporters: position_ids = CumSum(attention_mask, axis=1) - 1
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], np.int64)
    got = _compare("CumSum", mask, 11, {"axis": np.array([1], np.int32)})
    np.testing.assert_array_equal(got, np.cumsum(mask, axis=1))


# --------------------------------------------------------------------------- Softmax family
SOFTMAX_SHAPES = [
    ((2, 8, 77, 77), -1),     # attention probabilities
    ((2, 13, 19), 1),
    ((3, 127), 0),
    ((4, 5, 6), -2),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape,axis", SOFTMAX_SHAPES)
@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax", "Hardmax"])
def test_softmax_opset13(op_type, shape, axis, dtype):
    x = _x(shape, dtype, -10, 10)
    _compare(op_type, x, 13, axis=axis, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("opset", [1, 11])
@pytest.mark.parametrize("shape,axis", [((2, 3, 4, 5), 1), ((2, 3, 4, 5), 2), ((2, 3, 4, 5), -1), ((13, 19), 0),
                                        ((2, 3, 4), None)])
@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax", "Hardmax"])
def test_softmax_coerce_2d(op_type, shape, axis, opset):
    if opset == 1 and axis is not None and axis < 0:
        pytest.skip("negative axis arrived in opset 11")
    x = _x(shape, np.float32, -10, 10)
    attrs = {} if axis is None else {"axis": axis}
    _compare(op_type, x, opset, rtol=1e-5, atol=1e-6, **attrs)


def test_softmax_masked_rows_and_huge_logits():
    x = np.array([[0.0, -np.inf, 1.0, -np.inf], [1e30, 1e30, -1e30, 0.0], [80, 90, 100, 110]], np.float32)
    got = _compare("Softmax", x, 13)
    assert np.isfinite(got).all()
    _compare("LogSoftmax", x[1:], 13)


def test_softmax_allocates_little_beyond_its_output():
    x = _x((2, 8, 256, 256))               # 4 MiB
    impl = ops.lookup("Softmax", 13)
    tracemalloc.start()
    try:
        y = impl.fn(x, axis=-1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.2 * y.nbytes, (peak, y.nbytes)
    np.testing.assert_allclose(y.sum(-1), 1, rtol=1e-5)


def test_softmax_bad_axis_names_the_op():
    with pytest.raises(ValueError, match="Softmax"):
        ops.lookup("Softmax", 13).fn(_x((2, 3)), axis=2)
