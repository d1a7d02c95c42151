"""Elementwise ONNX ops: unary math and activations, broadcasting binary/variadic ops, Cast.

Numpy reference implementations. Trade-off: each op allocates exactly one full-size output
and works in place on it (``out=``) where that saves a temporary; inputs are never
modified. float16 stays float16 for ops numpy evaluates element by element (numpy's half
loops round once per element), but composite formulas (Sigmoid, Gelu, Erf, Mish, ...) run in
float32 and are cast back once, trading one extra temporary for accuracy. Floating-point
warnings are silenced where ONNX defines the result (inf/nan propagation, x/0).
Reference: https://onnx.ai/onnx/operators/ (one section per op).
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numpy.polynomial import chebyshev as _cheb

from ..dtypes import onnx_to_numpy
from .registry import op


# ---------------------------------------------------------------- helpers

def _work_dtype(dtype: np.dtype) -> np.dtype:
    """Dtype to evaluate composite float formulas in: float16 -> float32, else unchanged."""
    return np.dtype(np.float32) if dtype == np.float16 else np.dtype(dtype)


def _asarray(res, dtype) -> np.ndarray:
    """ufuncs return numpy scalars for 0-d inputs; ONNX wants an ndarray of ``dtype``."""
    return np.asarray(res, dtype=dtype)


def _fits(buf, shape, dtype) -> bool:
    """Whether a donated buffer (see registry: ``_out``) can hold a result of shape/dtype."""
    return buf is not None and buf.shape == tuple(shape) and buf.dtype == dtype and buf.ndim > 0


_BLOCK = 1 << 15   # elements per block for composite formulas: their passes stay in cache


def _flat_pair(x: np.ndarray, out: np.ndarray):
    """1-D views of x and out walking both in x's memory order (channels-last stays
    channels-last), or None when the two are not laid out alike and contiguous."""
    order = sorted(range(x.ndim), key=lambda i: -x.strides[i])
    xv, ov = x.transpose(order), out.transpose(order)
    if xv.flags.c_contiguous and ov.flags.c_contiguous:
        return xv.reshape(-1), ov.reshape(-1)
    return None


def _blockwise(fn, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """out = fn(x) evaluated block by block (temporaries of one block only); out may be x.
    The output keeps x's memory order; a donated ``out`` may have any strides."""
    if not _fits(out, x.shape, x.dtype):
        out = np.empty_like(x)
    if x.size <= _BLOCK:
        out[...] = fn(x)
        return out
    flat = _flat_pair(x, out)
    if flat is None:        # strided input or a donated buffer laid out differently
        y = _blockwise(fn, np.ascontiguousarray(x))
        np.copyto(out, y)
        return out
    xf, of = flat
    for i in range(0, xf.size, _BLOCK):
        of[i:i + _BLOCK] = fn(xf[i:i + _BLOCK])
    return out


def _lift_0d(fn):
    """numpy returns scalars for 0-d results, which breaks ``out=`` chains: run 0-d x as (1,)."""
    @functools.wraps(fn)
    def wrapper(x, *args, **kwargs):
        if x.ndim == 0:
            return fn(x.reshape(1), *args, **kwargs).reshape(())
        return fn(x, *args, **kwargs)
    return wrapper


def _require_float(name: str, x: np.ndarray) -> None:
    if x.dtype.kind != "f":
        raise TypeError(f"{name}: input of dtype {x.dtype} (shape {x.shape}), expected a float tensor")


def _same_dtype(name: str, *xs: np.ndarray) -> None:
    dts = {x.dtype for x in xs}
    if len(dts) > 1:
        shapes = ", ".join(f"{x.dtype}{list(x.shape)}" for x in xs)
        raise TypeError(f"{name}: inputs must share one dtype, got {shapes}")


def _legacy_broadcast(name: str, a: np.ndarray, b: np.ndarray, broadcast: int, axis) -> np.ndarray:
    """Opset 1..6 binary ops: B is broadcast to A only with broadcast=1, aligned at ``axis``.

    Returns B reshaped so that numpy broadcasting does the rest.
    Reference: onnx Add-1/Add-6 (attributes broadcast, axis).
    """
    if not broadcast:
        if a.shape != b.shape:
            raise ValueError(f"{name}: shapes {a.shape} and {b.shape} differ and broadcast=0")
        return b
    if axis is None:
        return b
    start = axis + a.ndim if axis < 0 else axis
    trailing = a.ndim - start - b.ndim
    if trailing < 0:
        raise ValueError(f"{name}: cannot broadcast B{b.shape} into A{a.shape} at axis {axis}")
    return b.reshape(b.shape + (1,) * trailing)


# ---------------------------------------------------------------- unary math

# Ops numpy evaluates exactly or per element with a single rounding, for every dtype.
_MATH_UNARY = {
    # name: (ufunc, since)
    "Abs": (np.abs, 1), "Neg": (np.negative, 1), "Reciprocal": (np.reciprocal, 1),
    "Sqrt": (np.sqrt, 1), "Exp": (np.exp, 1), "Log": (np.log, 1), "Tanh": (np.tanh, 1),
    "Floor": (np.floor, 1), "Ceil": (np.ceil, 1),
    "Sin": (np.sin, 7), "Cos": (np.cos, 7), "Tan": (np.tan, 7),
    "Asin": (np.arcsin, 7), "Acos": (np.arccos, 7), "Atan": (np.arctan, 7),
    "Sinh": (np.sinh, 9), "Cosh": (np.cosh, 9), "Asinh": (np.arcsinh, 9),
    "Acosh": (np.arccosh, 9), "Atanh": (np.arctanh, 9),
    "Sign": (np.sign, 9),
    "Round": (np.rint, 11),  # rint rounds half to even, as ONNX requires
}


def _make_math_unary(name: str, ufunc):
    def impl(x, consumed_inputs=None, *, _out=None):  # consumed_inputs: ignored opset-1 legacy attribute
        with np.errstate(all="ignore"):
            if _fits(_out, x.shape, x.dtype):
                return ufunc(x, out=_out)
            return np.asarray(ufunc(x), dtype=x.dtype)
    impl.__name__ = impl.__qualname__ = name
    impl.__doc__ = f"ONNX {name}: elementwise ``np.{ufunc.__name__}``. Reference: onnx {name}."
    return impl


for _name, (_ufunc, _since) in _MATH_UNARY.items():
    op(_name, since=_since)(_make_math_unary(_name, _ufunc))


@op("Not", since=1)
def Not(x):
    return _asarray(np.logical_not(x), np.bool_)


@op("IsNaN", since=9)
def IsNaN(x):
    return _asarray(np.isnan(x), np.bool_)


@op("IsInf", since=10)
def IsInf(x, detect_negative=1, detect_positive=1):
    if detect_negative and detect_positive:
        return _asarray(np.isinf(x), np.bool_)
    if detect_negative:
        return _asarray(np.isneginf(x), np.bool_)
    if detect_positive:
        return _asarray(np.isposinf(x), np.bool_)
    return np.zeros(x.shape, dtype=np.bool_)


# ---------------------------------------------------------------- erf

# erfc(z) = t * exp(-z^2 + g(t)), t = 1/(1 + z/2): g is smooth on t in (0, 1], so a
# degree-14 Chebyshev fit (done once here against math.erfc) is accurate to ~1e-12.
# Small |z| uses the Maclaurin series instead, where 1 - erfc would cancel.
def _fit_erfc_tail(degree: int = 14) -> np.ndarray:
    z = np.linspace(0.45, 10.0, 2000)
    t = 1.0 / (1.0 + 0.5 * z)
    g = np.log([math.erfc(v) for v in z]) + z * z - np.log(t)
    return _cheb.chebfit(2.0 * t - 1.0, g, degree)


_ERFC_TAIL = _fit_erfc_tail()
# float32 needs far less: degree 8 is within float32 rounding (max 1.9e-7 abs against
# math.erf on [-6, 6], the same as degree 14 once the result is rounded to float32).
_ERFC_TAIL_F32 = _fit_erfc_tail(8)
_ERF_SERIES_TERMS = 10   # |z| < 0.5: last term 0.25^10/10!/21 < 1e-13
_ERF_SPLIT = 0.5
_ERF_BLOCK = 1 << 15     # elements per block: the ~30 passes over a block stay in cache


def _clenshaw(coef: np.ndarray, u: np.ndarray) -> np.ndarray:
    """sum_k coef[k] T_k(u) for u in [-1, 1], in u's dtype, with three work arrays."""
    u2 = u * 2
    b1 = np.zeros_like(u)
    b2 = np.zeros_like(u)
    tmp = np.empty_like(u)
    for c in coef[:0:-1]:
        np.multiply(u2, b1, out=tmp)
        tmp -= b2
        tmp += c
        b2, b1, tmp = b1, tmp, b2
    np.multiply(u, b1, out=tmp)
    tmp -= b2
    tmp += coef[0]
    return tmp


def _erf(x: np.ndarray) -> np.ndarray:
    """erf in x's float dtype (float32 or float64), max error ~1e-7 relative in float32.

    Large tensors (a GELU in an SD UNet is 5M elements) go block by block, so the many
    elementwise passes of the formula run in cache rather than over RAM.
    """
    if x.size <= _ERF_BLOCK:
        return _erf_block(x)
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty_like(flat)
    for i in range(0, flat.size, _ERF_BLOCK):
        out[i:i + _ERF_BLOCK] = _erf_block(flat[i:i + _ERF_BLOCK])
    return out.reshape(x.shape)


def _erf_block(x: np.ndarray) -> np.ndarray:
    z = np.abs(x)
    # tail: erf = 1 - t * exp(-z^2 + g(t))
    t = z * 0.5
    t += 1
    np.reciprocal(t, out=t)
    g = _clenshaw(_ERFC_TAIL_F32 if x.dtype == np.float32 else _ERFC_TAIL, t * 2 - 1)
    g -= z * z
    np.exp(g, out=g)
    g *= t
    np.subtract(1, g, out=g)
    # small |z|: erf = 2/sqrt(pi) * sum_n (-1)^n z^(2n+1) / (n! (2n+1)), Horner in z^2
    small = z < _ERF_SPLIT
    if small.any():
        zs = z[small]
        z2 = zs * zs
        acc = np.zeros_like(zs)
        for n in range(_ERF_SERIES_TERMS, -1, -1):
            acc *= z2
            acc += (-1) ** n / (math.factorial(n) * (2 * n + 1))
        acc *= zs
        acc *= 2 / math.sqrt(math.pi)
        g[small] = acc
    np.copysign(g, x, out=g)
    return g


@op("Erf", since=9)
@_lift_0d
def Erf(x, *, _out=None):
    _require_float("Erf", x)
    with np.errstate(all="ignore"):
        if x.dtype == np.float16:
            return _asarray(_erf(x.astype(np.float32)), x.dtype)
        return _blockwise(_erf_block, x, _out)


# ---------------------------------------------------------------- activations

def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic in x's dtype: exp(min(x, 0)) / (1 + exp(-|x|)).

    Both exponents are <= 0, so nothing overflows, and there is no select: a masked
    ufunc (``where=``) costs several times the arithmetic itself.
    """
    num = np.minimum(x, x.dtype.type(0))
    np.exp(num, out=num)
    den = np.abs(x)
    np.negative(den, out=den)
    np.exp(den, out=den)
    den += 1
    num /= den
    return num


@op("Sigmoid", since=1)
@_lift_0d
def Sigmoid(x, consumed_inputs=None, *, _out=None):
    _require_float("Sigmoid", x)
    with np.errstate(all="ignore"):
        if x.dtype == np.float16:
            return _asarray(_sigmoid(x.astype(np.float32)), x.dtype)
        return _blockwise(_sigmoid, x, _out)


@op("Relu", since=1)
def Relu(x, consumed_inputs=None, *, _out=None):
    if _fits(_out, x.shape, x.dtype):
        return np.maximum(x, x.dtype.type(0), out=_out)
    return _asarray(np.maximum(x, x.dtype.type(0)), x.dtype)


@op("LeakyRelu", since=1)
@_lift_0d
def LeakyRelu(x, alpha=0.01, consumed_inputs=None):
    out = _asarray(np.multiply(x, alpha), x.dtype)
    np.copyto(out, x, where=x >= 0)
    return out


@op("ThresholdedRelu", since=10)
def ThresholdedRelu(x, alpha=1.0):
    out = np.zeros_like(x)
    np.copyto(out, x, where=x > alpha)
    return out


@op("PRelu", since=1)
def PRelu1(x, slope, consumed_inputs=None):
    """Opset 1..6: a 1-D slope of size C applies per channel (axis 1)."""
    if slope.ndim == 1 and slope.size > 1 and x.ndim >= 2 and x.shape[1] == slope.size:
        slope = slope.reshape((-1,) + (1,) * (x.ndim - 2))
    return PRelu7(x, slope)


@op("PRelu", since=7)
@_lift_0d
def PRelu7(x, slope):
    """Opset 7+: slope broadcasts to x (unidirectional numpy broadcasting)."""
    try:
        out = np.multiply(x, slope)
    except ValueError:
        raise ValueError(f"PRelu: slope {slope.shape} does not broadcast to x {x.shape}") from None
    if out.shape != x.shape:
        raise ValueError(f"PRelu: slope {slope.shape} must broadcast to x {x.shape}, got {out.shape}")
    out = _asarray(out, x.dtype)
    np.copyto(out, x, where=x >= 0)
    return out


@op("Elu", since=1)
@_lift_0d
def Elu(x, alpha=1.0, consumed_inputs=None):
    with np.errstate(all="ignore"):
        out = np.minimum(x, x.dtype.type(0))
        np.expm1(out, out=out)
        out *= x.dtype.type(alpha)
        np.copyto(out, x, where=x > 0)
    return _asarray(out, x.dtype)


@op("Selu", since=1)
@_lift_0d
def Selu(x, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875, consumed_inputs=None):
    with np.errstate(all="ignore"):
        out = np.minimum(x, x.dtype.type(0))
        np.expm1(out, out=out)
        out *= x.dtype.type(alpha)
        np.copyto(out, x, where=x > 0)
        out *= x.dtype.type(gamma)
    return _asarray(out, x.dtype)


@op("Celu", since=12)
@_lift_0d
def Celu(x, alpha=1.0):
    # max(0, x) + min(0, alpha * (exp(x / alpha) - 1)); the second term is 0 for x >= 0
    with np.errstate(all="ignore"):
        w = x.astype(_work_dtype(x.dtype))
        out = np.minimum(w, 0)
        out /= alpha
        np.expm1(out, out=out)
        out *= alpha
        np.copyto(out, w, where=w > 0)
    return _asarray(out, x.dtype)


@op("HardSigmoid", since=1)
@_lift_0d
def HardSigmoid(x, alpha=0.2, beta=0.5, consumed_inputs=None):
    out = np.multiply(x, x.dtype.type(alpha))
    out += x.dtype.type(beta)
    np.clip(out, 0, 1, out=out)
    return _asarray(out, x.dtype)


@op("HardSwish", since=14)
def HardSwish(x):
    # x * max(0, min(1, x/6 + 1/2))
    out = HardSigmoid(x, alpha=1.0 / 6.0, beta=0.5)
    out *= x
    return out


@op("Softplus", since=1)
def Softplus(x):
    with np.errstate(all="ignore"):
        return _asarray(np.logaddexp(x.astype(_work_dtype(x.dtype), copy=False), 0), x.dtype)


@op("Softsign", since=1)
@_lift_0d
def Softsign(x):
    out = np.abs(x)
    out += 1
    np.divide(x, out, out=out)
    return _asarray(out, x.dtype)


@op("Mish", since=18)
@_lift_0d
def Mish(x):
    # x * tanh(softplus(x))
    with np.errstate(all="ignore"):
        w = x.astype(_work_dtype(x.dtype), copy=False)
        out = np.logaddexp(w, 0)
        np.tanh(out, out=out)
        out *= w
    return _asarray(out, x.dtype)


@op("Gelu", since=20)
@_lift_0d
def Gelu(x, approximate="none"):
    _require_float("Gelu", x)
    with np.errstate(all="ignore"):
        w = x.astype(_work_dtype(x.dtype), copy=False)
        if approximate == "tanh":
            # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
            inner = w * w
            inner *= 0.044715
            inner += 1
            inner *= w
            inner *= math.sqrt(2.0 / math.pi)
            np.tanh(inner, out=inner)
        elif approximate == "none":
            # 0.5 x (1 + erf(x / sqrt(2)))
            inner = _erf(w * (1.0 / math.sqrt(2.0)))
        else:
            raise ValueError(f"Gelu: approximate={approximate!r}, expected 'none' or 'tanh'")
        inner += 1
        inner *= w
        inner *= 0.5
    return _asarray(inner, x.dtype)


@op("Clip", since=1)
def Clip1(x, min=-3.4028234663852886e38, max=3.4028234663852886e38, consumed_inputs=None):  # noqa: A002
    """Opset 1..10: bounds are attributes (defaults: the float32 range)."""
    lo = np.asarray(min).astype(x.dtype)
    hi = np.asarray(max).astype(x.dtype)
    return _asarray(np.minimum(np.maximum(x, lo), hi), x.dtype)


@op("Clip", since=11)
def Clip11(x, min=None, max=None):  # noqa: A002
    """Opset 11+: bounds are optional scalar inputs; min > max gives max everywhere."""
    out = np.array(x, copy=True)
    if min is not None:
        if min.size != 1:
            raise ValueError(f"Clip: min must be a scalar, got shape {min.shape}")
        np.maximum(out, min.reshape(()).astype(x.dtype), out=out)
    if max is not None:
        if max.size != 1:
            raise ValueError(f"Clip: max must be a scalar, got shape {max.shape}")
        np.minimum(out, max.reshape(()).astype(x.dtype), out=out)
    return out


# ---------------------------------------------------------------- binary arithmetic

def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer division truncating toward zero (C semantics), x/0 -> 0."""
    q = np.floor_divide(a, b)
    if a.dtype.kind == "i":
        r = a - q * b
        # floor is one below the truncated quotient for inexact quotients of mixed sign
        q += ((r != 0) & ((a < 0) != (b < 0))).astype(q.dtype)
    return q


def _div(a, b, out=None):
    if a.dtype.kind in "iu":
        return _int_div(a, b)
    return np.true_divide(a, b, out=out)


_ARITH = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": _div}


def _arith(name: str, a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    _same_dtype(name, a, b)
    with np.errstate(all="ignore"):
        try:
            if out is not None and a.dtype.kind == "f" and _fits(out, np.broadcast_shapes(a.shape, b.shape),
                                                                 a.dtype):
                return _ARITH[name](a, b, out=out)
            res = _ARITH[name](a, b)
        except ValueError:
            raise ValueError(f"{name}: shapes {a.shape} and {b.shape} do not broadcast") from None
    return _asarray(res, a.dtype)


def _make_arith(name: str):
    def legacy(a, b, broadcast=0, axis=None, consumed_inputs=None):
        return _arith(name, a, _legacy_broadcast(name, a, b, broadcast, axis))

    def modern(a, b, *, _out=None):
        return _arith(name, a, b, _out)

    legacy.__name__ = legacy.__qualname__ = f"{name}1"
    modern.__name__ = modern.__qualname__ = f"{name}7"
    legacy.__doc__ = f"ONNX {name} opset 1..6: legacy broadcast/axis attributes."
    modern.__doc__ = f"ONNX {name} opset 7+: numpy broadcasting."
    return legacy, modern


for _name in _ARITH:
    _legacy, _modern = _make_arith(_name)
    op(_name, since=1)(_legacy)
    op(_name, since=7)(_modern)


def _pow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Output dtype is the base's; the exponent may have any numeric dtype (opset 12+)."""
    with np.errstate(all="ignore"):
        try:
            if a.dtype.kind in "iu" and b.dtype.kind in "iu" and not (b < 0).any():
                res = np.power(a.astype(np.int64, copy=False), b.astype(np.int64, copy=False))
            elif a.dtype.kind == "f" and (b.dtype.kind != "f" or b.dtype.itemsize <= a.dtype.itemsize):
                w = _work_dtype(a.dtype)
                if b.size == 1 and float(b.reshape(())) == 2.0:
                    res = np.square(a, dtype=w)
                else:
                    res = np.power(a.astype(w, copy=False), b.astype(w, copy=False))
            else:
                res = np.power(a.astype(np.float64), b.astype(np.float64))
                if a.dtype.kind in "iu":
                    res = np.trunc(res)
        except ValueError:
            raise ValueError(f"Pow: shapes {a.shape} and {b.shape} do not broadcast") from None
    return _asarray(res, a.dtype)


@op("Pow", since=1)
def Pow1(a, b, broadcast=0, axis=None):
    return _pow(a, _legacy_broadcast("Pow", a, b, broadcast, axis))


@op("Pow", since=7)
def Pow7(a, b):
    return _pow(a, b)


@op("Mod", since=10)
def Mod(a, b, fmod=0):
    """fmod=0: result takes the divisor's sign (integers); fmod=1: the dividend's (C fmod)."""
    _same_dtype("Mod", a, b)
    with np.errstate(all="ignore"):
        res = np.fmod(a, b) if fmod else np.mod(a, b)
    return _asarray(res, a.dtype)


# ---------------------------------------------------------------- variadic

def _variadic(name: str, xs, combine) -> np.ndarray:
    if not xs or any(x is None for x in xs):
        raise ValueError(f"{name}: expected one or more inputs, got {len(xs)}")
    _same_dtype(name, *xs)
    try:
        shape = np.broadcast_shapes(*(x.shape for x in xs))
    except ValueError:
        raise ValueError(f"{name}: input shapes {[x.shape for x in xs]} do not broadcast") from None
    out = np.empty(shape, dtype=xs[0].dtype)
    out[...] = xs[0]
    with np.errstate(all="ignore"):
        for x in xs[1:]:
            combine(out, x, out=out)
    return out


@op("Max", since=1)
def Max(*xs, consumed_inputs=None):
    return _variadic("Max", xs, np.maximum)


@op("Min", since=1)
def Min(*xs, consumed_inputs=None):
    return _variadic("Min", xs, np.minimum)


@op("Sum", since=1)
def Sum(*xs, consumed_inputs=None):
    return _variadic("Sum", xs, np.add)


@op("Mean", since=1)
def Mean(*xs, consumed_inputs=None):
    if not xs or any(x is None for x in xs):
        raise ValueError(f"Mean: expected one or more inputs, got {len(xs)}")
    _same_dtype("Mean", *xs)
    work = _work_dtype(xs[0].dtype)
    acc = _variadic("Mean", [x.astype(work, copy=False) for x in xs], np.add)
    acc /= len(xs)
    return _asarray(acc, xs[0].dtype)


# ---------------------------------------------------------------- comparison and logic

_COMPARE = {
    # name: (ufunc, since of the numpy-broadcasting version, has a legacy opset-1 version)
    "Equal": (np.equal, 7, True), "Less": (np.less, 7, True), "Greater": (np.greater, 7, True),
    "LessOrEqual": (np.less_equal, 12, False), "GreaterOrEqual": (np.greater_equal, 12, False),
    "And": (np.logical_and, 7, True), "Or": (np.logical_or, 7, True), "Xor": (np.logical_xor, 7, True),
}


def _compare(name: str, ufunc, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    _same_dtype(name, a, b)
    try:
        return _asarray(ufunc(a, b), np.bool_)
    except ValueError:
        raise ValueError(f"{name}: shapes {a.shape} and {b.shape} do not broadcast") from None


def _make_compare(name: str, ufunc):
    def legacy(a, b, broadcast=0, axis=None):
        return _compare(name, ufunc, a, _legacy_broadcast(name, a, b, broadcast, axis))

    def modern(a, b):
        return _compare(name, ufunc, a, b)

    legacy.__name__ = legacy.__qualname__ = f"{name}1"
    modern.__name__ = modern.__qualname__ = name
    legacy.__doc__ = f"ONNX {name} opset 1..6: legacy broadcast/axis attributes; bool output."
    modern.__doc__ = f"ONNX {name}: numpy broadcasting; bool output."
    return legacy, modern


for _name, (_ufunc, _since, _has_legacy) in _COMPARE.items():
    _legacy, _modern = _make_compare(_name, _ufunc)
    if _has_legacy:
        op(_name, since=1)(_legacy)
    op(_name, since=_since)(_modern)


@op("Where", since=9)
def Where(condition, x, y):
    _same_dtype("Where", x, y)
    try:
        return _asarray(np.where(condition.astype(np.bool_, copy=False), x, y), x.dtype)
    except ValueError:
        raise ValueError(f"Where: shapes {condition.shape}, {x.shape}, {y.shape} do not broadcast") from None


# ---------------------------------------------------------------- bitwise

@op("BitShift", since=11)
def BitShift(x, y, direction=""):
    _same_dtype("BitShift", x, y)
    if direction == "LEFT":
        res = np.left_shift(x, y)
    elif direction == "RIGHT":
        res = np.right_shift(x, y)
    else:
        raise ValueError(f"BitShift: direction={direction!r}, expected 'LEFT' or 'RIGHT'")
    return _asarray(res, x.dtype)


@op("BitwiseAnd", since=18)
def BitwiseAnd(a, b):
    _same_dtype("BitwiseAnd", a, b)
    return _asarray(np.bitwise_and(a, b), a.dtype)


@op("BitwiseOr", since=18)
def BitwiseOr(a, b):
    _same_dtype("BitwiseOr", a, b)
    return _asarray(np.bitwise_or(a, b), a.dtype)


@op("BitwiseXor", since=18)
def BitwiseXor(a, b):
    _same_dtype("BitwiseXor", a, b)
    return _asarray(np.bitwise_xor(a, b), a.dtype)


@op("BitwiseNot", since=18)
def BitwiseNot(x):
    return _asarray(np.invert(x), x.dtype)


# ---------------------------------------------------------------- Cast

# Opset 1 names the target type by string. Reference: onnx Cast-1.
_CAST1_NAMES = {"FLOAT": 1, "UINT8": 2, "INT8": 3, "UINT16": 4, "INT16": 5, "INT32": 6, "INT64": 7,
                "BOOL": 9, "FLOAT16": 10, "DOUBLE": 11, "UINT32": 12, "UINT64": 13}


def _target(to: int) -> np.dtype:
    try:
        return onnx_to_numpy(to)
    except TypeError as e:
        raise TypeError(f"Cast: {e} (bfloat16, float8, int4 and string are not supported)") from None


def _cast(x: np.ndarray, dtype: np.dtype, name: str = "Cast") -> np.ndarray:
    """numpy astype: float -> int truncates toward zero, x != 0 -> bool, bool -> 0/1."""
    if x.dtype.kind in "OSU":
        raise TypeError(f"{name}: string input (shape {x.shape}) is not supported")
    with np.errstate(all="ignore"):
        return x.astype(dtype, copy=True)


@op("Cast", since=1)
def Cast1(x, to=1):
    if isinstance(to, str):
        if to.upper() not in _CAST1_NAMES:
            raise TypeError(f"Cast: target type {to!r} is not supported (supported: {sorted(_CAST1_NAMES)})")
        to = _CAST1_NAMES[to.upper()]
    return _cast(x, _target(to))


@op("Cast", since=6)
def Cast6(x, to=1):
    return _cast(x, _target(to))


@op("Cast", since=19)
def Cast19(x, to=1, saturate=1, round_mode="up"):
    """saturate and round_mode only concern float8/float4 targets, which are unsupported."""
    return _cast(x, _target(to))


@op("CastLike", since=15)
def CastLike(x, target_type, saturate=1, round_mode="up"):
    return _cast(x, target_type.dtype, "CastLike")
