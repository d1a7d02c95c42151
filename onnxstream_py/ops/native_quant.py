"""Native DequantizeLinear: int8/uint8 -> float32 per tensor or per axis, threaded in C.

This is the fetch-time path of int8 weights (w8a32 models: every large Conv/MatMul/Gemm weight
is an int8 initializer followed by DequantizeLinear). Trade-off: only the case that matters
(8-bit input, float32 scale and output, no blocking) goes to C; every other case - 16/32-bit
inputs, float16 scales, blocked scales, strided inputs that would need a copy anyway - goes to
the numpy reference in ops/quant.py, which stays the single statement of the op's semantics and
errors. The kernel's result equals the reference bit for bit (same float32 operations).
Reference: https://onnx.ai/onnx/operators/onnx__DequantizeLinear.html
"""
from __future__ import annotations

import numpy as np

from .. import native
from . import quant
from .registry import op

_Q8 = (np.dtype(np.int8), np.dtype(np.uint8))


def _native_ok(x, x_scale, x_zero_point, axis, block_size=0, output_dtype=0) -> bool:
    if not (isinstance(x, np.ndarray) and x.dtype in _Q8 and x.flags.c_contiguous and x.size > 0):
        return False
    s = np.asarray(x_scale)
    if s.dtype != np.float32 or block_size or output_dtype not in (0, 1):
        return False
    if s.size == 1 and s.ndim <= 1:
        pass
    elif s.ndim != 1 or not -x.ndim <= axis < x.ndim or s.shape[0] != x.shape[axis]:
        return False        # the reference raises the error naming the shapes
    return x_zero_point is None or (np.asarray(x_zero_point).dtype == x.dtype
                                    and np.asarray(x_zero_point).size == s.size)


def _dequantize(x, x_scale, x_zero_point, axis, pool):
    return native.dequantize_8bit_f32(x, np.asarray(x_scale), x_zero_point, axis, pool=pool)


@op("DequantizeLinear", since=10, backend="native")
def DequantizeLinear10(x, x_scale, x_zero_point=None, *, _ctx):
    if np.asarray(x_scale).size == 1 and _native_ok(x, x_scale, x_zero_point, 1):
        return _dequantize(x, x_scale, x_zero_point, 1, _ctx.pool)
    return quant.DequantizeLinear10(x, x_scale, x_zero_point)


@op("DequantizeLinear", since=13, backend="native")
def DequantizeLinear13(x, x_scale, x_zero_point=None, axis=1, *, _ctx):
    if _native_ok(x, x_scale, x_zero_point, axis):
        return _dequantize(x, x_scale, x_zero_point, axis, _ctx.pool)
    return quant.DequantizeLinear13(x, x_scale, x_zero_point, axis=axis)


@op("DequantizeLinear", since=21, backend="native")
def DequantizeLinear21(x, x_scale, x_zero_point=None, axis=1, block_size=0, *, _ctx):
    if _native_ok(x, x_scale, x_zero_point, axis, block_size):
        return _dequantize(x, x_scale, x_zero_point, axis, _ctx.pool)
    return quant.DequantizeLinear21(x, x_scale, x_zero_point, axis=axis, block_size=block_size)


@op("DequantizeLinear", since=23, backend="native")
def DequantizeLinear23(x, x_scale, x_zero_point=None, axis=1, block_size=0, output_dtype=0, *, _ctx):
    if _native_ok(x, x_scale, x_zero_point, axis, block_size, output_dtype):
        return _dequantize(x, x_scale, x_zero_point, axis, _ctx.pool)
    return quant.DequantizeLinear23(x, x_scale, x_zero_point, axis=axis, block_size=block_size,
                                    output_dtype=output_dtype)
