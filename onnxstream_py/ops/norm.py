"""Normalisation ops: BatchNormalization, InstanceNormalization, GroupNormalization,
LayerNormalization, RMSNormalization, LpNormalization, MeanVarianceNormalization.

Trade-off: memory over speed. The SD VAE decoder normalises [1, 128, 512, 512] FP32
tensors (134 MB) on a 512 MB machine, so every op here allocates exactly one full-size
output and otherwise only per-row statistics plus a bounded scratch block. The tensor is
viewed as a matrix [rows, cols] (rows = the independent groups, cols = the elements
normalised together) and walked block by block three times: the row sums, the sums of
squared *centred* values (two-pass variance, so a large mean does not cancel the
variance away in float32), then (x - mean) * (invstd * scale) + bias written straight
into the output. Block sums use numpy's pairwise float32 summation and are accumulated
across blocks in float64, which matches onnxruntime to ~1e-6 relative on 512x512
images. float16 tensors are widened block by block into a float32 scratch buffer, so
statistics are float32 and the output is float16.
"""
from __future__ import annotations

import numpy as np

from ..dtypes import onnx_to_numpy
from .registry import op

# Elements per scratch block: 1 MiB of float32, small beside any tensor worth streaming.
_BLOCK = 1 << 18


# --------------------------------------------------------------------------- helpers
def _float_input(op_name: str, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"{op_name}: input X must be float16/float32/float64, got {x.dtype} {x.shape}")
    # One copy up front for strided inputs, rather than one per matrix view taken later.
    return np.ascontiguousarray(x)


def _compute_dtype(x_dtype: np.dtype, stash_type: int = 1) -> np.dtype:
    """Statistics dtype: float32, or float64 when the input or stash_type asks for it."""
    stash = onnx_to_numpy(stash_type)
    if stash.kind != "f":
        raise TypeError(f"stash_type {stash_type} ({stash}) is not a float type")
    if np.dtype(x_dtype) == np.float64 or stash == np.float64:
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def _blocks(rows: int, cols: int):
    """Yield (r0, r1, c0, c1) tiles of a [rows, cols] matrix, each at most _BLOCK elements."""
    if rows == 0 or cols == 0:
        return
    cb = min(cols, _BLOCK)
    rb = max(1, _BLOCK // max(cb, 1))
    for r0 in range(0, rows, rb):
        r1 = min(rows, r0 + rb)
        for c0 in range(0, cols, cb):
            yield r0, r1, c0, min(cols, c0 + cb)


def _scratch(rows: int, cols: int, cdt: np.dtype) -> np.ndarray:
    cb = min(cols, _BLOCK)
    rb = max(1, _BLOCK // max(cb, 1))
    return np.empty((min(rb, rows), cb), dtype=cdt)


def _as_matrix(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
    # A view for contiguous inputs (the usual case); numpy copies otherwise.
    return x.reshape(rows, cols)


def _row_moments(x2d: np.ndarray, cdt: np.dtype, centred: bool = True):
    """Per-row (mean, mean of squares about the mean) of a [rows, cols] matrix, as float64.

    With ``centred=False`` the mean is not computed (returned as None) and the second
    value is the plain mean of squares, as RMSNormalization needs.
    """
    rows, cols = x2d.shape
    scratch = _scratch(rows, cols, cdt)
    mean = None
    mean_c = None
    if centred:
        acc = np.zeros(rows, dtype=np.float64)
        for r0, r1, c0, c1 in _blocks(rows, cols):
            blk = x2d[r0:r1, c0:c1]
            if blk.dtype != cdt:
                t = scratch[: r1 - r0, : c1 - c0]
                t[...] = blk
                blk = t
            acc[r0:r1] += blk.sum(axis=1)
        mean = acc / max(cols, 1)
        mean_c = mean.astype(cdt)[:, None]
    acc = np.zeros(rows, dtype=np.float64)
    for r0, r1, c0, c1 in _blocks(rows, cols):
        t = scratch[: r1 - r0, : c1 - c0]
        if centred:
            np.subtract(x2d[r0:r1, c0:c1], mean_c[r0:r1], out=t)
        else:
            t[...] = x2d[r0:r1, c0:c1]
        np.square(t, out=t)
        acc[r0:r1] += t.sum(axis=1)
    return mean, acc / max(cols, 1)


def _affine_rows(x2d: np.ndarray, out2d: np.ndarray, cdt: np.dtype, row_sub=None, row_mul=None,
                 row_add=None, col_mul=None, col_add=None) -> None:
    """out = ((x - row_sub) * row_mul) * col_mul + col_add + row_add, block by block.

    row_* are [rows] vectors, col_* are [cols] vectors, any may be None. Blocks are
    computed in ``cdt`` directly inside ``out2d`` when it has that dtype, else in a
    scratch block that is then cast into ``out2d``.
    """
    rows, cols = x2d.shape
    direct = out2d.dtype == cdt
    scratch = None if direct else _scratch(rows, cols, cdt)
    as_col = lambda v: None if v is None else np.asarray(v, dtype=cdt).reshape(-1, 1)  # noqa: E731
    as_row = lambda v: None if v is None else np.asarray(v, dtype=cdt).reshape(1, -1)  # noqa: E731
    row_sub, row_mul, row_add = as_col(row_sub), as_col(row_mul), as_col(row_add)
    col_mul, col_add = as_row(col_mul), as_row(col_add)
    for r0, r1, c0, c1 in _blocks(rows, cols):
        t = out2d[r0:r1, c0:c1] if direct else scratch[: r1 - r0, : c1 - c0]
        src = x2d[r0:r1, c0:c1]
        if row_sub is not None:
            np.subtract(src, row_sub[r0:r1], out=t)
        else:
            t[...] = src
        if row_mul is not None:
            np.multiply(t, row_mul[r0:r1], out=t)
        if col_mul is not None:
            np.multiply(t, col_mul[:, c0:c1], out=t)
        if col_add is not None:
            np.add(t, col_add[:, c0:c1], out=t)
        if row_add is not None:
            np.add(t, row_add[r0:r1], out=t)
        if not direct:
            out2d[r0:r1, c0:c1] = t


def _channel_vector(op_name: str, name: str, v, channels: int, cdt: np.dtype) -> np.ndarray:
    v = np.asarray(v, dtype=cdt).reshape(-1)
    if v.size == 1 and channels != 1:
        v = np.full(channels, v[0], dtype=cdt)
    if v.size != channels:
        raise ValueError(f"{op_name}: {name} has {v.size} elements, expected {channels} (one per channel)")
    return v


def _per_channel_norm(op_name: str, x, scale, bias, channels_per_group: int, epsilon: float,
                      cdt: np.dtype) -> np.ndarray:
    """(x - mean_g) / sqrt(var_g + eps) * scale_c + bias_c for x [N, C, *spatial].

    Statistics are taken over groups of ``channels_per_group`` consecutive channels
    (1 = InstanceNormalization); scale/bias are per channel [C].
    """
    if x.ndim < 2:
        raise ValueError(f"{op_name}: X must have rank >= 2 ([N, C, ...]), got shape {x.shape}")
    n, c = x.shape[0], x.shape[1]
    spatial = int(np.prod(x.shape[2:], dtype=np.int64))
    groups = c // channels_per_group
    scale = _channel_vector(op_name, "scale", scale, c, cdt)
    bias = _channel_vector(op_name, "bias", bias, c, cdt)
    out = np.empty(x.shape, dtype=x.dtype)
    mean, var = _row_moments(_as_matrix(x, n * groups, channels_per_group * spatial), cdt)
    invstd = 1.0 / np.sqrt(var + epsilon)
    # Statistics per (n, group) -> per (n, channel) rows of the [N*C, spatial] view.
    mean_rc = np.repeat(mean, channels_per_group)
    mul_rc = np.repeat(invstd, channels_per_group) * np.tile(scale.astype(np.float64), n)
    add_rc = np.tile(bias, n)
    _affine_rows(_as_matrix(x, n * c, spatial), out.reshape(n * c, spatial), cdt,
                 row_sub=mean_rc, row_mul=mul_rc, row_add=add_rc)
    return out


# --------------------------------------------------------------------------- BatchNormalization
def _batchnorm_inference(x, scale, bias, mean, var, epsilon: float) -> np.ndarray:
    """y = (x - mean) / sqrt(var + eps) * scale + bias with per-channel parameters."""
    x = _float_input("BatchNormalization", x)
    if x.ndim < 2:
        raise ValueError(f"BatchNormalization: X must have rank >= 2 ([N, C, ...]), got shape {x.shape}")
    cdt = _compute_dtype(x.dtype)
    n, c = x.shape[0], x.shape[1]
    spatial = int(np.prod(x.shape[2:], dtype=np.int64))
    mean = _channel_vector("BatchNormalization", "input_mean", mean, c, np.float64)
    var = _channel_vector("BatchNormalization", "input_var", var, c, np.float64)
    scale = _channel_vector("BatchNormalization", "scale", scale, c, np.float64)
    bias = _channel_vector("BatchNormalization", "B", bias, c, cdt)
    mul = scale / np.sqrt(var + epsilon)
    out = np.empty(x.shape, dtype=x.dtype)
    _affine_rows(_as_matrix(x, n * c, spatial), out.reshape(n * c, spatial), cdt,
                 row_sub=np.tile(mean, n), row_mul=np.tile(mul, n), row_add=np.tile(bias, n))
    return out


def _batchnorm_training(x, scale, bias, mean, var, epsilon: float, momentum: float):
    """Normalise with the batch statistics; also return the updated running mean/var.

    Reference: onnx BatchNormalization-14 (training_mode=1): the running statistics are
    input * momentum + batch * (1 - momentum), with the population (biased) variance.
    """
    x = _float_input("BatchNormalization", x)
    if x.ndim < 2:
        raise ValueError(f"BatchNormalization: X must have rank >= 2 ([N, C, ...]), got shape {x.shape}")
    cdt = _compute_dtype(x.dtype)
    n, c = x.shape[0], x.shape[1]
    spatial = int(np.prod(x.shape[2:], dtype=np.int64))
    row_mean, row_var = _row_moments(_as_matrix(x, n * c, spatial), cdt)
    # Combine per-(n, c) moments into per-channel moments over N and the spatial dims.
    row_mean = row_mean.reshape(n, c)
    batch_mean = row_mean.mean(axis=0)
    batch_var = (row_var.reshape(n, c) + (row_mean - batch_mean) ** 2).mean(axis=0)
    y = _batchnorm_inference(x, scale, bias, batch_mean, batch_var, epsilon)
    stat_dtype = np.asarray(mean).dtype
    running_mean = np.asarray(np.asarray(mean, dtype=np.float64) * momentum + batch_mean * (1 - momentum),
                              dtype=stat_dtype)
    running_var = np.asarray(np.asarray(var, dtype=np.float64) * momentum + batch_var * (1 - momentum),
                             dtype=stat_dtype)
    return y, running_mean, running_var


@op("BatchNormalization", since=6)
def BatchNormalization6(x, scale, B, input_mean, input_var, *, epsilon=1e-5, is_test=0, momentum=0.9,
                        spatial=1):
    """Inference form (as onnxruntime runs it; is_test is ignored).

    spatial=0 (opsets 6-8) means statistics per activation, shaped [C, D1, ...].
    """
    if spatial or np.asarray(input_mean).size == np.asarray(x).shape[1]:
        return _batchnorm_inference(x, scale, B, input_mean, input_var, epsilon)
    x = _float_input("BatchNormalization", x)
    cdt = _compute_dtype(x.dtype)
    shape = x.shape[1:]
    try:
        mean, var, s, b = (np.broadcast_to(np.asarray(v, dtype=cdt), shape)
                           for v in (input_mean, input_var, scale, B))
    except ValueError:
        raise ValueError(f"BatchNormalization: spatial=0 statistics must broadcast to {shape}, got "
                         f"mean {np.shape(input_mean)}, scale {np.shape(scale)}") from None
    out = np.subtract(x, mean, dtype=cdt)
    out *= s / np.sqrt(var + cdt.type(epsilon))
    out += b
    return out.astype(x.dtype, copy=False)


@op("BatchNormalization", since=9)
def BatchNormalization9(x, scale, B, input_mean, input_var, *, epsilon=1e-5, momentum=0.9):
    return _batchnorm_inference(x, scale, B, input_mean, input_var, epsilon)


@op("BatchNormalization", since=14)
def BatchNormalization14(x, scale, B, input_mean, input_var, *, epsilon=1e-5, momentum=0.9, training_mode=0):
    if training_mode:
        return _batchnorm_training(x, scale, B, input_mean, input_var, epsilon, momentum)
    return _batchnorm_inference(x, scale, B, input_mean, input_var, epsilon)


# --------------------------------------------------------------------------- Instance / Group
@op("InstanceNormalization", since=6)
def InstanceNormalization(x, scale, B, *, epsilon=1e-5):
    """Per (n, c) statistics over the spatial dims. torch exports GroupNorm as
    Reshape [N, G, -1] -> InstanceNormalization(ones, zeros) -> Reshape -> Mul -> Add.
    """
    x = _float_input("InstanceNormalization", x)
    return _per_channel_norm("InstanceNormalization", x, scale, B, 1, epsilon, _compute_dtype(x.dtype))


def _group_norm(x, scale, bias, num_groups, epsilon, stash_type, per_group_params: bool):
    x = _float_input("GroupNormalization", x)
    if num_groups is None:
        raise ValueError("GroupNormalization: attribute num_groups is required")
    if x.ndim < 2 or num_groups <= 0 or x.shape[1] % num_groups:
        raise ValueError(f"GroupNormalization: channels of X {x.shape} must be divisible by "
                         f"num_groups={num_groups}")
    cdt = _compute_dtype(x.dtype, stash_type)
    cpg = x.shape[1] // num_groups
    if per_group_params:
        scale = np.repeat(_channel_vector("GroupNormalization", "scale", scale, num_groups, cdt), cpg)
        bias = np.repeat(_channel_vector("GroupNormalization", "bias", bias, num_groups, cdt), cpg)
    return _per_channel_norm("GroupNormalization", x, scale, bias, cpg, epsilon, cdt)


@op("GroupNormalization", since=18)
def GroupNormalization18(x, scale, bias, *, epsilon=1e-5, num_groups=None):
    """Opset 18: scale and bias have one value per group [G]."""
    return _group_norm(x, scale, bias, num_groups, epsilon, 1, per_group_params=True)


@op("GroupNormalization", since=21)
def GroupNormalization21(x, scale, bias, *, epsilon=1e-5, num_groups=None, stash_type=1):
    """Opset 21: scale and bias have one value per channel [C]."""
    return _group_norm(x, scale, bias, num_groups, epsilon, stash_type, per_group_params=False)


# --------------------------------------------------------------------------- Layer / RMS
def _normalized_split(op_name: str, x: np.ndarray, axis: int):
    axis = axis + x.ndim if axis < 0 else axis
    if not 0 <= axis < max(x.ndim, 1):
        raise ValueError(f"{op_name}: axis {axis} out of range for X of shape {x.shape}")
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    cols = int(np.prod(x.shape[axis:], dtype=np.int64))
    return axis, rows, cols


def _cols_param(op_name: str, name: str, v, norm_shape, cdt) -> np.ndarray | None:
    if v is None:
        return None
    v = np.asarray(v, dtype=cdt)
    try:
        return np.broadcast_to(v, norm_shape).reshape(-1)
    except ValueError:
        raise ValueError(f"{op_name}: {name} of shape {v.shape} does not broadcast to the "
                         f"normalised shape {tuple(norm_shape)}") from None


@op("LayerNormalization", since=17)
def LayerNormalization(x, scale, B=None, *, axis=-1, epsilon=1e-5, stash_type=1):
    """Y = (X - mean) * invstd * Scale + B over dims [axis:]; also Mean and InvStdDev
    (stash_type dtype, shape X.shape[:axis] + [1] * (rank - axis)).
    """
    x = _float_input("LayerNormalization", x)
    cdt = _compute_dtype(x.dtype, stash_type)
    axis, rows, cols = _normalized_split("LayerNormalization", x, axis)
    norm_shape = x.shape[axis:]
    col_mul = _cols_param("LayerNormalization", "Scale", scale, norm_shape, cdt)
    col_add = _cols_param("LayerNormalization", "B", B, norm_shape, cdt)
    x2d = _as_matrix(x, rows, cols)
    mean, var = _row_moments(x2d, cdt)
    invstd = 1.0 / np.sqrt(var + epsilon)
    out = np.empty(x.shape, dtype=x.dtype)
    _affine_rows(x2d, out.reshape(rows, cols), cdt, row_sub=mean, row_mul=invstd,
                 col_mul=col_mul, col_add=col_add)
    stat_shape = x.shape[:axis] + (1,) * (x.ndim - axis)
    stash = onnx_to_numpy(stash_type)
    return out, mean.astype(stash).reshape(stat_shape), invstd.astype(stash).reshape(stat_shape)


@op("RMSNormalization", since=23)
def RMSNormalization(x, scale, *, axis=-1, epsilon=1e-5, stash_type=1):
    """Y = X / sqrt(mean(X^2 over dims [axis:]) + eps) * scale."""
    x = _float_input("RMSNormalization", x)
    cdt = _compute_dtype(x.dtype, stash_type)
    axis, rows, cols = _normalized_split("RMSNormalization", x, axis)
    col_mul = _cols_param("RMSNormalization", "scale", scale, x.shape[axis:], cdt)
    x2d = _as_matrix(x, rows, cols)
    _, mean_sq = _row_moments(x2d, cdt, centred=False)
    out = np.empty(x.shape, dtype=x.dtype)
    _affine_rows(x2d, out.reshape(rows, cols), cdt, row_mul=1.0 / np.sqrt(mean_sq + epsilon), col_mul=col_mul)
    return out


# --------------------------------------------------------------------------- Lp / MVN
@op("LpNormalization", since=1)
def LpNormalization(x, *, axis=-1, p=2):
    """x / ||x||_p along ``axis`` (p = 1 or 2); rows whose norm is 0 give 0."""
    x = _float_input("LpNormalization", x)
    if p not in (1, 2):
        raise ValueError(f"LpNormalization: p must be 1 or 2, got {p}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"LpNormalization: axis {axis} out of range for X of shape {x.shape}")
    cdt = _compute_dtype(x.dtype)
    if p == 1:
        norm = np.sum(np.abs(x), axis=axis, keepdims=True, dtype=cdt)
    else:
        norm = np.sqrt(np.sum(np.square(x, dtype=cdt), axis=axis, keepdims=True))
    out = np.zeros(x.shape, dtype=x.dtype)
    np.divide(x, norm, out=out, where=norm != 0, casting="same_kind")
    return out


@op("MeanVarianceNormalization", since=9)
def MeanVarianceNormalization(x, *, axes=(0, 2, 3)):
    """(X - mean) / (std + 1e-9) over ``axes``.

    Reference: onnx MeanVarianceNormalization-13 function body (epsilon 1e-9 added to the
    standard deviation). A legacy Caffe op, so this path favours simplicity over memory
    (one full-size float temporary).
    """
    x = _float_input("MeanVarianceNormalization", x)
    cdt = _compute_dtype(x.dtype)
    try:
        axes = tuple(sorted({a + x.ndim if a < 0 else a for a in axes}))
        mean = np.mean(x, axis=axes, keepdims=True, dtype=np.float64)
    except (np.exceptions.AxisError, ValueError):
        raise ValueError(f"MeanVarianceNormalization: axes {list(axes)} invalid for X of shape {x.shape}") from None
    centred = np.subtract(x, mean.astype(cdt), dtype=cdt)
    std = np.sqrt(np.mean(np.square(centred), axis=axes, keepdims=True, dtype=np.float64))
    centred *= (1.0 / (std + 1e-9)).astype(cdt)
    return centred.astype(x.dtype, copy=False)
