"""Pooling ops: MaxPool (with Indices), AveragePool, LpPool, their Global forms, MaxUnpool.

Trade-off: one vectorised pass per kernel tap. For each tap the output positions whose
window element lies inside the input are reduced in place with the matching strided input
slice, so no padded copy of the input is ever made and the extra memory is one output-sized
accumulator (plus a mask/index temporary when MaxPool returns Indices). Padding therefore
never takes part in max; for averages it enters only through the divisor.
Reference: https://onnx.ai/onnx/operators/onnx__MaxPool.html, onnx__AveragePool.html,
           onnx__LpPool.html, onnx__MaxUnpool.html
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from .conv import _ints, compute_dtype, resolve_pads, tap_range, window_output_shape
from .registry import op


def _geometry(op_name, x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode):
    r = x.ndim - 2
    if r < 1:
        raise ValueError(f"{op_name}: input {x.shape} must be [N, C, *spatial]")
    if kernel_shape is None or len(kernel_shape) != r:
        raise ValueError(f"{op_name}: kernel_shape {kernel_shape} must have {r} values for input {x.shape}")
    kernel = [int(k) for k in kernel_shape]
    strides = _ints(strides, r, 1, "strides", op_name)
    dilations = _ints(dilations, r, 1, "dilations", op_name)
    pads = resolve_pads(op_name, x.shape[2:], kernel, strides, dilations, pads, auto_pad)
    out_sp = window_output_shape(x.shape[2:], kernel, strides, pads, dilations, bool(ceil_mode))
    return kernel, strides, pads, dilations, out_sp


def _taps(kernel, strides, pads, dilations, in_sp, out_sp):
    """Yield (tap, output slices, input slices) for every tap that touches the input."""
    r = len(kernel)
    for k in itertools.product(*(range(n) for n in kernel)):
        ranges = [tap_range(k[i], strides[i], pads[i], dilations[i], out_sp[i], in_sp[i]) for i in range(r)]
        if all(rg is not None for rg in ranges):
            yield k, (..., *(rg[0] for rg in ranges)), (..., *(rg[1] for rg in ranges))


def _max_pool(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, storage_order, want_indices):
    kernel, strides, pads, dilations, out_sp = _geometry("MaxPool", x, kernel_shape, strides, pads,
                                                         dilations, auto_pad, ceil_mode)
    lowest = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    y = np.full(x.shape[:2] + tuple(out_sp), lowest, dtype=x.dtype)
    in_sp = x.shape[2:]
    if not want_indices:
        for _, osl, isl in _taps(kernel, strides, pads, dilations, in_sp, out_sp):
            np.maximum(y[osl], x[isl], out=y[osl])
        return y
    if storage_order not in (0, 1):
        raise ValueError(f"MaxPool: storage_order {storage_order} must be 0 or 1")
    # Flat offset of each spatial coordinate: row-major, or column-major when storage_order=1.
    strides_el = [math.prod(in_sp[i + 1:]) for i in range(len(in_sp))]
    if storage_order == 1:
        strides_el = [math.prod(in_sp[:i]) for i in range(len(in_sp))]
    idx = np.zeros(y.shape, dtype=np.int64)
    first = True
    for k, osl, isl in _taps(kernel, strides, pads, dilations, in_sp, out_sp):
        src, dst = x[isl], y[osl]
        mask = np.ones(dst.shape, dtype=bool) if first else src > dst
        first = False
        np.copyto(dst, src, where=mask)
        pos = 0
        for i, s in enumerate(isl[1:]):
            coord = np.arange(s.start, s.stop, s.step, dtype=np.int64) * strides_el[i]
            pos = pos + coord.reshape((-1,) + (1,) * (len(in_sp) - 1 - i))
        np.copyto(idx[osl], np.broadcast_to(pos, dst.shape), where=mask)
    # Indices count over the whole [N, C, *S] tensor. Reference: MaxPool output `Indices`.
    plane = math.prod(in_sp)
    base = np.arange(x.shape[0] * x.shape[1], dtype=np.int64).reshape(x.shape[:2] + (1,) * len(in_sp)) * plane
    idx += base
    return y, idx


@op("MaxPool", since=1)
def MaxPool1(x, *, auto_pad="NOTSET", kernel_shape=None, pads=None, strides=None):
    return _max_pool(x, kernel_shape, strides, pads, None, auto_pad, 0, 0, False)


@op("MaxPool", since=8)
def MaxPool8(x, *, auto_pad="NOTSET", kernel_shape=None, pads=None, storage_order=0, strides=None, _noutputs=1):
    return _max_pool(x, kernel_shape, strides, pads, None, auto_pad, 0, storage_order, _noutputs > 1)


@op("MaxPool", since=10)
def MaxPool10(x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, pads=None,
              storage_order=0, strides=None, _noutputs=1):
    return _max_pool(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, storage_order, _noutputs > 1)


def _window_counts(kernel, strides, pads, dilations, in_sp, out_sp, include_pad):
    """Per output position, the number of window taps that land in the input (or, with
    include_pad, in the explicitly padded input; taps past it from ceil_mode never count)."""
    r = len(kernel)
    total = None
    for i in range(r):
        cnt = np.zeros(out_sp[i], dtype=np.float64)
        for k in range(kernel[i]):
            if include_pad:
                rg = tap_range(k, strides[i], 0, dilations[i], out_sp[i], in_sp[i] + pads[i] + pads[r + i])
            else:
                rg = tap_range(k, strides[i], pads[i], dilations[i], out_sp[i], in_sp[i])
            if rg is not None:
                cnt[rg[0]] += 1
        cnt = cnt.reshape((-1,) + (1,) * (r - 1 - i))
        total = cnt if total is None else total * cnt
    return total


def _sum_pool(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, p=None):
    """Sum over each window of x (p=None) or of |x|**p, in the compute dtype."""
    kernel, strides, pads, dilations, out_sp = _geometry("AveragePool" if p is None else "LpPool", x, kernel_shape,
                                                         strides, pads, dilations, auto_pad, ceil_mode)
    cdt = compute_dtype(x.dtype)
    acc = np.zeros(x.shape[:2] + tuple(out_sp), dtype=cdt)
    for _, osl, isl in _taps(kernel, strides, pads, dilations, x.shape[2:], out_sp):
        src = x[isl]
        if p is not None:
            src = np.abs(src, dtype=cdt) ** p
        np.add(acc[osl], src, out=acc[osl], dtype=cdt)
    return acc, (kernel, strides, pads, dilations, out_sp)


def _average_pool(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, count_include_pad):
    acc, geo = _sum_pool(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode)
    kernel, strides, pads, dilations, out_sp = geo
    counts = _window_counts(kernel, strides, pads, dilations, x.shape[2:], out_sp, bool(count_include_pad))
    acc /= np.maximum(counts, 1).astype(acc.dtype)
    return acc.astype(x.dtype, copy=False)


@op("AveragePool", since=1)
def AveragePool1(x, *, auto_pad="NOTSET", kernel_shape=None, pads=None, strides=None):
    return _average_pool(x, kernel_shape, strides, pads, None, auto_pad, 0, 0)


@op("AveragePool", since=7)
def AveragePool7(x, *, auto_pad="NOTSET", count_include_pad=0, kernel_shape=None, pads=None, strides=None):
    return _average_pool(x, kernel_shape, strides, pads, None, auto_pad, 0, count_include_pad)


@op("AveragePool", since=10)
def AveragePool10(x, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, kernel_shape=None, pads=None,
                  strides=None):
    return _average_pool(x, kernel_shape, strides, pads, None, auto_pad, ceil_mode, count_include_pad)


@op("AveragePool", since=19)
def AveragePool19(x, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None, kernel_shape=None,
                  pads=None, strides=None):
    return _average_pool(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, count_include_pad)


def _lp_pool(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, p):
    acc, _ = _sum_pool(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, p=p)
    return (acc ** (1.0 / p)).astype(x.dtype, copy=False)


@op("LpPool", since=2)
def LpPool2(x, *, auto_pad="NOTSET", kernel_shape=None, p=2, pads=None, strides=None):
    return _lp_pool(x, kernel_shape, strides, pads, None, auto_pad, 0, p)


@op("LpPool", since=18)
def LpPool18(x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, p=2, pads=None, strides=None):
    return _lp_pool(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, p)


def _spatial_axes(op_name, x):
    if x.ndim < 3:
        raise ValueError(f"{op_name}: input {x.shape} must be [N, C, *spatial]")
    return tuple(range(2, x.ndim))


@op("GlobalAveragePool", since=1)
def GlobalAveragePool(x):
    axes = _spatial_axes("GlobalAveragePool", x)
    return np.asarray(x.mean(axis=axes, keepdims=True, dtype=compute_dtype(x.dtype)), dtype=x.dtype)


@op("GlobalMaxPool", since=1)
def GlobalMaxPool(x):
    return np.asarray(x.max(axis=_spatial_axes("GlobalMaxPool", x), keepdims=True))


@op("GlobalLpPool", since=2)
def GlobalLpPool(x, *, p=2):
    axes = _spatial_axes("GlobalLpPool", x)
    s = (np.abs(x, dtype=compute_dtype(x.dtype)) ** p).sum(axis=axes, keepdims=True)
    return np.asarray(s ** (1.0 / p), dtype=x.dtype)


@op("MaxUnpool", since=9)
def MaxUnpool(x, indices, output_shape=None, *, kernel_shape=None, pads=None, strides=None):
    """Scatter x into zeros at MaxPool's flat Indices. Reference: MaxUnpool spec."""
    r = x.ndim - 2
    if kernel_shape is None or len(kernel_shape) != r or indices.shape != x.shape:
        raise ValueError(f"MaxUnpool: X {x.shape}, I {indices.shape}, kernel_shape {kernel_shape}: "
                         f"expected I shaped like X and {r} kernel values")
    strides = _ints(strides, r, 1, "strides", "MaxUnpool")
    pads = _ints(pads, 2 * r, 0, "pads", "MaxUnpool")
    # Indices address the default unpooled shape; a larger output_shape pads it at the end.
    shape = x.shape[:2] + tuple((n - 1) * s + k - pads[i] - pads[r + i]
                                for i, (n, s, k) in enumerate(zip(x.shape[2:], strides, kernel_shape)))
    y = np.zeros(shape, dtype=x.dtype)
    y.reshape(-1)[indices.reshape(-1)] = x.reshape(-1)
    if output_shape is not None and tuple(int(v) for v in output_shape) != shape:
        target = tuple(int(v) for v in output_shape)
        if len(target) != len(shape) or any(t < s for t, s in zip(target, shape)):
            raise ValueError(f"MaxUnpool: output_shape {target} is smaller than the unpooled shape {shape}")
        padded = np.zeros(target, dtype=x.dtype)
        padded[tuple(slice(0, n) for n in shape)] = y
        y = padded
    return y
