"""Reductions and normalising ops: Reduce*, ArgMax/ArgMin, CumSum, Softmax/LogSoftmax/Hardmax.

Numpy reference implementations. Trade-off: float16 inputs are accumulated in float32 (one
extra full-size temporary) because numpy would otherwise accumulate in half precision;
Softmax-like ops allocate only their output and do every step in place on it, since the
softmax of attention scores is the largest tensor of a Stable Diffusion run.
Reference: https://onnx.ai/onnx/operators/ (one section per op).
"""
from __future__ import annotations

import numpy as np

from .registry import op


def _work_dtype(dtype: np.dtype) -> np.dtype:
    """Accumulation dtype: float16 -> float32, else unchanged."""
    return np.dtype(np.float32) if dtype == np.float16 else np.dtype(dtype)


def _norm_axes(name: str, x: np.ndarray, axes, noop_with_empty_axes: int):
    """ONNX axes (attribute list or 1-D int64 input) -> tuple of axes, None (all), or "noop"."""
    if axes is not None:
        axes = [int(a) for a in np.asarray(axes).reshape(-1)]
    if not axes:
        return "noop" if noop_with_empty_axes else None
    out = []
    for a in axes:
        if not -x.ndim <= a < max(x.ndim, 1):
            raise ValueError(f"{name}: axis {a} out of range for input of shape {x.shape}")
        out.append(a % max(x.ndim, 1))
    return tuple(sorted(set(out)))


def _reduce(name: str, kernel, x: np.ndarray, axes, keepdims: int, noop_with_empty_axes: int = 0):
    """Shared body: resolve axes, then ``kernel(x, axis, keepdims=True)``, cast to x's dtype."""
    ax = _norm_axes(name, x, axes, noop_with_empty_axes)
    if ax == "noop":
        # Reduce over the empty axis set: each element is its own set, so ReduceL1 gives
        # |x|, ReduceSumSquare x^2, ReduceLogSum log(x) (as onnxruntime does), the rest x.
        ax = ()
    if x.ndim == 0:  # kernels chain out= on their results, which numpy would make scalars
        return _reduce(name, kernel, x.reshape(1), None, 0).reshape(())
    with np.errstate(all="ignore"):
        res = kernel(x, ax, True)  # keepdims=True: always an ndarray, never a numpy scalar
    if not keepdims:
        res = res.reshape([n for i, n in enumerate(x.shape) if ax is not None and i not in ax])
    return np.asarray(res, dtype=x.dtype)


# ---- kernels: (x, axis, keepdims) -> array; empty reductions give the ONNX identity value.
# _reduce always passes keepdims=True so kernels can work in place on their results.

def _k_sum(x, axis, keepdims):
    return np.sum(x, axis=axis, keepdims=keepdims, dtype=_work_dtype(x.dtype))


def _k_mean(x, axis, keepdims):
    work = _work_dtype(x.dtype) if x.dtype.kind == "f" else np.dtype(np.float64)
    s = np.sum(x, axis=axis, keepdims=keepdims, dtype=work)
    count = int(np.prod([x.shape[a] for a in (range(x.ndim) if axis is None else axis)]))
    s /= count  # empty set: 0/0 -> nan
    return s if x.dtype.kind == "f" else np.trunc(s)


def _lowest(dtype):
    return -np.inf if dtype.kind == "f" else (np.iinfo(dtype).min if dtype.kind in "iu" else False)


def _highest(dtype):
    return np.inf if dtype.kind == "f" else (np.iinfo(dtype).max if dtype.kind in "iu" else True)


def _k_max(x, axis, keepdims):
    return np.max(x, axis=axis, keepdims=keepdims, initial=_lowest(x.dtype))


def _k_min(x, axis, keepdims):
    return np.min(x, axis=axis, keepdims=keepdims, initial=_highest(x.dtype))


def _k_prod(x, axis, keepdims):
    return np.prod(x, axis=axis, keepdims=keepdims, dtype=_work_dtype(x.dtype))


def _k_l1(x, axis, keepdims):
    return np.sum(np.abs(x), axis=axis, keepdims=keepdims, dtype=_work_dtype(x.dtype))


def _k_sum_square(x, axis, keepdims):
    w = x.astype(_work_dtype(x.dtype))
    np.square(w, out=w)
    return np.sum(w, axis=axis, keepdims=keepdims)


def _k_l2(x, axis, keepdims):
    s = _k_sum_square(x, axis, keepdims)
    return np.sqrt(s) if x.dtype.kind == "f" else np.floor(np.sqrt(s))


def _k_log_sum(x, axis, keepdims):
    return np.log(_k_sum(x, axis, keepdims))


def _k_log_sum_exp(x, axis, keepdims):
    # log(sum(exp(x - m))) + m with m the (finite) max, so exp never overflows
    w = x.astype(_work_dtype(x.dtype) if x.dtype.kind == "f" else np.float64)
    m = np.max(w, axis=axis, keepdims=True, initial=-np.inf)
    m[~np.isfinite(m)] = 0
    w -= m
    np.exp(w, out=w)
    s = np.sum(w, axis=axis, keepdims=keepdims)
    np.log(s, out=s)
    s += m
    return s


_REDUCE = {
    "ReduceSum": (_k_sum, 13), "ReduceMean": (_k_mean, 18), "ReduceMax": (_k_max, 18),
    "ReduceMin": (_k_min, 18), "ReduceProd": (_k_prod, 18), "ReduceL1": (_k_l1, 18),
    "ReduceL2": (_k_l2, 18), "ReduceSumSquare": (_k_sum_square, 18),
    "ReduceLogSum": (_k_log_sum, 18), "ReduceLogSumExp": (_k_log_sum_exp, 18),
}


def _make_reduce(name: str, kernel):
    def with_attr(data, axes=None, keepdims=1):
        return _reduce(name, kernel, data, axes, keepdims)

    def with_input(data, axes=None, keepdims=1, noop_with_empty_axes=0):
        return _reduce(name, kernel, data, axes, keepdims, noop_with_empty_axes)

    with_attr.__name__ = with_attr.__qualname__ = f"{name}1"
    with_input.__name__ = with_input.__qualname__ = name
    with_attr.__doc__ = f"ONNX {name} up to the axes-input version: axes is an attribute."
    with_input.__doc__ = f"ONNX {name}: axes is an optional 1-D int64 input."
    return with_attr, with_input


# Reference: ReduceSum-13 and Reduce*-18 moved axes from an attribute to an input and
# added noop_with_empty_axes; earlier versions only widened the accepted dtypes.
for _name, (_kernel, _input_since) in _REDUCE.items():
    _with_attr, _with_input = _make_reduce(_name, _kernel)
    op(_name, since=1)(_with_attr)
    op(_name, since=_input_since)(_with_input)


# ---------------------------------------------------------------- ArgMax / ArgMin

def _arg(name: str, fn, x: np.ndarray, axis: int, keepdims: int, select_last_index: int):
    if not -x.ndim <= axis < max(x.ndim, 1):
        raise ValueError(f"{name}: axis {axis} out of range for input of shape {x.shape}")
    axis %= max(x.ndim, 1)
    if select_last_index:
        idx = fn(np.flip(x, axis=axis), axis=axis, keepdims=True)
        idx = (x.shape[axis] - 1) - idx
    else:
        idx = fn(x, axis=axis, keepdims=True)
    if not keepdims:
        idx = np.squeeze(idx, axis=axis)
    return np.asarray(idx, dtype=np.int64)


@op("ArgMax", since=1)
def ArgMax(data, axis=0, keepdims=1, select_last_index=0):
    return _arg("ArgMax", np.argmax, data, axis, keepdims, select_last_index)


@op("ArgMin", since=1)
def ArgMin(data, axis=0, keepdims=1, select_last_index=0):
    return _arg("ArgMin", np.argmin, data, axis, keepdims, select_last_index)


# ---------------------------------------------------------------- CumSum

@op("CumSum", since=11)
def CumSum(x, axis, exclusive=0, reverse=0):
    if axis.size != 1:
        raise ValueError(f"CumSum: axis must be a scalar, got shape {axis.shape}")
    ax = int(axis.reshape(()))
    if not -x.ndim <= ax < x.ndim:
        raise ValueError(f"CumSum: axis {ax} out of range for input of shape {x.shape}")
    ax %= x.ndim
    src = np.flip(x, axis=ax) if reverse else x
    out = np.cumsum(src, axis=ax, dtype=_work_dtype(x.dtype))
    if exclusive:
        # shift by one along the axis: out[i] = sum of src[:i]
        out = np.roll(out, 1, axis=ax)
        out[(slice(None),) * ax + (0,)] = 0
    if reverse:
        out = np.flip(out, axis=ax)
    return np.ascontiguousarray(out, dtype=x.dtype)


# ---------------------------------------------------------------- Softmax family

def _softmax_into(x: np.ndarray, axis: int, log: bool) -> np.ndarray:
    """(Log)softmax over one axis; allocates the output only (float16 -> float32 first)."""
    work = _work_dtype(x.dtype)
    with np.errstate(all="ignore"):
        m = np.max(x, axis=axis, keepdims=True).astype(work)
        out = np.subtract(x, m, dtype=work)      # the single full-size buffer
        del m
        if log:
            s = np.exp(out).sum(axis=axis, keepdims=True)
            np.log(s, out=s)
            out -= s
        else:
            np.exp(out, out=out)
            out /= out.sum(axis=axis, keepdims=True)
    return out if out.dtype == x.dtype else out.astype(x.dtype)


def _coerce_2d(x: np.ndarray, axis: int, name: str):
    """Opset 1/11 semantics: flatten to [prod(shape[:axis]), prod(shape[axis:])], work on axis 1."""
    if not -x.ndim <= axis <= x.ndim:
        raise ValueError(f"{name}: axis {axis} out of range for input of shape {x.shape}")
    if axis < 0:
        axis += x.ndim
    rows = int(np.prod(x.shape[:axis]))
    return x.reshape(rows, -1)


def _single_axis(x: np.ndarray, axis: int, name: str) -> int:
    if not -x.ndim <= axis < max(x.ndim, 1):
        raise ValueError(f"{name}: axis {axis} out of range for input of shape {x.shape}")
    return axis % max(x.ndim, 1)


def _hardmax(x: np.ndarray, axis: int) -> np.ndarray:
    out = np.zeros_like(x)
    if x.size:
        idx = np.argmax(x, axis=axis, keepdims=True)
        np.put_along_axis(out, idx, 1, axis=axis)
    return out


@op("Softmax", since=1)
def Softmax1(x, axis=1):
    return _softmax_into(_coerce_2d(x, axis, "Softmax"), 1, log=False).reshape(x.shape)


@op("Softmax", since=13)
def Softmax13(x, axis=-1):
    return _softmax_into(x, _single_axis(x, axis, "Softmax"), log=False)


@op("LogSoftmax", since=1)
def LogSoftmax1(x, axis=1):
    return _softmax_into(_coerce_2d(x, axis, "LogSoftmax"), 1, log=True).reshape(x.shape)


@op("LogSoftmax", since=13)
def LogSoftmax13(x, axis=-1):
    return _softmax_into(x, _single_axis(x, axis, "LogSoftmax"), log=True)


@op("Hardmax", since=1)
def Hardmax1(x, axis=1):
    return _hardmax(_coerce_2d(x, axis, "Hardmax"), 1).reshape(x.shape)


@op("Hardmax", since=13)
def Hardmax13(x, axis=-1):
    return _hardmax(x, _single_axis(x, axis, "Hardmax"))
