"""Dtype names shared by the converter, the formats and the ops.

The streaming format names dtypes by numpy's names (``float32``); ONNX names them by
TensorProto enum values (``1``). This module maps between the two without importing onnx.
Reference: onnx/onnx.proto3, enum TensorProto.DataType.
"""
from __future__ import annotations

import numpy as np

# TensorProto.DataType value -> numpy dtype, for every dtype the engine supports.
ONNX_TO_NUMPY: dict[int, np.dtype] = {
    1: np.dtype(np.float32),
    2: np.dtype(np.uint8),
    3: np.dtype(np.int8),
    4: np.dtype(np.uint16),
    5: np.dtype(np.int16),
    6: np.dtype(np.int32),
    7: np.dtype(np.int64),
    9: np.dtype(np.bool_),
    10: np.dtype(np.float16),
    11: np.dtype(np.float64),
    12: np.dtype(np.uint32),
    13: np.dtype(np.uint64),
}
NUMPY_TO_ONNX: dict[np.dtype, int] = {v: k for k, v in ONNX_TO_NUMPY.items()}

# Names used in the graph file and the weights index.
NAME_TO_NUMPY: dict[str, np.dtype] = {dt.name: dt for dt in ONNX_TO_NUMPY.values()}


def onnx_to_numpy(elem_type: int) -> np.dtype:
    try:
        return ONNX_TO_NUMPY[elem_type]
    except KeyError:
        raise TypeError(f"ONNX tensor element type {elem_type} is not supported "
                        f"(supported: {sorted(ONNX_TO_NUMPY)})") from None


def numpy_to_onnx(dtype) -> int:
    try:
        return NUMPY_TO_ONNX[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"numpy dtype {np.dtype(dtype)} has no ONNX equivalent here") from None


def from_name(name: str) -> np.dtype:
    try:
        return NAME_TO_NUMPY[name]
    except KeyError:
        raise TypeError(f"unknown dtype name {name!r} (known: {sorted(NAME_TO_NUMPY)})") from None
