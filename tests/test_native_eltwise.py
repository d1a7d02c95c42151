"""XNNPACK elementwise, pooling and bilinear-resize wrappers (native.xnn_*) and the native ops
on them (ops/native_eltwise.py) against their numpy twins.

Twins: numpy ufuncs and the numpy ops (ops/elementwise.py, pool.py, resize.py), on seeded
inputs with sizes that hit SIMD tails (13, 19, 127, 4099), broadcasting in every position,
0-d and 1-d operands, channels-last inputs and donated outputs. Exact ops (add, min, abs,
floor, max pooling, ...) must match bit for bit on normal numbers; Sigmoid, Softmax, average
pooling and Resize within float32 rounding. The ops' size rules are lowered to 0 where a
test needs the XNNPACK path on small tensors (a spy records which path ran). Then the ONNX
backend node cases of these ops on the native backend with every rule at 0, and the error
paths: bad input is a Python exception, never a crash.
"""
from __future__ import annotations

import numpy as np
import pytest

import onnxstream_py
from onnxstream_py import native, ops
from onnxstream_py.layout import is_nhwc
from onnxstream_py.native_context import NativeContext
from onnxstream_py.ops import elementwise, pool, reduce, resize

from engine_runner import run_model
from test_onnx_backend import CASES, EXCLUDED, _array

ops.load_native()
from onnxstream_py.ops import native_eltwise as ne  # noqa: E402  (registered by load_native)

RULES = ("MIN_ELEMENTS_SIGMOID", "MIN_ELEMENTS_SQRT", "MIN_ELEMENTS_CLIP", "MIN_ELEMENTS_F16",
         "MIN_ELEMENTS_RESIZE", "MIN_ELEMENTS_F32_MEMORY_BOUND")


@pytest.fixture(scope="module")
def ctx():
    c = NativeContext(onnxstream_py.RunOptions(threads=2))
    yield c
    c.close()


@pytest.fixture
def always_xnnpack(monkeypatch):
    """Every size rule at 0: the ops take XNNPACK wherever it is correct."""
    for name in RULES:
        monkeypatch.setattr(ne, name, 0)


@pytest.fixture
def spy(monkeypatch):
    """Counts calls of the native.xnn_* wrappers the ops make."""
    calls = []
    for name in ("xnn_binary", "xnn_unary", "xnn_max_pool2d", "xnn_avg_pool2d_f32", "xnn_resize_bilinear2d"):
        real = getattr(native, name)

        def wrapped(*a, _real=real, _name=name, **k):
            calls.append(_name)
            return _real(*a, **k)
        monkeypatch.setattr(native, name, wrapped)
    return calls


def _rand(shape, seed=0, dtype=np.float32, loc=0.0):
    return np.asarray(np.random.default_rng(seed).standard_normal(shape) * 3 + loc, dtype=dtype)


def _channels_last(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


F16_OK = ne._dtype_ok(np.dtype(np.float16), True)
needs_f16 = pytest.mark.skipif(not F16_OK, reason="XNNPACK float16 kernels need F16C or ARMv8.2 FP16")

# --------------------------------------------------------------------------- binary wrapper
NUMPY_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide,
                "Min": np.minimum, "Max": np.maximum}
# Broadcasting in every position: equal shapes, trailing vector, leading/middle/trailing
# unit dims on either side, both sides broadcast, 0-d and 1-d operands, rank 6.
BROADCASTS = [((13,), (13,)), ((19, 127), (127,)), ((127,), (19, 127)), ((19, 1), (1, 127)),
              ((), (13, 19)), ((4099,), ()), ((1,), (4099,)), ((2, 13, 1, 19), (13, 7, 1)),
              ((2, 1, 19, 127), (2, 13, 1, 1)), ((3, 1, 5, 1, 7, 1), (1, 4, 1, 6, 1, 8)), ((1, 1, 1), (3, 1, 1))]


@pytest.mark.parametrize("shapes", BROADCASTS, ids=str)
@pytest.mark.parametrize("name", list(NUMPY_BINARY))
def test_binary_wrapper_matches_numpy(name, shapes):
    a = _rand(shapes[0], 1)
    b = _rand(shapes[1], 2, loc=0.5)
    got = native.xnn_binary(name, a, b)
    want = NUMPY_BINARY[name](a, b)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=0)


def test_binary_wrapper_on_pool_in_place_and_ieee_specials():
    pool = native.ThreadPool(2)
    a = _rand((19, 4099), 3)
    b = _rand((4099,), 4)
    want = a + b
    y = native.xnn_binary("Add", a, b, a, pool=pool)   # in place into A
    assert y is a
    np.testing.assert_array_equal(y, want)
    # Infinities and division by zero where ONNX's result has no NaN (NaN results come out
    # as -inf: the ops keep such inputs away, test_binary_ops_fall_back_where_nan_could_arise)
    x = np.array([1, -1, np.inf, -np.inf, 2, 3, 0, -5] * 3, np.float32)
    z = np.array([0, 0, 3, 2, np.inf, -np.inf, 1, 7] * 3, np.float32)
    with np.errstate(all="ignore"):
        for name in NUMPY_BINARY:
            np.testing.assert_array_equal(native.xnn_binary(name, x, z, pool=pool), NUMPY_BINARY[name](x, z))
    pool.close()


@needs_f16
@pytest.mark.parametrize("name", ["Add", "Mul"])
def test_binary_wrapper_float16_is_bit_exact(name):
    a = _rand((13, 127), 5, np.float16)
    b = _rand((127,), 6, np.float16)
    np.testing.assert_array_equal(native.xnn_binary(name, a, b), NUMPY_BINARY[name](a, b))


def test_binary_wrapper_rejects_bad_input():
    a, b = _rand((4, 5), 1), _rand((5,), 2)
    with pytest.raises(ValueError, match="unknown binary op"):
        native.xnn_binary("Pow", a, b)
    with pytest.raises(ValueError, match="C-contiguous"):
        native.xnn_binary("Add", a.T, b)
    with pytest.raises(ValueError, match="C-contiguous"):
        native.xnn_binary("Add", a.astype(np.float64), b)
    with pytest.raises(ValueError, match="C-contiguous"):
        native.xnn_binary("Sub", a.astype(np.float16), b.astype(np.float16))   # no f16 subtract
    with pytest.raises(ValueError, match="C-contiguous"):
        native.xnn_binary("Add", [1.0], b)
    with pytest.raises(ValueError, match="one dtype"):
        native.xnn_binary("Add", a, b.astype(np.float16))
    with pytest.raises(ValueError, match="do not broadcast"):
        native.xnn_binary("Add", a, _rand((4,), 3))
    with pytest.raises(ValueError, match="rank above 6"):
        native.xnn_binary("Add", np.ones((1,) * 7, np.float32), b)
    with pytest.raises(ValueError, match="out must be"):
        native.xnn_binary("Add", a, b, np.empty((5, 4), np.float32))
    with pytest.raises(ValueError, match="out must be"):
        native.xnn_binary("Add", a, b, np.empty((5, 4), np.float32).T)   # not C-contiguous
    big = np.zeros(40, np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        native.xnn_binary("Add", big[:20].reshape(4, 5), b, big[1:21].reshape(4, 5))
    assert native.xnn_binary("Add", np.ones((0, 5), np.float32), b).shape == (0, 5)


def test_overlap_is_checked_on_the_callers_arrays_wherever_they_sit():
    """An input ending in a page's last 16 bytes is handed to XNNPACK as a padded copy
    (xnn_readable); the out-overlaps-input check must still see the caller's array (it once
    checked the copy, so whether it raised depended on where numpy placed the buffer)."""
    import mmap
    mm = mmap.mmap(-1, 2 * mmap.PAGESIZE)
    whole = np.frombuffer(mm, np.float32)
    first = (mmap.PAGESIZE - 84) // 4                 # 20 floats ending 4 bytes before the page end
    a = whole[first:first + 20].reshape(4, 5)
    assert native.xnn_readable(a) is not a            # this placement does get a padded copy
    b = _rand((5,), 2)
    shifted = whole[first + 1:first + 21].reshape(4, 5)
    with pytest.raises(ValueError, match="overlaps"):
        native.xnn_binary("Add", a, b, shifted)
    with pytest.raises(ValueError, match="overlaps"):
        native.xnn_unary("Abs", a, shifted)
    want = a + b
    assert native.xnn_binary("Add", a, b, a) is a and np.array_equal(a, want)   # in place stays allowed
    del a, whole, shifted
    mm.close()


# --------------------------------------------------------------------------- unary wrapper
SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 0.5, 1.5, 2.5, -0.5, -2.5, 3.49, -7.5, 1e30, -88, 89,
                     -104, 1e-3, 3e38, -4e26], np.float32)
SIGMOID_BROKEN = np.array([1e27, -1e30, 2.3e38], np.float32)   # XNNPACK: NaN; the op uses numpy
NUMPY_UNARY = {"Abs": np.abs, "Neg": np.negative, "Sqrt": np.sqrt, "Square": np.square, "Floor": np.floor,
               "Ceil": np.ceil, "Round": np.rint, "Sigmoid": lambda x: elementwise.Sigmoid(x)}


@pytest.mark.parametrize("size", [1, 13, 19, 127, 4099])
@pytest.mark.parametrize("name", list(NUMPY_UNARY))
def test_unary_wrapper_matches_numpy(name, size):
    x = np.concatenate([SPECIALS if name != "Sigmoid" else SPECIALS[np.abs(SPECIALS) != 1e30], _rand(size, 7)])
    with np.errstate(all="ignore"):
        want = NUMPY_UNARY[name](x)
    got = native.xnn_unary(name, x)
    if name == "Sigmoid":   # a polynomial exp: a few ulp, and 0/1 saturation far out
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
    else:                   # exact IEEE operations (Round: half to even, as np.rint)
        np.testing.assert_array_equal(got, want)


def test_unary_wrapper_in_place_and_clip():
    pool = native.ThreadPool(2)
    x = np.concatenate([SPECIALS[1:], _rand(4099, 8)])   # Clip drops NaN: the op checks for it
    want = np.clip(x, -1.5, 2.0)
    y = native.xnn_unary("Clip", x, x, lo=-1.5, hi=2.0, pool=pool)
    assert y is x
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(native.xnn_unary("Clip", x, lo=-np.inf, hi=0.0), np.minimum(x, 0))
    pool.close()


@needs_f16
def test_unary_wrapper_clip_float16():
    x = _rand(4099, 9, np.float16)
    np.testing.assert_array_equal(native.xnn_unary("Clip", x, lo=-1.0, hi=0.5), np.clip(x, np.float16(-1), np.float16(0.5)))


def test_unary_wrapper_rejects_bad_input():
    x = _rand((4, 5), 1)
    with pytest.raises(ValueError, match="unknown unary op"):
        native.xnn_unary("Exp", x)
    with pytest.raises(ValueError, match="min < max"):
        native.xnn_unary("Clip", x, lo=1.0, hi=1.0)
    with pytest.raises(ValueError, match="min < max"):
        native.xnn_unary("Clip", x, lo=np.nan, hi=1.0)
    with pytest.raises(ValueError, match="C-contiguous"):
        native.xnn_unary("Sigmoid", x.astype(np.float16))
    with pytest.raises(ValueError, match="C-contiguous"):
        native.xnn_unary("Abs", x[:, ::2])
    with pytest.raises(ValueError, match="out must be"):
        native.xnn_unary("Abs", x, np.empty((4, 5), np.float64))
    assert native.xnn_unary("Abs", np.ones((0,), np.float32)).shape == (0,)
    assert native.xnn_unary("Abs", np.array(-2.0, np.float32)) == 2.0   # 0-d


@pytest.mark.parametrize("shape", [(13, 19), (3, 127), (2, 7, 4099), (5,)], ids=str)
def test_xnnpack_softmax_matches_numpy(shape):
    x = _rand(shape, 10)
    np.testing.assert_allclose(native.xnn_softmax_f32(x), reduce.Softmax13(x), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="rank >= 1"):
        native.xnn_softmax_f32(np.array(1.0, np.float32))


# --------------------------------------------------------------------------- pooling wrappers
POOLS = [([3, 3], [1, 1], [1, 1], [1, 1, 1, 1]), ([2, 2], [2, 2], [1, 1], [0, 0, 0, 0]),
         ([3, 2], [2, 1], [2, 1], [1, 0, 2, 1]), ([3, 3], [4, 4], [1, 1], [0, 0, 0, 0]),
         ([1, 3], [1, 2], [1, 1], [0, 1, 0, 1])]


@pytest.mark.parametrize("kernel,strides,dilations,pads", POOLS, ids=str)
@pytest.mark.parametrize("shape", [(2, 13, 9, 11), (1, 19, 17, 5), (1, 127, 6, 7)], ids=str)
def test_pool_wrappers_match_numpy(shape, kernel, strides, dilations, pads):
    x = _rand(shape, 11)
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    got = native.xnn_max_pool2d(xh, kernel, strides, dilations, pads).transpose(0, 3, 1, 2)
    want = pool.MaxPool10(x, kernel_shape=kernel, strides=strides, dilations=dilations, pads=pads)
    np.testing.assert_array_equal(got, want)
    if dilations == [1, 1]:
        got = native.xnn_avg_pool2d_f32(xh, kernel, strides, pads).transpose(0, 3, 1, 2)
        want = pool.AveragePool10(x, kernel_shape=kernel, strides=strides, pads=pads, count_include_pad=0)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@needs_f16
def test_max_pool_wrapper_float16():
    x = _rand((1, 13, 9, 11), 12, np.float16)
    got = native.xnn_max_pool2d(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), [3, 3], [2, 2], pads=[1, 1, 1, 1])
    want = pool.MaxPool10(x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    np.testing.assert_array_equal(got.transpose(0, 3, 1, 2), want)


def test_pool_wrappers_reject_bad_input():
    x = _rand((1, 5, 5, 3), 13)
    with pytest.raises(ValueError, match="not 1x1"):
        native.xnn_max_pool2d(x, [1, 1])
    with pytest.raises(ValueError, match="smaller than"):
        native.xnn_max_pool2d(x, [7, 7])
    with pytest.raises(ValueError, match="NHWC"):
        native.xnn_avg_pool2d_f32(x[0], [2, 2])
    with pytest.raises(ValueError, match="expected 2 positive"):
        native.xnn_avg_pool2d_f32(x, [2, 2], strides=[0, 1])
    with pytest.raises(ValueError, match="C-contiguous"):
        native.xnn_avg_pool2d_f32(x.astype(np.float16), [2, 2])


# --------------------------------------------------------------------------- resize wrapper
@pytest.mark.parametrize("mode", ["half_pixel", "align_corners", "asymmetric"])
@pytest.mark.parametrize("out_hw", [(18, 22), (5, 7), (9, 11), (27, 4), (2, 3)], ids=str)
@pytest.mark.parametrize("nchw", [False, True], ids=["nhwc", "nchw"])
def test_resize_wrapper_matches_numpy(mode, out_hw, nchw):
    x = _rand((2, 13, 9, 11), 14)
    want = resize.Resize11(x, None, None, np.array([2, 13, *out_hw]), mode="linear",
                           coordinate_transformation_mode=mode)
    if nchw:
        got = native.xnn_resize_bilinear2d(x, out_hw, mode, nchw=True)
    else:
        got = native.xnn_resize_bilinear2d(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), out_hw, mode)
        got = got.transpose(0, 3, 1, 2)
    # XNNPACK computes source coordinates in float32, the reference in float64.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(x).max())


@needs_f16
def test_resize_wrapper_float16():
    x = _rand((1, 9, 11, 19), 15, np.float16)
    got = native.xnn_resize_bilinear2d(x, (18, 22)).astype(np.float32)
    want = resize.Resize11(x.astype(np.float32).transpose(0, 3, 1, 2), None, None, np.array([1, 19, 18, 22]),
                           mode="linear").transpose(0, 2, 3, 1)
    nmse = np.mean((got - want) ** 2) / np.mean(want ** 2)
    assert nmse < 1e-5


def test_resize_wrapper_rejects_bad_input():
    x = _rand((1, 3, 4, 5), 16)
    with pytest.raises(ValueError, match="unknown mode"):
        native.xnn_resize_bilinear2d(x, (8, 10), "tf_crop_and_resize")
    with pytest.raises(ValueError, match="unsupported sizes"):
        native.xnn_resize_bilinear2d(x, (1, 10), "align_corners")
    with pytest.raises(ValueError, match="unsupported sizes"):
        native.xnn_resize_bilinear2d(np.ascontiguousarray(x[:, :, :1]), (8, 10), nchw=True)
    with pytest.raises(ValueError, match="unsupported sizes"):
        native.xnn_resize_bilinear2d(x, (0, 10))
    with pytest.raises(ValueError, match="C-contiguous"):
        native.xnn_resize_bilinear2d(x.astype(np.float16), (8, 10), nchw=True)
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        native.xnn_resize_bilinear2d(x[0], (8, 10))


# --------------------------------------------------------------------------- ops: elementwise
NATIVE_BINARY = {"Add": ne.Add7, "Sub": ne.Sub7, "Mul": ne.Mul7, "Div": ne.Div7, "Min": ne.Min, "Max": ne.Max}


def _numpy_binary(name, a, b):
    return elementwise._arith(name, a, b) if name in ("Add", "Sub", "Mul", "Div") else \
        getattr(elementwise, name)(a, b)


@pytest.mark.parametrize("shapes", BROADCASTS, ids=str)
@pytest.mark.parametrize("name", list(NATIVE_BINARY))
def test_binary_ops_on_xnnpack_match_numpy(ctx, always_xnnpack, spy, name, shapes):
    a, b = _rand(shapes[0], 17), _rand(shapes[1], 18, loc=0.5)
    got = NATIVE_BINARY[name](a, b, _ctx=ctx)
    want = _numpy_binary(name, a, b)
    assert spy == ["xnn_binary"] and got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=0)


def test_binary_ops_keep_channels_last_and_write_donated_buffers(ctx, always_xnnpack, spy):
    x = _channels_last(_rand((1, 13, 9, 19), 19))
    bias = _rand((13, 1, 1), 20)
    y = ne.Add7(x, bias, _ctx=ctx)                      # channels-last + per-channel bias
    assert is_nhwc(y) and spy == ["xnn_binary"]
    np.testing.assert_array_equal(y, x + bias)
    out = _channels_last(np.empty(x.shape, np.float32))   # a donated channels-last buffer
    y = ne.Mul7(x, y, _out=out, _ctx=ctx)
    assert y.base is out.base or np.shares_memory(y, out)
    np.testing.assert_array_equal(out, x * (x + bias))
    want = x - bias
    y = ne.Sub7(x, bias, _out=x, _ctx=ctx)               # in place into the dying input
    assert np.shares_memory(y, x)
    np.testing.assert_array_equal(y, want)
    c_out = np.empty(x.shape, np.float32)                  # a C-order buffer does not fit
    y = ne.Add7(x, bias, _out=c_out, _ctx=ctx)
    assert is_nhwc(y) and not np.shares_memory(y, c_out)
    np.testing.assert_array_equal(y, x + bias)


def test_binary_ops_fall_back_on_mixed_layouts_and_other_dtypes(ctx, always_xnnpack, spy):
    a = _channels_last(_rand((1, 13, 9, 19), 21))
    b = _rand((1, 13, 9, 19), 22)                          # C order: layouts differ
    np.testing.assert_array_equal(ne.Add7(a, b, _ctx=ctx), a + b)
    np.testing.assert_array_equal(ne.Add7(a[:, :, ::2], b[:, :, ::2], _ctx=ctx), a[:, :, ::2] + b[:, :, ::2])
    ia, ib = np.arange(12, dtype=np.int64), np.full(12, 5, np.int64)
    np.testing.assert_array_equal(ne.Div7(ia, ib, _ctx=ctx), elementwise._arith("Div", ia, ib))
    assert spy == []
    with pytest.raises(TypeError, match="one dtype"):      # the numpy op's error
        ne.Add7(ia, b, _ctx=ctx)
    with pytest.raises(ValueError, match="do not broadcast"):
        ne.Add7(b, _rand((5,), 1), _ctx=ctx)


@pytest.mark.parametrize("name", list(NATIVE_BINARY))
def test_binary_ops_fall_back_where_nan_could_arise(ctx, always_xnnpack, spy, name):
    a = _rand((4099,), 40)
    for bad in (np.nan, np.inf, -np.inf):
        x = a.copy()
        x[5] = bad
        for args in ((x, a), (a, x)):
            with np.errstate(all="ignore"):
                np.testing.assert_array_equal(NATIVE_BINARY[name](*args, _ctx=ctx), _numpy_binary(name, *args))
    assert spy == []
    z = a.copy()
    z[9] = 0.0 if name != "Div" else np.finfo(np.float32).tiny / 4   # zero / denormal divisor
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(NATIVE_BINARY[name](a * 0, z, _ctx=ctx), _numpy_binary(name, a * 0, z))
    assert spy == ([] if name == "Div" else ["xnn_binary"])


def test_min_max_nan_falls_back(ctx, always_xnnpack, spy):
    a = _rand((4099,), 23)
    b = _rand((4099,), 24)
    a[7] = b[100] = np.nan
    for name in ("Min", "Max"):
        got = NATIVE_BINARY[name](a, b, _ctx=ctx)
        np.testing.assert_array_equal(got, NUMPY_BINARY[name](a, b))
        assert np.isnan(got[7]) and np.isnan(got[100])
    assert spy == []
    assert ne.Max(a, b, a, _ctx=ctx).shape == a.shape     # three inputs: numpy


def test_default_rules_leave_float32_arithmetic_to_numpy(ctx, spy):
    a, b = _rand((1, 32, 64, 64), 25), _rand((32, 1, 1), 26)
    np.testing.assert_array_equal(ne.Add7(a, b, _ctx=ctx), a + b)
    if ne.MIN_ELEMENTS_F32_MEMORY_BOUND is None:
        assert spy == []
    ne.Sigmoid(a, _ctx=ctx)
    assert spy[-1] == "xnn_unary"


@needs_f16
def test_float16_add_mul_clip_on_xnnpack(ctx, spy):
    a = _rand((1, 13, 19, 127), 27, np.float16)
    b = _rand((13, 1, 1), 28, np.float16)
    np.testing.assert_array_equal(ne.Add7(a, b, _ctx=ctx), a + b)
    np.testing.assert_array_equal(ne.Mul7(a, b, _ctx=ctx), a * b)
    lo, hi = np.array(-1, np.float16), np.array(2, np.float16)
    np.testing.assert_array_equal(ne.Clip11(a, lo, hi, _ctx=ctx), elementwise.Clip11(a, lo, hi))
    assert spy == ["xnn_binary", "xnn_binary", "xnn_unary"]


@pytest.mark.parametrize("layout", ["c", "channels_last"])
def test_sigmoid_and_math_unary_ops(ctx, always_xnnpack, spy, layout):
    x = _rand((1, 13, 19, 127), 29)
    x.reshape(-1)[:len(SPECIALS)] = SPECIALS
    if layout == "channels_last":
        x = _channels_last(x)
    y = ne.Sigmoid(x, _ctx=ctx)
    assert is_nhwc(y) == (layout == "channels_last")
    np.testing.assert_allclose(y, elementwise.Sigmoid(x), rtol=2e-6, atol=1e-7)
    for name in ("Abs", "Neg", "Sqrt", "Round"):
        with np.errstate(all="ignore"):
            want = NUMPY_UNARY[name](x)
        got = getattr(ne, name)(x, _ctx=ctx)
        assert is_nhwc(got) == (layout == "channels_last")
        np.testing.assert_array_equal(got, want)
    assert spy == ["xnn_unary"] * 4                         # not Sigmoid: x holds a NaN
    xs = np.clip(np.nan_to_num(x), -50, 50)                  # same layout, Sigmoid-safe
    assert is_nhwc(xs) == (layout == "channels_last")
    out = np.empty_like(x)                                   # donated, same layout
    y = ne.Sigmoid(xs, _out=out, _ctx=ctx)
    assert np.shares_memory(y, out) and spy[-1] == "xnn_unary" and len(spy) == 5
    y = ne.Abs(x, _out=x, _ctx=ctx)                          # in place
    assert np.shares_memory(y, x) and not (x < 0).any()


def test_sigmoid_range_where_xnnpack_breaks_goes_to_numpy(ctx, always_xnnpack, spy):
    assert np.isnan(native.xnn_unary("Sigmoid", SIGMOID_BROKEN)).all()   # why the op checks
    spy.clear()
    x = np.concatenate([_rand(4099, 41), SIGMOID_BROKEN])
    np.testing.assert_array_equal(ne.Sigmoid(x, _ctx=ctx), elementwise.Sigmoid(x))
    x[3] = np.nan
    assert np.isnan(ne.Sigmoid(x, _ctx=ctx)[3])
    assert spy == []


def test_unary_ops_fall_back(ctx, always_xnnpack, spy):
    x = np.arange(-5, 6, dtype=np.int32)
    np.testing.assert_array_equal(ne.Abs(x, _ctx=ctx), np.abs(x))
    np.testing.assert_array_equal(ne.Neg(x, _ctx=ctx), -x)
    y = _rand((6, 8), 30)[:, ::2]                              # strided: numpy
    np.testing.assert_allclose(ne.Sigmoid(y, _ctx=ctx), elementwise.Sigmoid(y))
    h = _rand((40,), 31, np.float16)                           # no f16 sigmoid in XNNPACK
    np.testing.assert_array_equal(ne.Sigmoid(h, _ctx=ctx), elementwise.Sigmoid(h))
    assert spy == []
    with pytest.raises(TypeError, match="float"):
        ne.Sigmoid(x, _ctx=ctx)


def test_clip_semantics(ctx, always_xnnpack, spy):
    x = _rand((4099,), 32)
    lo, hi = np.array(-1, np.float32), np.array(1.5, np.float32)
    np.testing.assert_array_equal(ne.Clip11(x, lo, hi, _ctx=ctx), np.clip(x, -1, 1.5))
    np.testing.assert_array_equal(ne.Clip11(x, None, hi, _ctx=ctx), np.minimum(x, 1.5))
    np.testing.assert_array_equal(ne.Clip1(x, min=-0.5, _ctx=ctx), np.maximum(x, -0.5))
    assert spy == ["xnn_unary"] * 3
    # min > max gives max everywhere, min == max that value, NaN stays NaN: numpy's semantics
    np.testing.assert_array_equal(ne.Clip11(x, hi, lo, _ctx=ctx), np.full_like(x, -1))
    np.testing.assert_array_equal(ne.Clip11(x, lo, lo, _ctx=ctx), np.full_like(x, -1))
    xn = x.copy()
    xn[3] = np.nan
    assert np.isnan(ne.Clip11(xn, lo, hi, _ctx=ctx)[3])
    np.testing.assert_array_equal(ne.Clip11(x, _ctx=ctx), x)
    assert spy == ["xnn_unary"] * 3
    with pytest.raises(ValueError, match="scalar"):
        ne.Clip11(x, np.ones(2, np.float32), hi, _ctx=ctx)


# --------------------------------------------------------------------------- ops: pooling
POOL_ATTRS = [dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
              dict(kernel_shape=[2, 2], strides=[2, 2]),
              dict(kernel_shape=[3, 2], strides=[1, 2], auto_pad="SAME_UPPER"),
              dict(kernel_shape=[3, 3], auto_pad="SAME_LOWER", strides=[2, 2]),
              dict(kernel_shape=[2, 3], pads=[0, 1, 1, 0], dilations=[2, 1])]


@pytest.mark.parametrize("attrs", POOL_ATTRS, ids=str)
def test_pool_ops_on_channels_last(ctx, spy, attrs):
    x = _channels_last(_rand((2, 19, 13, 11), 33))
    y = ne.MaxPool10(x, **attrs, _ctx=ctx)
    assert is_nhwc(y)
    np.testing.assert_array_equal(y, pool.MaxPool10(x, **attrs))
    assert spy == ["xnn_max_pool2d"]
    if "dilations" not in attrs:
        for cip in (0, 1):
            y = ne.AveragePool10(x, **attrs, count_include_pad=cip, _ctx=ctx)
            np.testing.assert_allclose(y, pool.AveragePool10(x, **attrs, count_include_pad=cip), rtol=1e-6, atol=1e-6)


def test_pool_ops_fall_back(ctx, spy):
    xc = _rand((1, 13, 9, 11), 34)
    x = _channels_last(xc)
    for args, kw in [((xc,), dict(kernel_shape=[3, 3])),                              # C order
                     ((x,), dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),   # ceil adds a window
                     ((x,), dict(kernel_shape=[1, 1])),
                     ((x[:, :, ::2],), dict(kernel_shape=[3, 3])),                    # strided rows
                     ((x.astype(np.float64),), dict(kernel_shape=[2, 2]))]:
        np.testing.assert_array_equal(ne.MaxPool10(*args, **kw, _ctx=ctx), pool.MaxPool10(*args, **kw))
    xn = x.copy(order="K")
    xn[0, 3, 4, 5] = np.nan                                                            # NaN / inf
    assert np.isnan(ne.MaxPool10(xn, kernel_shape=[2, 2], _ctx=ctx)[0, 3, 4, 5])
    xn[0, 3, 4, 5] = np.inf
    xn[0, 3, 4, 6] = -np.inf
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(ne.AveragePool10(xn, kernel_shape=[2, 2], _ctx=ctx),
                                      pool.AveragePool10(xn, kernel_shape=[2, 2]))
    y, idx = ne.MaxPool10(x, kernel_shape=[2, 2], _noutputs=2, _ctx=ctx)             # Indices
    want_y, want_idx = pool.MaxPool10(x, kernel_shape=[2, 2], _noutputs=2)
    np.testing.assert_array_equal(idx, want_idx)
    kw = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)
    np.testing.assert_allclose(ne.AveragePool10(x, **kw, _ctx=ctx), pool.AveragePool10(x, **kw), rtol=1e-6)
    assert spy == []
    np.testing.assert_array_equal(ne.MaxPool8(x, kernel_shape=[2, 2], _ctx=ctx), pool.MaxPool8(x, kernel_shape=[2, 2]))
    assert spy == ["xnn_max_pool2d"]
    with pytest.raises(ValueError, match="kernel_shape"):
        ne.MaxPool10(x, kernel_shape=[3], _ctx=ctx)


# --------------------------------------------------------------------------- ops: Resize
RESIZES = [("half_pixel", None, [1, 13, 18, 22]), ("pytorch_half_pixel", None, [1, 13, 5, 7]),
           ("align_corners", None, [1, 13, 27, 4]), ("asymmetric", None, [1, 13, 18, 22]),
           ("half_pixel", [1, 1, 2, 2], None), ("align_corners", [1, 1, 1 / 3, 2], None),
           ("asymmetric", [1, 1, 3, 1], None)]


@pytest.mark.parametrize("ctm,scales,sizes", RESIZES, ids=str)
@pytest.mark.parametrize("layout", ["c", "channels_last"])
def test_resize_op_on_xnnpack(ctx, always_xnnpack, spy, ctm, scales, sizes, layout):
    x = _rand((1, 13, 9, 11), 35)
    if layout == "channels_last":
        x = _channels_last(x)
    sc = None if scales is None else np.array(scales, np.float32)
    sz = None if sizes is None else np.array(sizes, np.int64)
    for native_op, numpy_op in ((ne.Resize11, resize.Resize11), (ne.Resize18, resize.Resize18),
                                (ne.Resize19, resize.Resize19)):
        got = native_op(x, None, sc, sz, mode="linear", coordinate_transformation_mode=ctm, _ctx=ctx)
        want = numpy_op(x, None, sc, sz, mode="linear", coordinate_transformation_mode=ctm)
        assert got.shape == want.shape and is_nhwc(got) == (layout == "channels_last")
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(x).max())
    assert spy == ["xnn_resize_bilinear2d"] * 3
    got = ne.Resize10(x, np.array([1, 1, 2, 2], np.float32), mode="linear", _ctx=ctx)
    np.testing.assert_allclose(got, resize.Resize10(x, np.array([1, 1, 2, 2], np.float32), mode="linear"),
                               rtol=1e-5, atol=1e-5 * np.abs(x).max())


def test_resize_op_falls_back(ctx, always_xnnpack, spy):
    x = _rand((1, 13, 10, 11), 36)
    cases = [dict(scales=np.array([1, 1, 0.65, 2], np.float32), mode="linear"),      # 10 * 0.65: scale != out/in
             dict(sizes=np.array([1, 13, 4, 22]), mode="cubic"),
             dict(sizes=np.array([1, 13, 4, 22]), mode="nearest"),
             dict(sizes=np.array([1, 7, 4, 22]), mode="linear"),                     # resizes C
             dict(sizes=np.array([1, 13, 1, 22]), mode="linear", coordinate_transformation_mode="align_corners"),
             dict(sizes=np.array([1, 13, 1, 22]), mode="linear",
                  coordinate_transformation_mode="pytorch_half_pixel"),
             dict(sizes=np.array([1, 13, 4, 22]), mode="linear", coordinate_transformation_mode="tf_crop_and_resize",
                  roi=np.array([0, 0, 0.1, 0.1, 1, 1, 0.9, 0.9], np.float32)),
             dict(sizes=np.array([1, 13, 4, 5]), mode="linear", antialias=1)]
    for kw in cases:
        args = (x, kw.pop("roi", None), kw.pop("scales", None), kw.pop("sizes", None))
        got = ne.Resize18(*args, **kw, _ctx=ctx)
        want = resize.Resize18(*args, **kw)
        assert spy == [], kw
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="exactly one of scales and sizes"):
        ne.Resize18(x, None, None, None, mode="linear", _ctx=ctx)


# --------------------------------------------------------------------------- ONNX backend cases
OWN_OPS = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sigmoid", "Clip", "Abs", "Neg", "Sqrt", "Round",
           "MaxPool", "AveragePool", "Resize"}
OWN_CASES = [c for c in CASES if any(n.op_type in OWN_OPS for n in c.model.graph.node)]


@pytest.mark.parametrize("case", OWN_CASES, ids=[c.name for c in OWN_CASES])
def test_backend_cases_native_with_every_rule_at_zero(case, always_xnnpack):
    """The suite runs on the native backend already (test_onnx_backend.py), where its small
    tensors stay below the size rules; here every case XNNPACK covers runs on XNNPACK."""
    if case.name in EXCLUDED:
        pytest.xfail(EXCLUDED[case.name])
    graph = case.model.graph
    for inputs, expected in case.data_sets:
        feeds = {i.name: _array(x) for i, x in zip(graph.input, inputs)}
        got = run_model(case.model, feeds, options=onnxstream_py.RunOptions(backend="native", threads=2))
        for out, g, e in zip(graph.output, got, expected):
            e = np.asarray(_array(e))
            assert g.dtype == e.dtype and g.shape == e.shape, (out.name, g.dtype, g.shape, e.dtype, e.shape)
            if e.dtype.kind == "f":
                np.testing.assert_allclose(g, e, rtol=max(case.rtol, 1e-5), atol=max(case.atol, 1e-6),
                                           err_msg=out.name)
            else:
                np.testing.assert_array_equal(g, e, err_msg=out.name)
