"""QuantizeLinear / DequantizeLinear: the numpy reference of ONNX's linear quantization.

These two ops are the interchange format of every integer precision mode (see docs/FORMAT.md,
"Precision"): a w8a32 or w8a8 model is a standard ONNX QDQ graph, so it runs correctly through
these plain ops, and the plan may later fuse the patterns into int8 kernels. They are also the
numpy twins of the native dequantize kernel (ops/native_quant.py).

Trade-off: scales and zero points are broadcast as views (no repeat) for per-tensor and per-axis
quantization; blocked quantization (opset 21) repeats the scale along its axis, which is
a temporary as large as the input - acceptable for the reference path.
Integer targets only: float8 / float4 / int4 / int2 outputs are rejected with a clear error (the
engine has no numpy dtype for them).
Reference: https://onnx.ai/onnx/operators/onnx__QuantizeLinear.html,
https://onnx.ai/onnx/operators/onnx__DequantizeLinear.html
"""
from __future__ import annotations

import numpy as np

from ..dtypes import ONNX_TO_NUMPY
from .registry import op

# TensorProto enum -> numpy dtype of the integer quantized types: QuantizeLinear produces the first
# four, DequantizeLinear also reads int32 (bias-like tensors).
_INT_TYPES = {2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32}
_Q_TYPES = {k: v for k, v in _INT_TYPES.items() if v is not np.int32}
_UNSUPPORTED = {17: "float8e4m3fn", 18: "float8e4m3fnuz", 19: "float8e5m2", 20: "float8e5m2fnuz",
                21: "uint4", 22: "int4", 23: "float4e2m1", 25: "uint2", 26: "int2"}
_FLOAT_KINDS = "f"


def _quant_dtype(name: str, elem_type: int) -> np.dtype:
    if elem_type in _Q_TYPES:
        return np.dtype(_Q_TYPES[elem_type])
    what = _UNSUPPORTED.get(elem_type, f"element type {elem_type}")
    raise TypeError(f"{name}: quantized type {what} is not supported "
                    f"(supported: int8, uint8, int16, uint16)")


def _check_zero_point_dtype(name: str, zp: np.ndarray) -> None:
    if zp.dtype not in set(np.dtype(t) for t in _Q_TYPES.values()):
        raise TypeError(f"{name}: zero point dtype {zp.dtype} is not a supported quantized type "
                        f"(int8, uint8, int16, uint16)")


def _broadcast_param(name: str, what: str, value: np.ndarray, shape: tuple, axis: int,
                     block_size: int) -> np.ndarray:
    """value (a scale or zero point) shaped to broadcast against an input of ``shape``.

    Per-tensor: a scalar or a 1-element tensor. Per-axis: 1-D of length shape[axis].
    Blocked (block_size > 0): same rank as the input, shape[axis] -> ceil(shape[axis] / block_size).
    """
    if value.size == 1 and value.ndim <= 1 and not block_size:
        return value.reshape(())
    rank = len(shape)
    if not -rank <= axis < rank:
        raise ValueError(f"{name}: axis {axis} out of range for an input of rank {rank}")
    axis %= rank
    if not block_size:
        if value.ndim != 1 or value.shape[0] != shape[axis]:
            raise ValueError(f"{name}: {what} of shape {list(value.shape)} does not fit input {list(shape)} "
                             f"along axis {axis}: expected a scalar or [{shape[axis]}]")
        dims = [1] * rank
        dims[axis] = shape[axis]
        return value.reshape(dims)
    if block_size < 0:
        raise ValueError(f"{name}: block_size must be positive, got {block_size}")
    blocks = -(-shape[axis] // block_size)
    expected = tuple(blocks if i == axis else d for i, d in enumerate(shape))
    if value.shape != expected:
        raise ValueError(f"{name}: blocked {what} of shape {list(value.shape)} does not fit input {list(shape)} "
                         f"with block_size {block_size} along axis {axis}: expected {list(expected)}")
    return np.repeat(value, block_size, axis=axis).take(range(shape[axis]), axis=axis)


def quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int = 1,
             block_size: int = 0, out_dtype=np.uint8, div_dtype=None, name: str = "QuantizeLinear") -> np.ndarray:
    """y = saturate(round_half_even(x / scale) + zero_point), as ``out_dtype``."""
    x = np.asarray(x)
    scale = np.asarray(scale)
    if scale.dtype.kind not in _FLOAT_KINDS:
        raise TypeError(f"{name}: scale dtype {scale.dtype} must be floating point")
    s = _broadcast_param(name, "scale", scale, x.shape, axis, block_size)
    if div_dtype is not None:
        q = x.astype(div_dtype) / s.astype(div_dtype)
    else:
        q = x / s       # numpy promotion, as the ONNX reference does it (int32 x -> float64)
    q = np.rint(q)      # round half to even
    out_dtype = np.dtype(out_dtype)
    info = np.iinfo(out_dtype)
    if zero_point is not None:
        zp = _broadcast_param(name, "zero point", np.asarray(zero_point), x.shape, axis, block_size)
        # float64 holds every int32 zero point and every rounded quotient that is not saturated anyway
        q = q.astype(np.float64, copy=False) + zp
    with np.errstate(invalid="ignore"):
        q = np.clip(q, info.min, info.max)     # saturate; NaN has no integer: ONNX leaves it undefined
    return np.nan_to_num(q, nan=0.0).astype(out_dtype)


def dequantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int = 1,
               block_size: int = 0, out_dtype=None, name: str = "DequantizeLinear") -> np.ndarray:
    """y = (x - zero_point) * scale, as ``out_dtype`` (default: the scale's dtype)."""
    x = np.asarray(x)
    scale = np.asarray(scale)
    if x.dtype not in set(np.dtype(t) for t in _INT_TYPES.values()):
        raise TypeError(f"{name}: input dtype {x.dtype} is not a supported quantized type "
                        f"(int8, uint8, int16, uint16, int32)")
    if scale.dtype.kind not in _FLOAT_KINDS:
        raise TypeError(f"{name}: scale dtype {scale.dtype} must be floating point")
    s = _broadcast_param(name, "scale", scale, x.shape, axis, block_size)
    # int32 - zero point is not exact in float32: subtract in float64 there, as the ONNX reference does
    dx = x.astype(np.float64 if x.dtype == np.int32 and zero_point is not None else np.float32)
    if zero_point is not None:
        zero_point = np.asarray(zero_point)
        if zero_point.dtype != x.dtype:
            raise TypeError(f"{name}: zero point dtype {zero_point.dtype} differs from the input's {x.dtype}")
        dx -= _broadcast_param(name, "zero point", zero_point, x.shape, axis, block_size)
    y = dx * s
    return y.astype(out_dtype or scale.dtype, copy=False)


# ---------------------------------------------------------------- QuantizeLinear

def _q_target(name, zero_point, output_dtype=0):
    if zero_point is not None:
        zero_point = np.asarray(zero_point)
        _check_zero_point_dtype(name, zero_point)
        if output_dtype and ONNX_TO_NUMPY.get(output_dtype) != zero_point.dtype:
            raise TypeError(f"{name}: output_dtype {output_dtype} differs from the zero point's dtype {zero_point.dtype}")
        return zero_point.dtype
    return _quant_dtype(name, output_dtype) if output_dtype else np.dtype(np.uint8)


@op("QuantizeLinear", since=10)
def QuantizeLinear10(x, y_scale, y_zero_point=None):
    """Per-tensor only (axis arrived in opset 13)."""
    if np.asarray(y_scale).size != 1:
        raise ValueError(f"QuantizeLinear-10: y_scale must be a scalar, got shape {list(np.shape(y_scale))}")
    return quantize(x, y_scale, y_zero_point, out_dtype=_q_target("QuantizeLinear", y_zero_point))


@op("QuantizeLinear", since=13)
def QuantizeLinear13(x, y_scale, y_zero_point=None, axis=1):
    return quantize(x, y_scale, y_zero_point, axis=axis, out_dtype=_q_target("QuantizeLinear", y_zero_point))


@op("QuantizeLinear", since=19)
def QuantizeLinear19(x, y_scale, y_zero_point=None, axis=1, saturate=1):
    """saturate only concerns float8 targets, which are rejected; integers always saturate."""
    return quantize(x, y_scale, y_zero_point, axis=axis, out_dtype=_q_target("QuantizeLinear", y_zero_point))


@op("QuantizeLinear", since=21)
def QuantizeLinear21(x, y_scale, y_zero_point=None, axis=1, saturate=1, block_size=0, output_dtype=0):
    return quantize(x, y_scale, y_zero_point, axis=axis, block_size=block_size,
                    out_dtype=_q_target("QuantizeLinear", y_zero_point, output_dtype))


@op("QuantizeLinear", since=23)
def QuantizeLinear23(x, y_scale, y_zero_point=None, axis=1, saturate=1, block_size=0, output_dtype=0,
                     precision=0):
    """precision: the float type of the division x / y_scale (default: y_scale's)."""
    div = None
    if precision:
        div = ONNX_TO_NUMPY.get(precision)
        if div is None or div.kind != "f":
            raise TypeError(f"QuantizeLinear: precision {precision} is not a supported float type")
    return quantize(x, y_scale, y_zero_point, axis=axis, block_size=block_size,
                    out_dtype=_q_target("QuantizeLinear", y_zero_point, output_dtype), div_dtype=div)


# ---------------------------------------------------------------- DequantizeLinear

@op("DequantizeLinear", since=10)
def DequantizeLinear10(x, x_scale, x_zero_point=None):
    if np.asarray(x_scale).size != 1:
        raise ValueError(f"DequantizeLinear-10: x_scale must be a scalar, got shape {list(np.shape(x_scale))}")
    return dequantize(x, x_scale, x_zero_point)


@op("DequantizeLinear", since=13)
def DequantizeLinear13(x, x_scale, x_zero_point=None, axis=1):
    return dequantize(x, x_scale, x_zero_point, axis=axis)


@op("DequantizeLinear", since=21)
def DequantizeLinear21(x, x_scale, x_zero_point=None, axis=1, block_size=0):
    return dequantize(x, x_scale, x_zero_point, axis=axis, block_size=block_size)


@op("DequantizeLinear", since=23)
def DequantizeLinear23(x, x_scale, x_zero_point=None, axis=1, block_size=0, output_dtype=0):
    out = None
    if output_dtype:
        out = ONNX_TO_NUMPY.get(output_dtype)
        if out is None or out.kind != "f":
            raise TypeError(f"DequantizeLinear: output_dtype {output_dtype} is not a supported float type")
    return dequantize(x, x_scale, x_zero_point, axis=axis, block_size=block_size, out_dtype=out)
