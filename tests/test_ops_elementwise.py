"""Elementwise ops against onnxruntime on single-op models: unary math and activations,
broadcasting binary ops at SD/CLIP shapes ([2,320,64,64]+[320,1,1], [2,77,768]+[768]),
the int64 shape arithmetic exporters emit (Add/Mul/Div/Equal/Where on scalars and 1-D),
comparisons, bitwise ops and Cast, in float32 and float16, at awkward sizes (13, 19, 127).

float16 references come from onnxruntime on the same values in float32, rounded to
float16: that is the contract (compute in float32, round once) and it sidesteps ORT's
missing float16 CPU kernels for many unary ops.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from onnx import helper, numpy_helper

from onnxstream_py import ops
from onnxstream_py.dtypes import numpy_to_onnx

from engine_runner import run_model
from op_testing import assert_matches, ort_outputs

RNG = np.random.default_rng(1)


def _model(op_type, inputs: dict, out_dtype, opset: int, consts: dict | None = None, **attrs):
    """One-node graph: ``inputs`` are fed at run time, ``consts`` become initializers.

    The node's inputs are the feeds, then the constants, in dict order; a None value in
    ``consts`` is an omitted optional input.
    """
    consts = consts or {}
    names = list(inputs) + list(consts)
    node = helper.make_node(op_type, names, ["out"], **attrs)
    g_in = [helper.make_tensor_value_info(n, numpy_to_onnx(v.dtype), v.shape) for n, v in inputs.items()]
    g_out = [helper.make_tensor_value_info("out", numpy_to_onnx(out_dtype), None)]
    inits = [numpy_helper.from_array(v, n) for n, v in consts.items() if v is not None]
    node.input[:] = [n if (n in inputs or consts.get(n) is not None) else "" for n in names]
    m = helper.make_model(helper.make_graph([node], "g", g_in, g_out, inits),
                          opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def _ort(model, feeds):
    return ort_outputs(model, feeds)[0]


def _check(got, want, rtol=1e-5, atol=1e-6):
    assert_matches(got, want, rtol, atol, fp16_tol=2e-3, finite_only=True)


def _compare(op_type, inputs: dict, opset=17, consts=None, out_dtype=None, rtol=1e-5, atol=1e-6, **attrs):
    """Run op_type on ``inputs``; float16 feeds are checked against ORT in float32."""
    first = next(iter(inputs.values()))
    out_dtype = np.dtype(out_dtype or first.dtype)
    got = run_model(_model(op_type, inputs, out_dtype, opset, consts, **attrs), inputs)[0]
    if first.dtype == np.float16:
        up = {k: (v.astype(np.float32) if v.dtype == np.float16 else v) for k, v in inputs.items()}
        up_consts = {k: (v.astype(np.float32) if v is not None and v.dtype == np.float16 else v)
                     for k, v in (consts or {}).items()}
        up_out = np.float32 if out_dtype == np.float16 else out_dtype
        want = _ort(_model(op_type, up, up_out, opset, up_consts, **attrs), up)
        if out_dtype == np.float16:
            want = want.astype(np.float16)
    else:
        want = _ort(_model(op_type, inputs, out_dtype, opset, consts, **attrs), inputs)
    _check(got, want, rtol, atol)
    return got


def _x(shape, dtype=np.float32, lo=-3.0, hi=3.0):
    return RNG.uniform(lo, hi, shape).astype(dtype)


# --------------------------------------------------------------------------- unary math
UNARY_DOMAINS = {
    "Abs": (-3, 3), "Neg": (-3, 3), "Reciprocal": (0.2, 4), "Sqrt": (0, 9), "Exp": (-10, 10),
    "Log": (0.01, 100), "Sin": (-6, 6), "Cos": (-6, 6), "Tan": (-1.4, 1.4), "Asin": (-0.99, 0.99),
    "Acos": (-0.99, 0.99), "Atan": (-10, 10), "Sinh": (-5, 5), "Cosh": (-5, 5), "Asinh": (-10, 10),
    "Acosh": (1, 10), "Atanh": (-0.99, 0.99), "Tanh": (-6, 6), "Sigmoid": (-12, 12), "Erf": (-4, 4),
    "Floor": (-5, 5), "Ceil": (-5, 5), "Round": (-5, 5), "Sign": (-2, 2), "Relu": (-3, 3),
    "Softplus": (-20, 20), "Softsign": (-5, 5), "HardSwish": (-5, 5), "Mish": (-10, 10),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("op_type", sorted(UNARY_DOMAINS))
def test_unary(op_type, dtype):
    lo, hi = UNARY_DOMAINS[op_type]
    x = _x((2, 13, 19), dtype, lo, hi)
    if op_type in ("Round", "Floor", "Ceil", "Sign"):
        x.reshape(-1)[:8] = np.array([-2.5, -1.5, -0.5, 0.0, 0.5, 1.5, 2.5, 3.5], dtype)
    opset = 18 if op_type == "Mish" else 17
    _compare(op_type, {"x": x}, opset=opset, rtol=1e-5, atol=2e-6)


def test_round_is_half_to_even_at_opset_11():
    x = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49999997], np.float32)
    np.testing.assert_array_equal(_compare("Round", {"x": x}, opset=11), [-2, -2, -0, 0, 2, 2, 0])


def test_unary_int_ops():
    x = np.array([-7, -1, 0, 3, 127], np.int64)
    for op_type in ("Abs", "Neg", "Sign"):
        _compare(op_type, {"x": x})
    _compare("Relu", {"x": x.astype(np.int32)}, opset=14)


def test_isnan_isinf_not():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -1.5, 3e38], np.float32)
    _compare("IsNaN", {"x": x}, out_dtype=np.bool_, opset=13)
    for neg, pos in [(1, 1), (0, 1), (1, 0)]:
        _compare("IsInf", {"x": x}, out_dtype=np.bool_, opset=10, detect_negative=neg, detect_positive=pos)
    b = RNG.uniform(size=(3, 127)) > 0.5
    _compare("Not", {"x": b})


def test_sigmoid_is_stable_for_large_inputs():
    x = np.array([-1e4, -800, -100, -30, -1e-8, 0, 1e-8, 30, 100, 800, 1e4, np.inf, -np.inf], np.float32)
    impl = ops.lookup("Sigmoid", 17)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = impl.fn(x)
        y64 = impl.fn(x.astype(np.float64))
        y16 = impl.fn(x.astype(np.float16))
    assert not np.isnan(y).any() and not np.isnan(y64).any() and not np.isnan(y16).any()
    np.testing.assert_array_equal(y[[0, 1, -1]], 0)
    np.testing.assert_array_equal(y[[9, 10, 11]], 1)
    np.testing.assert_allclose(y[3], 1 / (1 + np.exp(30.0)), rtol=1e-6)  # tiny, but not flushed to 0
    _compare("Sigmoid", {"x": x[np.isfinite(x)]})


def test_erf_accuracy_against_math_erf():
    import math
    x = np.concatenate([np.linspace(-6, 6, 2001), [1e-30, -1e-7, 0.4999, 0.5, 0.5001]])
    ref = np.array([math.erf(v) for v in x])
    got64 = ops.lookup("Erf", 13).fn(x)
    np.testing.assert_allclose(got64, ref, rtol=1e-10, atol=1e-12)
    got32 = ops.lookup("Erf", 13).fn(x.astype(np.float32))
    ref32 = np.array([math.erf(v) for v in x.astype(np.float32).astype(np.float64)])
    np.testing.assert_allclose(got32, ref32, rtol=3e-7, atol=2e-7)


# --------------------------------------------------------------------------- activations
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("op_type,opset,attrs", [
    ("LeakyRelu", 16, {}), ("LeakyRelu", 16, {"alpha": 0.2}), ("LeakyRelu", 6, {"alpha": 0.1}),
    ("Elu", 6, {}), ("Elu", 6, {"alpha": 0.5}), ("Selu", 6, {}), ("Selu", 6, {"alpha": 2.0, "gamma": 3.0}),
    ("Celu", 12, {}), ("Celu", 12, {"alpha": 2.0}), ("HardSigmoid", 6, {}),
    ("HardSigmoid", 6, {"alpha": 1 / 6, "beta": 0.5}), ("ThresholdedRelu", 10, {"alpha": 0.5}),
    ("Gelu", 20, {}), ("Gelu", 20, {"approximate": "tanh"}),
])
def test_activation(op_type, opset, attrs, dtype):
    x = _x((2, 77, 19), dtype, -6, 6)
    _compare(op_type, {"x": x}, opset=opset, rtol=1e-5, atol=2e-6, **attrs)


@pytest.mark.parametrize("slope_shape", [(1,), (13, 1, 1), (1, 13, 1, 1), ()])
def test_prelu(slope_shape):
    x = _x((2, 13, 7, 19))
    slope = _x(slope_shape, lo=0, hi=0.5)
    _compare("PRelu", {"x": x}, opset=16, consts={"slope": slope})


def test_prelu_opset6_channel_slope():
    # Opset 6: a 1-D slope of size C is per channel, not numpy-broadcast along the last axis.
    x = _x((2, 13, 5, 19))
    slope = _x((13,), lo=0, hi=0.5)
    got = ops.lookup("PRelu", 6).fn(x, slope)
    want = np.where(x < 0, x * slope[:, None, None], x)
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("lo,hi", [(-1.0, 1.0), (None, 6.0), (0.0, None), (None, None), (2.0, -2.0)])
def test_clip_inputs(lo, hi, dtype):
    x = _x((2, 320, 19), dtype, -8, 8)
    consts = {"min": None if lo is None else np.array(lo, dtype),
              "max": None if hi is None else np.array(hi, dtype)}
    _compare("Clip", {"x": x}, opset=13, consts=consts)


def test_clip_attributes_opset6():
    x = _x((3, 127), lo=-8, hi=8)
    _compare("Clip", {"x": x}, opset=6, min=0.0, max=6.0)
    _compare("Clip", {"x": x}, opset=6, max=1.0)


def test_clip_int64():
    x = np.arange(-10, 10, dtype=np.int64)
    _compare("Clip", {"x": x}, opset=13, consts={"min": np.array(-3, np.int64), "max": np.array(4, np.int64)})


# --------------------------------------------------------------------------- binary arithmetic
BROADCASTS = [
    ((2, 320, 64, 64), (320, 1, 1)),      # SD UNet conv bias / time embedding
    ((2, 77, 768), (768,)),               # CLIP bias add
    ((2, 8, 77, 77), (2, 1, 1, 77)),      # attention mask
    ((13, 19), (13, 1)),
    ((127,), ()),
    ((1,), (3, 1, 5)),                    # output bigger than the first input
]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("a_shape,b_shape", BROADCASTS)
def test_arith_broadcast(op_type, a_shape, b_shape, dtype):
    if a_shape == (2, 320, 64, 64) and (dtype == np.float16 or op_type in ("Sub", "Div")):
        pytest.skip("the big SD shape once per dtype/op family is enough")
    a = _x(a_shape, dtype)
    b = _x(b_shape, dtype, 0.5, 2.0)
    _compare(op_type, {"a": a, "b": b}, opset=14)


@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_int_shape_arithmetic(op_type, dtype):
    # Exporter shape math: scalar (x) scalar, 1-D (x) scalar, with negative operands.
    a1 = np.array([2, 77, 768, -7, 7, -8, 0], dtype)
    b0 = np.array(12, dtype)
    _compare(op_type, {"a": a1, "b": b0}, opset=14)
    _compare(op_type, {"a": np.array(768, dtype), "b": np.array(-5, dtype)}, opset=14)
    _compare(op_type, {"a": a1, "b": np.array([3, -3, 4, 2, -2, 3, 1], dtype)}, opset=14)


def test_int_div_truncates_toward_zero():
    a = np.array([7, -7, 7, -7, 6, -6, 0], np.int64)
    b = np.array([2, 2, -2, -2, 4, 4, 3], np.int64)
    np.testing.assert_array_equal(_compare("Div", {"a": a, "b": b}, opset=14), [3, -3, -3, 3, 1, -1, 0])


def test_legacy_broadcast_axis_opset6():
    a = _x((2, 3, 4, 5))
    b = _x((3, 4))
    got = ops.lookup("Add", 6).fn(a, b, broadcast=1, axis=1)
    np.testing.assert_allclose(got, a + b[:, :, None], rtol=1e-6)
    with pytest.raises(ValueError, match="Add"):
        ops.lookup("Add", 6).fn(a, b)


@pytest.mark.parametrize("base_dtype,exp_dtype,exp", [
    (np.float32, np.float32, 2.0), (np.float32, np.float32, 0.5), (np.float32, np.int64, 3),
    (np.float32, np.float32, None), (np.float16, np.float16, 2.0), (np.int64, np.int64, 2),
    (np.int32, np.float32, 2.0),
])
def test_pow(base_dtype, exp_dtype, exp):
    lo = 0.1 if exp is None or exp == 0.5 else -3
    a = _x((2, 77, 19), np.float32, lo, 3).astype(base_dtype)
    b = _x((19,), exp_dtype, -2, 2) if exp is None else np.array(exp, exp_dtype)
    _compare("Pow", {"a": a}, opset=15, consts={"b": b}, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmod", [0, 1])
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.float32])
def test_mod(fmod, dtype):
    if dtype == np.float32 and fmod == 0:
        pytest.skip("ONNX requires fmod=1 for floats")
    a = np.array([-7, 7, -7, 7, 5, -4, 0, 13], dtype)
    b = np.array([3, -3, -3, 3, 5, 3, 2, 19], dtype)
    if dtype == np.float32:
        a = a * np.float32(1.25)
    _compare("Mod", {"a": a, "b": b}, opset=13, fmod=fmod)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int64])
@pytest.mark.parametrize("op_type", ["Max", "Min", "Sum", "Mean"])
def test_variadic(op_type, dtype):
    if dtype == np.int64 and op_type in ("Sum", "Mean"):
        pytest.skip("ORT implements Sum/Mean for floats only")
    feeds = {"a": _x((2, 13, 19), dtype), "b": _x((19,), dtype), "c": _x((13, 1), dtype)}
    _compare(op_type, feeds, opset=13)
    _compare(op_type, {"a": feeds["a"]}, opset=13)


# --------------------------------------------------------------------------- compare / logic / Where
@pytest.mark.parametrize("op_type", ["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"])
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.int32])
def test_compare(op_type, dtype):
    a = RNG.integers(-3, 3, (2, 13, 19)).astype(dtype)
    b = RNG.integers(-3, 3, (19,)).astype(dtype)
    _compare(op_type, {"a": a, "b": b}, opset=16, out_dtype=np.bool_)
    # int64 scalar vs 1-D, as in shape checks
    _compare(op_type, {"a": np.array([1, 77, 768], dtype), "b": np.array(77, dtype)}, opset=16, out_dtype=np.bool_)


@pytest.mark.parametrize("op_type", ["And", "Or", "Xor"])
def test_logic(op_type):
    a = RNG.uniform(size=(3, 13, 19)) > 0.5
    b = RNG.uniform(size=(13, 1)) > 0.5
    _compare(op_type, {"a": a, "b": b}, opset=7)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int64])
def test_where_attention_mask(dtype):
    # GPT-2 / Llama causal mask: Where(bool[1,1,77,77], scores[2,12,77,77], scalar min)
    cond = np.tril(np.ones((77, 77), np.bool_))[None, None]
    x = _x((2, 12, 77, 77), dtype)
    fill = np.array(-np.inf if dtype != np.int64 else -1, dtype)
    _compare("Where", {"c": cond, "x": x, "y": fill}, opset=16, out_dtype=dtype)


def test_where_int64_shape_select():
    cond = np.array([True, False, True])
    x = np.array([2, 77, 768], np.int64)
    y = np.array(1, np.int64)
    _compare("Where", {"c": cond, "x": x, "y": y}, opset=9, out_dtype=np.int64)
    _compare("Where", {"c": np.array(False), "x": np.array(5, np.int64), "y": np.array(7, np.int64)}, opset=16,
             out_dtype=np.int64)


# --------------------------------------------------------------------------- bitwise
@pytest.mark.parametrize("dtype", [np.uint8, np.uint32, np.uint64])
@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
def test_bitshift(direction, dtype):
    x = np.array([16, 4, 1, 255, 0], dtype)
    y = np.array([1, 2, 3, 0, 5], dtype)
    _compare("BitShift", {"x": x, "y": y}, opset=11, direction=direction)


@pytest.mark.parametrize("op_type", ["BitwiseAnd", "BitwiseOr", "BitwiseXor"])
@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.int64])
def test_bitwise(op_type, dtype):
    a = RNG.integers(0, 127, (13, 19)).astype(dtype)
    b = RNG.integers(0, 127, (19,)).astype(dtype)
    _compare(op_type, {"a": a, "b": b}, opset=18)


def test_bitwise_not():
    for dtype in (np.int32, np.uint8, np.int64):
        _compare("BitwiseNot", {"x": RNG.integers(-5, 100, (3, 19)).astype(dtype) if dtype != np.uint8
                                else RNG.integers(0, 255, (3, 19)).astype(dtype)}, opset=18)


# --------------------------------------------------------------------------- Cast
CASTS = [
    (np.float32, np.float16), (np.float16, np.float32), (np.float32, np.int64), (np.float32, np.int32),
    (np.float32, np.bool_), (np.bool_, np.float32), (np.int64, np.int32), (np.int64, np.float32),
    (np.int32, np.int64), (np.float32, np.float64), (np.float64, np.float32), (np.int64, np.bool_),
    (np.bool_, np.int64), (np.float32, np.uint8), (np.float16, np.int64),
]


def _cast_input(src):
    x = np.array([-2.7, -1.5, -0.5, 0.0, 0.3, 1.5, 2.5, 7.9, 100.2], np.float64)
    if np.dtype(src) == np.bool_:
        return x > 0
    if np.dtype(src).kind in "iu":
        return np.round(x).astype(src)
    return x.astype(src)


@pytest.mark.parametrize("opset", [6, 13, 19, 21])
@pytest.mark.parametrize("src,dst", CASTS)
def test_cast(src, dst, opset):
    x = _cast_input(src)
    if np.dtype(dst) == np.uint8:
        x = np.abs(x)
    model = _model("Cast", {"x": x}, np.dtype(dst), opset, to=numpy_to_onnx(dst))
    got = run_model(model, {"x": x})[0]
    _check(got, _ort(model, {"x": x}))


def test_cast_opset1_string_target():
    x = np.array([-1.7, 2.5], np.float32)
    got = ops.lookup("Cast", 1).fn(x, to="INT64")
    assert got.dtype == np.int64 and got.tolist() == [-1, 2]


@pytest.mark.parametrize("src,dst", CASTS[:8])
def test_castlike(src, dst):
    x = _cast_input(src)
    like = np.zeros((2,), dst)
    model = _model("CastLike", {"x": x}, np.dtype(dst), 21, consts={"like": like})
    got = run_model(model, {"x": x})[0]
    _check(got, _ort(model, {"x": x}))


def test_cast_unsupported_target_names_the_op():
    with pytest.raises(TypeError, match="Cast"):
        ops.lookup("Cast", 21).fn(np.zeros(3, np.float32), to=16)  # bfloat16


# --------------------------------------------------------------------------- contract checks
def test_inputs_are_never_modified_and_outputs_are_arrays():
    a = _x((3, 19))
    b = _x((19,), lo=0.5, hi=2)
    a0, b0 = a.copy(), b.copy()
    for name, args, kw in [
        ("Relu", (a,), {}), ("LeakyRelu", (a,), {}), ("Sigmoid", (a,), {}), ("Elu", (a,), {}),
        ("Gelu", (a,), {}), ("Softsign", (a,), {}), ("HardSwish", (a,), {}), ("Clip", (a, None, b[:1]), {}),
        ("PRelu", (a, b), {}), ("Add", (a, b), {}), ("Div", (a, b), {}), ("Max", (a, b), {}),
        ("Mean", (a, b), {}), ("Erf", (a,), {}), ("Cast", (a,), {"to": 1}), ("Where", (a > 0, a, b), {}),
    ]:
        impl = ops.lookup(name, 22)
        out = impl.fn(*args, **kw)
        assert isinstance(out, np.ndarray), name
        assert out is not a, name
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)
    # 0-d inputs give 0-d ndarrays, never numpy scalars
    s = np.array(2.0, np.float32)
    for name in ("Exp", "Neg", "Sigmoid", "Relu"):
        out = ops.lookup(name, 22).fn(s)
        assert isinstance(out, np.ndarray) and out.shape == () and out.dtype == np.float32, name
    out = ops.lookup("Add", 22).fn(np.array(3, np.int64), np.array(4, np.int64))
    assert isinstance(out, np.ndarray) and out.dtype == np.int64


def test_mismatched_dtypes_and_shapes_raise_named_errors():
    with pytest.raises(TypeError, match="Add"):
        ops.lookup("Add", 14).fn(np.zeros(3, np.float32), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=r"Mul.*\(3,\).*\(4,\)"):
        ops.lookup("Mul", 14).fn(np.zeros(3, np.float32), np.zeros(4, np.float32))


@pytest.mark.parametrize("op_name", ["Sigmoid", "Erf"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "strided"])
def test_blockwise_ops_honour_any_layout_and_donated_buffers(op_name, layout):
    """Composite formulas run block by block over flat views: a channels-last or strided input,
    and a donated output buffer of any layout, must still receive every element (regression:
    a non-contiguous donated buffer was written through a reshaped copy and left unchanged)."""
    from onnxstream_py.ops import elementwise as ew
    rng = np.random.default_rng(3)
    base = rng.standard_normal((1, 24, 37, 41)).astype(np.float32)   # > one block of 32768
    if layout == "nhwc":
        x = np.ascontiguousarray(base.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    elif layout == "strided":
        x = base[:, :, :, ::2]
    else:
        x = base
    ref = getattr(ew, op_name)(np.ascontiguousarray(x))
    fn = getattr(ew, op_name)
    y = fn(x)
    np.testing.assert_array_equal(y, ref)
    if layout == "nhwc":
        assert not y.flags.c_contiguous and y.transpose(0, 2, 3, 1).flags.c_contiguous   # layout kept
    for donated in (x.copy(order="K"), np.ascontiguousarray(x),
                    np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)):
        out = fn(donated.copy(order="K"), _out=donated)
        assert out is donated
        np.testing.assert_array_equal(out, ref)
