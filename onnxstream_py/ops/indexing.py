"""Indexing ops: Gather*, Scatter*, NonZero, TopK, OneHot, Unique.

Numpy reference implementations built on numpy's advanced indexing, which already
accepts negative indices the way ONNX defines them. Trade-off: simplicity over peak
speed (TopK does a full stable sort rather than a partition, which keeps ONNX's tie
order exact); the memory-relevant rules still hold: Scatter* copy ``data`` once and
update the copy in place (inputs are never modified), and a Gather with a scalar index
returns a **numpy view** of ``data`` (basic indexing, zero-copy), so Gather is listed in
``VIEW_OPS``: the interpreter must treat its output as an alias of input 0. All other
ops here return fresh arrays.

Reference: https://onnx.ai/onnx/operators/ (one page per op; cited per function).
"""
from __future__ import annotations

import numpy as np

from .registry import op

# Ops whose output may share memory with input 0 (see onnxstream_py/ops/tensor.py).
VIEW_OPS = frozenset({"Gather"})


def _axis(op_name: str, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ValueError(f"{op_name}: axis {axis} out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def _check_bounds(op_name: str, indices: np.ndarray, dim: int, what: str) -> None:
    if indices.size and (indices.min() < -dim or indices.max() >= dim):
        raise ValueError(f"{op_name}: {what} out of range [-{dim}, {dim - 1}] "
                         f"(min {indices.min()}, max {indices.max()})")


# --- Gather family -------------------------------------------------------------------

@op("Gather", since=1)
def Gather(data, indices, *, axis=0):
    # Reference: https://onnx.ai/onnx/operators/onnx__Gather.html
    # out = data[:, ..., indices, ...] along axis; negative indices count from the end.
    axis = _axis("Gather", axis, data.ndim)
    if indices.ndim == 0:
        # Scalar index (shape arithmetic, x[:, 0] patterns): a view, no copy.
        i = int(indices)
        dim = data.shape[axis]
        if not -dim <= i < dim:
            raise ValueError(f"Gather: index {i} out of range for axis {axis} of shape {data.shape}")
        return data[(slice(None),) * axis + (i, Ellipsis)]
    try:
        return np.take(data, indices, axis=axis)
    except IndexError:
        raise ValueError(f"Gather: indices out of range for axis {axis} of data shape "
                         f"{data.shape} (min {indices.min()}, max {indices.max()})") from None


@op("GatherElements", since=11)
def GatherElements(data, indices, *, axis=0):
    # Reference: https://onnx.ai/onnx/operators/onnx__GatherElements.html
    # out[i][j][k] = data[indices[i][j][k]][j][k] for axis 0 (and so on).
    axis = _axis("GatherElements", axis, data.ndim)
    if indices.ndim != data.ndim:
        raise ValueError(f"GatherElements: indices {indices.shape} and data {data.shape} "
                         f"must have the same rank")
    dim = data.shape[axis]
    _check_bounds("GatherElements", indices, dim, "indices")
    if indices.size and indices.min() < 0:
        indices = np.where(indices < 0, indices + dim, indices)
    return np.take_along_axis(data, indices.astype(np.intp, copy=False), axis=axis)


def _gather_nd(data: np.ndarray, indices: np.ndarray, batch_dims: int) -> np.ndarray:
    # Reference: https://onnx.ai/onnx/operators/onnx__GatherND.html
    # indices[..., :k] address data's dims [b, b+k) inside each of the leading b batch dims;
    # out shape = indices.shape[:-1] + data.shape[b+k:].
    b = batch_dims
    k = indices.shape[-1]
    if data.shape[:b] != indices.shape[:b] or b + k > data.ndim:
        raise ValueError(f"GatherND: data {data.shape} and indices {indices.shape} do not "
                         f"match for batch_dims={b}")
    nb = int(np.prod(data.shape[:b], dtype=np.int64))
    d = data.reshape((nb,) + data.shape[b:])
    idx = indices.reshape(nb, -1, k)
    batch = np.arange(nb).reshape(nb, 1)
    try:
        out = d[(batch,) + tuple(idx[..., j] for j in range(k))]
    except IndexError:
        raise ValueError(f"GatherND: indices out of range for data shape {data.shape}") from None
    return out.reshape(indices.shape[:-1] + data.shape[b + k:])


@op("GatherND", since=11)
def GatherND11(data, indices):
    return _gather_nd(data, indices, 0)


@op("GatherND", since=12)
def GatherND12(data, indices, *, batch_dims=0):
    return _gather_nd(data, indices, batch_dims)


# --- Scatter family ------------------------------------------------------------------

_REDUCTIONS = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _scatter(out: np.ndarray, index: tuple, updates: np.ndarray, reduction: str, name: str):
    """out[index] (op)= updates, in place on `out` (a copy the op owns)."""
    if reduction == "none":
        out[index] = updates
    elif reduction in _REDUCTIONS:
        # ufunc.at applies duplicates one after another, as the spec's loop does.
        _REDUCTIONS[reduction].at(out, index, updates)
    else:
        raise ValueError(f"{name}: unknown reduction {reduction!r} "
                         f"(expected 'none' or one of {sorted(_REDUCTIONS)})")
    return out


@op("ScatterND", since=11)
def ScatterND(data, indices, updates, *, reduction="none"):
    # Reference: https://onnx.ai/onnx/operators/onnx__ScatterND.html
    # updates.shape == indices.shape[:-1] + data.shape[k:], k = indices.shape[-1].
    k = indices.shape[-1]
    expected = indices.shape[:-1] + data.shape[k:]
    if updates.shape != expected:
        raise ValueError(f"ScatterND: updates shape {updates.shape}, expected {expected} for "
                         f"data {data.shape} and indices {indices.shape}")
    for j in range(k):
        _check_bounds("ScatterND", indices[..., j], data.shape[j], f"indices[..., {j}]")
    out = data.copy()
    return _scatter(out, tuple(indices[..., j] for j in range(k)), updates, reduction, "ScatterND")


def _scatter_elements(data, indices, updates, axis: int, reduction: str, name: str):
    # Reference: https://onnx.ai/onnx/operators/onnx__ScatterElements.html
    # out[indices[i][j]][j] (op)= updates[i][j] for axis 0 (and so on).
    axis = _axis(name, axis, data.ndim)
    if indices.shape != updates.shape or indices.ndim != data.ndim:
        raise ValueError(f"{name}: indices {indices.shape} and updates {updates.shape} must "
                         f"match and have the rank of data {data.shape}")
    _check_bounds(name, indices, data.shape[axis], "indices")
    index = list(np.indices(indices.shape, sparse=True))
    index[axis] = indices
    out = data.copy()
    return _scatter(out, tuple(index), updates, reduction, name)


@op("ScatterElements", since=11)
def ScatterElements(data, indices, updates, *, axis=0, reduction="none"):
    return _scatter_elements(data, indices, updates, axis, reduction, "ScatterElements")


@op("Scatter", since=9)
def Scatter(data, indices, updates, *, axis=0):
    # Deprecated alias of ScatterElements (without reduction), removed in opset 11.
    return _scatter_elements(data, indices, updates, axis, "none", "Scatter")


# --- NonZero / TopK / OneHot / Unique ------------------------------------------------

@op("NonZero", since=9)
def NonZero(X):
    # Reference: https://onnx.ai/onnx/operators/onnx__NonZero.html
    # [rank, nnz] int64 coordinates in row-major order; a scalar counts as shape [1].
    x = X.reshape(1) if X.ndim == 0 else X
    return np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)


def _topk(x: np.ndarray, k: int, axis: int, largest: int) -> tuple:
    # Reference: https://onnx.ai/onnx/operators/onnx__TopK.html
    # Equal values keep the lower index first, for both largest and smallest.
    axis = _axis("TopK", axis, x.ndim)
    n = x.shape[axis]
    if not 0 <= k <= n:
        raise ValueError(f"TopK: k={k} out of range for axis {axis} of shape {x.shape}")
    if largest:
        # Stable ascending sort of the reversed axis, reversed back, is a stable descending
        # sort: ties end up in increasing original index.
        rev = np.flip(x, axis=axis)
        order = np.flip(np.argsort(rev, axis=axis, kind="stable"), axis=axis)
        idx = (n - 1) - np.take(order, np.arange(k), axis=axis)
    else:
        idx = np.take(np.argsort(x, axis=axis, kind="stable"), np.arange(k), axis=axis)
    idx = idx.astype(np.int64, copy=False)
    return np.take_along_axis(x, idx, axis=axis), idx


@op("TopK", since=1)
def TopK1(X, *, k, axis=-1):
    return _topk(X, k, axis, 1)


@op("TopK", since=10)
def TopK10(X, K, *, axis=-1):
    return _topk(X, int(K.reshape(-1)[0]), axis, 1)


@op("TopK", since=11)
def TopK11(X, K, *, axis=-1, largest=1, sorted=1):
    # sorted=0 allows any order; the sorted result is one of them.
    return _topk(X, int(K.reshape(-1)[0]), axis, largest)


@op("OneHot", since=9)
def OneHot(indices, depth, values, *, axis=-1):
    # Reference: https://onnx.ai/onnx/operators/onnx__OneHot.html
    # Output rank r+1 with a new `depth` axis; negative indices count from depth;
    # indices outside [-depth, depth-1] give an all-off row. values = [off, on].
    d = int(depth.reshape(-1)[0])
    if d <= 0:
        raise ValueError(f"OneHot: depth must be positive, got {d}")
    if values.size != 2:
        raise ValueError(f"OneHot: values must have 2 elements [off, on], got shape {values.shape}")
    r = indices.ndim + 1
    axis = _axis("OneHot", axis, r)
    idx = indices.astype(np.int64) if indices.dtype.kind == "f" else indices
    idx = np.where(idx < 0, idx + d, idx)
    classes = np.arange(d).reshape((d,) + (1,) * (r - 1 - axis))
    hot = np.expand_dims(idx, axis) == classes
    off, on = values.reshape(-1)
    return np.where(hot, on, off).astype(values.dtype, copy=False)


@op("Unique", since=11)
def Unique(X, *, axis=None, sorted=1):
    # Reference: https://onnx.ai/onnx/operators/onnx__Unique.html
    # Outputs Y, indices (first occurrence), inverse_indices (1-D), counts; with sorted=0
    # Y follows the order of first occurrence.
    ax = None if axis is None else _axis("Unique", axis, X.ndim)
    x = X.reshape(-1) if ax is None else X
    y, first, inverse, counts = np.unique(x, return_index=True, return_inverse=True,
                                          return_counts=True, axis=ax)
    inverse = inverse.reshape(-1)
    if not sorted:
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        y = np.take(y, order, axis=0 if ax is None else ax)
        first, counts, inverse = first[order], counts[order], rank[inverse]
    return (y, first.astype(np.int64), inverse.astype(np.int64), counts.astype(np.int64))
