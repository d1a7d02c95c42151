"""Native elementwise, pooling and bilinear Resize ops on XNNPACK's weightless operators.

Trade-off: XNNPACK runs these on the model's pool but pays ~10 us per call (operator
create/setup/delete, waking the workers), and a plain float32 add or multiply is
memory-bound, where numpy's AVX-512 loops keep up with two threads. So each op goes to
XNNPACK only where it measured faster than numpy (scripts/bench_eltwise.py; figures at the
constants below) - Sigmoid, Sqrt, Clip, float16 Add/Mul/Clip, channels-last pooling, large
bilinear Resize - and only where XNNPACK's result is ONNX's. Every other case (float32
Add/Sub/Mul/Div/Min/Max/Abs/Neg/Round on this machine, other dtypes, tiny tensors, NaN
inputs of Min/Max/Clip - XNNPACK's min/max/clamp drop NaNs -, MaxPool with Indices, windows
added by ceil_mode, other Resize modes) is handed to the numpy op, which stays the single
statement of the semantics and of the error messages. Floor and Ceil are not registered:
XNNPACK flushes denormal inputs to zero, so Ceil(1e-40) would be 0 instead of 1.

Layout: operands are used in place when they share one memory order - all C order, or all
channels-last (layout.py) including a broadcast [C, 1, 1] bias, which is contiguous in any
order - and the result comes back in that order (a channels-last result is the
``transpose(0, 3, 1, 2)`` view of an NHWC buffer). Mixed orders go to numpy. A donated
``_out`` is written when it has that same memory order, else the result is allocated.
Known difference that is kept: like every XNNPACK operator (Conv, Gemm included), these run
with denormals flushed to zero, so results involving values below 1.2e-38 may differ by
that much (Sqrt of a denormal is 0, not ~1e-20).
Reference: https://onnx.ai/onnx/operators/ (one section per op).
"""
from __future__ import annotations

import math

import numpy as np

from .. import native
from ..layout import is_nhwc, nhwc_buffer
from . import elementwise, pool, resize
from .registry import op

# Smallest output (elements) sent to XNNPACK, per op class; below, numpy's lower per-call
# overhead wins. Measured under load (other agents on the 2 cores), XNNPACK on the 2-thread
# pool vs numpy (1 thread), best of 7-9 (python3 scripts/bench_eltwise.py [--sweep] [--cold]):
#   Sigmoid: from 4K elements (4096: 13 us vs 16 us; [1,320,64,64] with the range check:
#     0.49 vs 2.4 ms, 5x; the text encoder's quick-GELU sigmoid [1,77,3072]: 0.12 vs 0.44 ms).
#   Sqrt: from 128K (131072: 40 vs 48 us; 1M: 0.21 vs 0.37 ms); below numpy.
#   Clip float32 (numpy: copy + max + min; ours adds a NaN check): from 32K (16K: 19 vs 17 us,
#     64K: 31 vs 57 us; [1,4096,1280]: 2.7 vs 4.9 ms).
#   float16 Add/Mul/Clip: numpy has no SIMD half loops, XNNPACK's F16C kernels are bit-exact
#     with it and 1.5x (4096) to 25x (4M) faster.
#   Resize bilinear: from 256K output elements ([1,320,64,64] x2: 16 ms NCHW / 1.2 ms
#     channels-last vs 34 ms; [1,13,127,127] x0.5 (52K): a tie).
#   float32 Add/Sub/Mul/Div/Min/Max/Abs/Neg/Round: None = never on this machine. They are
#     memory-bound and numpy's AVX-512 loops match XNNPACK's two threads: same-shape adds
#     0.8-0.9x, [1,320,64,64] + bias 1.46x warm but 1.06x from RAM (--cold), [1,4096,1280]
#     multiplies 0.8-0.9x, Abs/Neg/Round 0.55-0.7x. Set a size (e.g. 1 << 19) where a
#     measurement says otherwise (ARM: numpy's NEON loops are single-threaded; unmeasured).
MIN_ELEMENTS_SIGMOID = 4096
MIN_ELEMENTS_SQRT = 1 << 17
MIN_ELEMENTS_CLIP = 1 << 15
MIN_ELEMENTS_F16 = 4096
MIN_ELEMENTS_RESIZE = 1 << 18
MIN_ELEMENTS_F32_MEMORY_BOUND: int | None = None

_F32 = np.dtype(np.float32)
_F16 = np.dtype(np.float16)
_XNN_F16_OK: bool | None = None


def _dtype_ok(dtype, f16_allowed: bool) -> bool:
    """float32, or float16 where XNNPACK has the kernel and this CPU runs it (probed once)."""
    global _XNN_F16_OK
    if dtype == _F32:
        return True
    if dtype != _F16 or not f16_allowed:
        return False
    if _XNN_F16_OK is None:
        try:
            one = np.ones(1, _F16)
            native.xnn_binary("Add", one, one)
            _XNN_F16_OK = True
        except native.NativeError:
            _XNN_F16_OK = False
    return _XNN_F16_OK


def _aligned(a: np.ndarray, nd: int) -> np.ndarray:
    """a with leading unit dims up to rank nd (a view; numpy broadcasting's alignment)."""
    return a if a.ndim == nd else a.reshape((1,) * (nd - a.ndim) + a.shape)


def _memory_order(nd: int, arrays) -> tuple | None:
    """An axis order in which every array (aligned to rank nd) is C-contiguous: C order, or the
    stride order of one of them (channels-last, ...); None when they are laid out differently."""
    aligned = [_aligned(a, nd) for a in arrays]
    candidates = [tuple(range(nd))]
    candidates += [tuple(sorted(range(nd), key=lambda i, v=v: -v.strides[i])) for v in aligned]
    for perm in candidates:
        if all(v.transpose(perm).flags.c_contiguous for v in aligned):
            return perm
    return None


def _destination(out, shape, dtype, perm, inputs) -> np.ndarray | None:
    """The donated buffer seen in ``perm`` order when XNNPACK can write it: right shape and
    dtype, writeable, contiguous in that order, and either disjoint from each input or that
    input itself."""
    if not (elementwise._fits(out, shape, dtype) and out.flags.writeable):
        return None
    o = out.transpose(perm)
    if not o.flags.c_contiguous:
        return None
    for a in inputs:
        if np.may_share_memory(o, a) and not (o.ctypes.data == a.ctypes.data and o.shape == a.shape):
            return None
    return o


def _min_elements(dtype, f32_rule: int | None) -> float:
    """The size rule for a dtype: float16 has its own (numpy's half loops are slow)."""
    if dtype == _F16:
        return MIN_ELEMENTS_F16
    return math.inf if f32_rule is None else f32_rule


def _has_nan(*arrays) -> bool:
    """Any NaN in the arrays (float16 through its bits, as in _finite)."""
    for a in arrays:
        if a.dtype == _F16:
            if a.size and (a.view(np.uint16) & 0x7FFF).max() > 0x7C00:
                return True
        elif np.isnan(a).any():
            return True
    return False


def _finite(*arrays) -> bool:
    """No NaN or inf in any of the arrays (float16 through its exponent bits: numpy's half
    isfinite has no SIMD loop and costs more than the XNNPACK op)."""
    for a in arrays:
        if a.dtype == _F16:
            if a.size and (a.view(np.uint16) & 0x7C00).max() == 0x7C00:
                return False
        elif not np.isfinite(a).all():
            return False
    return True


# --------------------------------------------------------------------------- binary
def _no_nan_result(name: str, a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ONNX's result can hold no NaN, which XNNPACK would lose: its binary kernels
    clamp every output to [-inf, inf] with max/min, turning NaN into -inf (and its min/max
    drop a NaN operand). Finite operands give no NaN; Div also needs divisors that are not
    zero (0/0), nor denormal (XNNPACK flushes them to zero)."""
    if not _finite(a, b):
        return False
    return name != "Div" or float(np.abs(b).min()) >= np.finfo(b.dtype).tiny


def _binary(name: str, a, b, out, ctx) -> np.ndarray | None:
    """XNNPACK's a (name) b for a case it covers exactly, else None (the caller runs numpy)."""
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)) or a.dtype != b.dtype:
        return None
    if not _dtype_ok(a.dtype, name in native.BINARY_F16_OPS):
        return None
    try:
        shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        return None
    if len(shape) > native.XNN_MAX_DIMS or math.prod(shape) < _min_elements(a.dtype, MIN_ELEMENTS_F32_MEMORY_BOUND):
        return None
    nd = len(shape)
    perm = _memory_order(nd, (a, b))
    if perm is None or not _no_nan_result(name, a, b):
        return None
    at, bt = _aligned(a, nd).transpose(perm), _aligned(b, nd).transpose(perm)
    y = native.xnn_binary(name, at, bt, _destination(out, shape, a.dtype, perm, (at, bt)), pool=ctx.pool)
    return y.transpose(np.argsort(perm))


def _make_binary(name: str):
    def native_op(a, b, *, _out=None, _ctx):
        y = _binary(name, a, b, _out, _ctx)
        return y if y is not None else elementwise._arith(name, a, b, _out)
    native_op.__name__ = native_op.__qualname__ = f"{name}7"
    native_op.__doc__ = f"ONNX {name} opset 7+ on XNNPACK where measured faster; else numpy."
    return native_op


Add7, Sub7, Mul7, Div7 = (op(n, since=7, backend="native")(_make_binary(n)) for n in ("Add", "Sub", "Mul", "Div"))


@op("Max", since=1, backend="native")
def Max(*xs, consumed_inputs=None, _out=None, _ctx):
    y = _binary("Max", xs[0], xs[1], _out, _ctx) if len(xs) == 2 else None
    return y if y is not None else elementwise.Max(*xs)


@op("Min", since=1, backend="native")
def Min(*xs, consumed_inputs=None, _out=None, _ctx):
    y = _binary("Min", xs[0], xs[1], _out, _ctx) if len(xs) == 2 else None
    return y if y is not None else elementwise.Min(*xs)


# --------------------------------------------------------------------------- unary
def _unary(name: str, x, out, ctx, f32_min_elements: int | None, lo: float = -math.inf, hi: float = math.inf,
           safe=None):
    """XNNPACK's f(x) over x's own memory order (any dense layout), else None; ``safe(x)``,
    checked last (it costs a pass over x), says whether XNNPACK's result is ONNX's."""
    if not isinstance(x, np.ndarray) or x.size < _min_elements(x.dtype, f32_min_elements):
        return None
    if not _dtype_ok(x.dtype, name in native.UNARY_F16_OPS):
        return None
    perm = _memory_order(x.ndim, (x,))
    if perm is None or (safe is not None and not safe(x)):
        return None
    xt = x.transpose(perm)
    y = native.xnn_unary(name, xt, _destination(out, x.shape, x.dtype, perm, (xt,)), lo=lo, hi=hi, pool=ctx.pool)
    return y.transpose(np.argsort(perm))


# XNNPACK's sigmoid returns NaN for 4.29e26 <= |x| <= 2.36e38 (its exp range reduction
# breaks; found by a scan of float32 bit patterns), ONNX 0 or 1: such inputs go to numpy.
SIGMOID_MAX_ABS = 4e26


def _sigmoid_safe(x: np.ndarray) -> bool:
    return bool(x.max() < SIGMOID_MAX_ABS and x.min() > -SIGMOID_MAX_ABS)   # False for NaN: numpy


@op("Sigmoid", since=1, backend="native")
def Sigmoid(x, consumed_inputs=None, *, _out=None, _ctx):
    y = _unary("Sigmoid", x, _out, _ctx, MIN_ELEMENTS_SIGMOID, safe=_sigmoid_safe)
    return y if y is not None else elementwise.Sigmoid(x, _out=_out)


def _make_math_unary(name: str):
    numpy_op = elementwise._make_math_unary(name, elementwise._MATH_UNARY[name][0])

    def native_op(x, consumed_inputs=None, *, _out=None, _ctx):
        y = _unary(name, x, _out, _ctx, MIN_ELEMENTS_SQRT if name == "Sqrt" else MIN_ELEMENTS_F32_MEMORY_BOUND)
        return y if y is not None else numpy_op(x, _out=_out)
    native_op.__name__ = native_op.__qualname__ = name
    native_op.__doc__ = f"ONNX {name} on XNNPACK where its size rule says so; else numpy."
    return native_op


# Floor and Ceil are not routed: XNNPACK flushes denormal inputs (Ceil(1e-40) = 0, not 1).
Abs, Neg, Sqrt, Round = (op(n, since=elementwise._MATH_UNARY[n][1], backend="native")(_make_math_unary(n))
                          for n in ("Abs", "Neg", "Sqrt", "Round"))


def _clip(x, lo, hi, out, ctx):
    """XNNPACK's clamp for float x without NaNs and bounds lo < hi, else None. The bounds are
    rounded to x's dtype first, as numpy's Clip does (exact in XNNPACK's float parameters)."""
    if not isinstance(x, np.ndarray) or x.dtype not in (_F32, _F16):
        return None
    if x.size < _min_elements(x.dtype, MIN_ELEMENTS_CLIP):
        return None
    lo, hi = float(np.asarray(lo).astype(x.dtype)), float(np.asarray(hi).astype(x.dtype))
    if not lo < hi:
        return None
    return _unary("Clip", x, out, ctx, MIN_ELEMENTS_CLIP, lo, hi, safe=lambda v: not _has_nan(v))


@op("Clip", since=1, backend="native")
def Clip1(x, min=-3.4028234663852886e38, max=3.4028234663852886e38, consumed_inputs=None, *,  # noqa: A002
          _out=None, _ctx):
    y = _clip(x, min, max, _out, _ctx)
    return y if y is not None else elementwise.Clip1(x, min=min, max=max)


@op("Clip", since=11, backend="native")
def Clip11(x, min=None, max=None, *, _out=None, _ctx):  # noqa: A002
    y = None
    scalar = all(v is None or (isinstance(v, np.ndarray) and v.size == 1) for v in (min, max))
    if scalar and (min is not None or max is not None):
        lo = -math.inf if min is None else min.reshape(()).astype(x.dtype)
        hi = math.inf if max is None else max.reshape(()).astype(x.dtype)
        y = _clip(x, lo, hi, _out, _ctx)
    return y if y is not None else elementwise.Clip11(x, min, max)


# --------------------------------------------------------------------------- pooling
def _pool_case(name, x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, dtypes):
    """(kernel, strides, dilations, pads) of a 2-D pooling XNNPACK computes as ONNX does,
    else None: x a channels-last float [N, C, H, W], not 1x1, output size by floor rounding (a
    ceil_mode that adds windows is left to numpy), and no window lying wholly in the padding.

    A C-order x stays with numpy: XNNPACK pools NHWC, and neither pooling N*C one-channel
    images nor transposing to NHWC and back beat numpy (bench_eltwise: MaxPool
    [1,320,64,64] k2 s2: numpy 0.86 ms, one-channel 1.9 ms, transposes 4.1 ms, channels-last
    0.61 ms; [1,64,112,112] k3 s2: 1.3 / 1.1 / 0.71 / 0.28 ms)."""
    if not is_nhwc(x) or x.size == 0 or x.dtype not in dtypes:
        return None
    if x.dtype == _F16 and not _dtype_ok(_F16, True):
        return None
    try:
        kernel, strides, pads, dilations, out_sp = pool._geometry(name, x, kernel_shape, strides, pads,
                                                                  dilations, auto_pad, ceil_mode)
    except (ValueError, TypeError):
        return None
    if kernel == [1, 1] or min(pads) < 0:
        return None
    floor_sp = [(n + pads[i] + pads[2 + i] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1
                for i, n in enumerate(x.shape[2:])]
    if list(out_sp) != floor_sp or min(floor_sp) < 1:
        return None
    if any(pads[i] > dilations[i % 2] * (kernel[i % 2] - 1) for i in range(4)):
        return None
    return kernel, strides, dilations, pads


def _max_pool(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, noutputs, ctx):
    case = None if noutputs > 1 else _pool_case("MaxPool", x, kernel_shape, strides, pads, dilations, auto_pad,
                                                 ceil_mode, (_F32, _F16))
    if case is None or _has_nan(x):   # XNNPACK's max drops NaNs
        return None
    k, s, d, p = case
    return native.xnn_max_pool2d(nhwc_buffer(x), k, s, d, p, pool=ctx.pool).transpose(0, 3, 1, 2)


@op("MaxPool", since=1, backend="native")
def MaxPool1(x, *, auto_pad="NOTSET", kernel_shape=None, pads=None, strides=None, _ctx):
    y = _max_pool(x, kernel_shape, strides, pads, None, auto_pad, 0, 1, _ctx)
    return y if y is not None else pool.MaxPool1(x, auto_pad=auto_pad, kernel_shape=kernel_shape, pads=pads,
                                                 strides=strides)


@op("MaxPool", since=8, backend="native")
def MaxPool8(x, *, auto_pad="NOTSET", kernel_shape=None, pads=None, storage_order=0, strides=None, _noutputs=1,
             _ctx):
    y = _max_pool(x, kernel_shape, strides, pads, None, auto_pad, 0, _noutputs, _ctx)
    return y if y is not None else pool.MaxPool8(x, auto_pad=auto_pad, kernel_shape=kernel_shape, pads=pads,
                                                 storage_order=storage_order, strides=strides, _noutputs=_noutputs)


@op("MaxPool", since=10, backend="native")
def MaxPool10(x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, pads=None,
              storage_order=0, strides=None, _noutputs=1, _ctx):
    y = _max_pool(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, _noutputs, _ctx)
    return y if y is not None else pool.MaxPool10(x, auto_pad=auto_pad, ceil_mode=ceil_mode, dilations=dilations,
                                                  kernel_shape=kernel_shape, pads=pads,
                                                  storage_order=storage_order, strides=strides,
                                                  _noutputs=_noutputs)


def _avg_pool(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, count_include_pad, ctx):
    """XNNPACK divides by the taps inside the input: ONNX count_include_pad=0 (or no padding)."""
    case = _pool_case("AveragePool", x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, (_F32,))
    if case is None:
        return None
    k, s, d, p = case
    if d != [1, 1] or (count_include_pad and any(p)) or not _finite(x):   # its clamp turns NaN into -inf
        return None
    return native.xnn_avg_pool2d_f32(nhwc_buffer(x), k, s, p, pool=ctx.pool).transpose(0, 3, 1, 2)


@op("AveragePool", since=1, backend="native")
def AveragePool1(x, *, auto_pad="NOTSET", kernel_shape=None, pads=None, strides=None, _ctx):
    y = _avg_pool(x, kernel_shape, strides, pads, None, auto_pad, 0, 0, _ctx)
    return y if y is not None else pool.AveragePool1(x, auto_pad=auto_pad, kernel_shape=kernel_shape, pads=pads,
                                                     strides=strides)


@op("AveragePool", since=7, backend="native")
def AveragePool7(x, *, auto_pad="NOTSET", count_include_pad=0, kernel_shape=None, pads=None, strides=None, _ctx):
    y = _avg_pool(x, kernel_shape, strides, pads, None, auto_pad, 0, count_include_pad, _ctx)
    return y if y is not None else pool.AveragePool7(x, auto_pad=auto_pad, count_include_pad=count_include_pad,
                                                     kernel_shape=kernel_shape, pads=pads, strides=strides)


@op("AveragePool", since=10, backend="native")
def AveragePool10(x, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, kernel_shape=None, pads=None,
                  strides=None, _ctx):
    y = _avg_pool(x, kernel_shape, strides, pads, None, auto_pad, ceil_mode, count_include_pad, _ctx)
    return y if y is not None else pool.AveragePool10(x, auto_pad=auto_pad, ceil_mode=ceil_mode,
                                                      count_include_pad=count_include_pad,
                                                      kernel_shape=kernel_shape, pads=pads, strides=strides)


@op("AveragePool", since=19, backend="native")
def AveragePool19(x, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None, kernel_shape=None,
                  pads=None, strides=None, _ctx):
    y = _avg_pool(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, count_include_pad, _ctx)
    return y if y is not None else pool.AveragePool19(x, auto_pad=auto_pad, ceil_mode=ceil_mode,
                                                      count_include_pad=count_include_pad, dilations=dilations,
                                                      kernel_shape=kernel_shape, pads=pads, strides=strides)


# --------------------------------------------------------------------------- Resize
# ONNX coordinate modes -> XNNPACK's, valid when the scale is exactly out/in (XNNPACK derives
# it from the sizes). pytorch_half_pixel is half_pixel except for outputs of length 1.
_RESIZE_CTM = {"half_pixel": "half_pixel", "pytorch_half_pixel": "half_pixel",
               "align_corners": "align_corners", "asymmetric": "asymmetric"}


def _resize(x, scales, sizes, ctx, *, mode, ctm, exclude_outside=0, antialias=0, axes=None,
            keep_aspect_ratio_policy="stretch"):
    """Bilinear Resize of H and W of a float32 [N, C, H, W] on XNNPACK, else None."""
    if (mode != "linear" or ctm not in _RESIZE_CTM or exclude_outside or not isinstance(x, np.ndarray)
            or x.dtype != _F32 or x.ndim != 4 or x.size == 0):
        return None
    try:
        out_shape, scale, _ = resize._resolve_shape(x, scales, sizes, axes, keep_aspect_ratio_policy)
    except (ValueError, TypeError):
        return None
    n, c, h, w = x.shape
    oh, ow = out_shape[2:]
    if out_shape[:2] != [n, c] or min(oh, ow) < 1 or n * c * oh * ow < MIN_ELEMENTS_RESIZE:
        return None
    for a in (2, 3):   # XNNPACK's scale is out/in; ONNX's may differ when given as `scales`
        if not math.isclose(scale[a] * x.shape[a], out_shape[a], rel_tol=1e-6):
            return None
    if antialias and (oh < h or ow < w):
        return None
    if (ctm == "pytorch_half_pixel" or ctm == "align_corners") and min(oh, ow) < 2:
        return None
    if not (is_nhwc(x) or (x.flags.c_contiguous and min(h, w) >= 2)) or not _finite(x):
        return None   # other strides; non-finite values (XNNPACK's a + (b - a) * t turns inf into NaN)
    xmode = _RESIZE_CTM[ctm]
    if is_nhwc(x):
        y = native.xnn_resize_bilinear2d(nhwc_buffer(x), (oh, ow), xmode, pool=ctx.pool)
        return y.transpose(0, 3, 1, 2)
    return native.xnn_resize_bilinear2d(x, (oh, ow), xmode, nchw=True, pool=ctx.pool)


@op("Resize", since=10, backend="native")
def Resize10(X, scales, *, mode="nearest", _ctx):
    y = _resize(X, scales, None, _ctx, mode=mode, ctm="asymmetric")
    return y if y is not None else resize.Resize10(X, scales, mode=mode)


@op("Resize", since=11, backend="native")
def Resize11(X, roi=None, scales=None, sizes=None, *, coordinate_transformation_mode="half_pixel",
             cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0, mode="nearest",
             nearest_mode="round_prefer_floor", _ctx):
    y = _resize(X, scales, sizes, _ctx, mode=mode, ctm=coordinate_transformation_mode,
                exclude_outside=exclude_outside)
    return y if y is not None else resize.Resize11(
        X, roi, scales, sizes, coordinate_transformation_mode=coordinate_transformation_mode,
        cubic_coeff_a=cubic_coeff_a, exclude_outside=exclude_outside, extrapolation_value=extrapolation_value,
        mode=mode, nearest_mode=nearest_mode)


@op("Resize", since=18, backend="native")
def Resize18(X, roi=None, scales=None, sizes=None, *, antialias=0, axes=None,
             coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.75, exclude_outside=0,
             extrapolation_value=0.0, keep_aspect_ratio_policy="stretch", mode="nearest",
             nearest_mode="round_prefer_floor", _ctx):
    y = _resize(X, scales, sizes, _ctx, mode=mode, ctm=coordinate_transformation_mode,
                exclude_outside=exclude_outside, antialias=antialias, axes=axes,
                keep_aspect_ratio_policy=keep_aspect_ratio_policy)
    return y if y is not None else resize.Resize18(
        X, roi, scales, sizes, antialias=antialias, axes=axes,
        coordinate_transformation_mode=coordinate_transformation_mode, cubic_coeff_a=cubic_coeff_a,
        exclude_outside=exclude_outside, extrapolation_value=extrapolation_value,
        keep_aspect_ratio_policy=keep_aspect_ratio_policy, mode=mode, nearest_mode=nearest_mode)


@op("Resize", since=19, backend="native")
def Resize19(X, roi=None, scales=None, sizes=None, *, antialias=0, axes=None,
             coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.75, exclude_outside=0,
             extrapolation_value=0.0, keep_aspect_ratio_policy="stretch", mode="nearest",
             nearest_mode="round_prefer_floor", _ctx):
    y = _resize(X, scales, sizes, _ctx, mode=mode, ctm=coordinate_transformation_mode,
                exclude_outside=exclude_outside, antialias=antialias, axes=axes,
                keep_aspect_ratio_policy=keep_aspect_ratio_policy)
    return y if y is not None else resize.Resize19(
        X, roi, scales, sizes, antialias=antialias, axes=axes,
        coordinate_transformation_mode=coordinate_transformation_mode, cubic_coeff_a=cubic_coeff_a,
        exclude_outside=exclude_outside, extrapolation_value=extrapolation_value,
        keep_aspect_ratio_policy=keep_aspect_ratio_policy, mode=mode, nearest_mode=nearest_mode)
