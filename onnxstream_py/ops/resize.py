"""Resize (opsets 10, 11, 18, 19) and Upsample (opsets 7, 9): nearest, linear and cubic
interpolation for tensors of any rank.

Trade-off: the hot case gets a special path, the rest stays simple. The SD VAE decoder and
YOLO upsample by an exact integer factor with nearest interpolation, so that case writes
each of the f0*f1*... phases of the output with strided assignments, cache-sized slab by
slab, into a single preallocated output (no np.repeat chain, no index arrays). Other nearest resizes gather
once with index arrays. Linear and cubic are separable: each resized axis is resampled in
turn as a weighted sum of a few gathered taps, which allocates per-axis intermediates;
acceptable because no large model we target uses them on full-size activations.

Coordinates follow the ONNX spec's coordinate_transformation_mode formulas in float64,
like the ONNX reference (onnxruntime uses float32, so nearest rounding can differ from it
where a source coordinate lands exactly on a .0/.5 tie with a non-binary scale such as
1.7). Output sizes from ``scales`` are floor(in * scale) with the product rounded to
float32, as onnxruntime computes them (10 * 0.7f -> 7, where float64 would give 6).
Reference: https://onnx.ai/onnx/operators/onnx__Resize.html
"""
from __future__ import annotations

import itertools

import numpy as np

from ..layout import is_nhwc, nhwc_buffer
from .registry import op

_COORD_MODES_11 = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric",
                   "tf_half_pixel_for_nn", "tf_crop_and_resize")
_COORD_MODES_18 = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_crop_and_resize")
_COORD_MODES_19 = _COORD_MODES_18 + ("half_pixel_symmetric",)
_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
# Opsets 7-10 (Upsample, Resize-10): asymmetric coordinates; nearest floors when
# enlarging and ceils when shrinking (onnxruntime's legacy "simple" rounding).
_LEGACY_NEAREST = "legacy"
# Output bytes per slab of the integer-factor nearest path: about an L2 cache.
_SLAB_BYTES = 1 << 21


# --------------------------------------------------------------------------- coordinates
def _source_coords(ctm: str, out_len: int, in_len: int, scale: float, roi_start: float, roi_end: float):
    """Source coordinate of every output index along one axis, and the mask of output
    positions that fall outside the input (tf_crop_and_resize only, else None).
    """
    y = np.arange(out_len, dtype=np.float64)
    float_out = scale * in_len  # the spec's un-floored output length
    if ctm == "half_pixel":
        return (y + 0.5) / scale - 0.5, None
    if ctm == "half_pixel_symmetric":
        offset = (in_len / 2.0) * (1.0 - out_len / float_out)
        return offset + (y + 0.5) / scale - 0.5, None
    if ctm == "pytorch_half_pixel":
        if out_len <= 1:
            return np.zeros(out_len), None
        return (y + 0.5) / scale - 0.5, None
    if ctm == "align_corners":
        # The spec's length_resized is the un-floored scale * in (the backend cases
        # check this with non-integral scales); onnxruntime uses the floored length.
        if float_out == 1 or out_len <= 1:
            return np.zeros(out_len), None
        return y * ((in_len - 1) / (float_out - 1)), None
    if ctm == "asymmetric":
        return y / scale, None
    if ctm == "tf_half_pixel_for_nn":
        return (y + 0.5) / scale, None
    if ctm == "tf_crop_and_resize":
        if out_len <= 1:
            x = np.full(out_len, 0.5 * (roi_start + roi_end) * (in_len - 1))
        else:
            x = roi_start * (in_len - 1) + y * ((roi_end - roi_start) * (in_len - 1) / (out_len - 1))
        return x, (x < 0) | (x > in_len - 1)
    raise ValueError(f"Resize: unknown coordinate_transformation_mode {ctm!r}")


def _nearest_index(x: np.ndarray, nearest_mode: str, in_len: int, scale: float) -> np.ndarray:
    if nearest_mode == "round_prefer_floor":
        idx = np.ceil(x - 0.5)
    elif nearest_mode == "round_prefer_ceil":
        idx = np.floor(x + 0.5)
    elif nearest_mode == "floor":
        idx = np.floor(x)
    elif nearest_mode == "ceil":
        idx = np.ceil(x)
    elif nearest_mode == _LEGACY_NEAREST:
        idx = np.ceil(x) if scale < 1 else np.floor(x)
    else:
        raise ValueError(f"Resize: unknown nearest_mode {nearest_mode!r} (expected one of {_NEAREST_MODES})")
    return np.clip(idx, 0, in_len - 1).astype(np.intp)


def _cubic_kernel(d: np.ndarray, a: float) -> np.ndarray:
    """Keys cubic convolution kernel with coefficient ``a`` at distances ``d``."""
    d = np.abs(d)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def _taps(x: np.ndarray, in_len: int, mode: str, scale: float, cubic_a: float, antialias: bool,
          exclude_outside: bool):
    """Interpolation taps along one axis: (indices [out, n] clamped to the input, weights [out, n]).

    Each source coordinate x is split as p + r with integer p and r in (0, 1] (r = 1 at
    integer x, so the exact sample sits at tap offset 1 for linear and cubic alike). With
    antialias on a shrinking axis the kernel is stretched by 1/scale and renormalised.
    """
    fl = np.floor(x)
    r = np.where(x == fl, 1.0, x - fl)
    p = np.rint(x - r).astype(np.int64)
    s = min(scale, 1.0) if antialias else 1.0
    support = 1.0 if mode == "linear" else 2.0
    start = int(np.floor(-support / s)) + 1
    offsets = np.arange(start, 2 - start)
    dist = (offsets[None, :] - r[:, None]) * s
    if mode == "linear":
        w = np.clip(1.0 - np.abs(dist), 0.0, 1.0)
    else:
        w = _cubic_kernel(dist, cubic_a)
    idx = p[:, None] + offsets[None, :]
    if exclude_outside:
        w = np.where((idx < 0) | (idx >= in_len), 0.0, w)
    total = w.sum(axis=1, keepdims=True)
    w = w / np.where(total == 0, 1.0, total)
    return np.clip(idx, 0, in_len - 1).astype(np.intp), w


# --------------------------------------------------------------------------- kernels
def _repeat_factors(indices: list, in_shape) -> list | None:
    """Per-axis integer factors when every axis is out[i] = in[i // f], else None."""
    factors = []
    for idx, n in zip(indices, in_shape):
        if idx is None:
            factors.append(1)
            continue
        f, rem = divmod(len(idx), n) if n else (0, 1)
        if rem or f == 0 or not np.array_equal(idx, np.arange(len(idx)) // f):
            return None
        factors.append(f)
    return factors


def _repeat_into(x: np.ndarray, factors: list) -> np.ndarray:
    """Integer-factor nearest upsampling: one output allocation, one strided copy per
    phase (f0 * f1 * ... copies), done slab by slab over the leading un-resized axes so
    each slab's reads and writes stay in cache (~1.5x faster than whole-tensor copies).
    A channels-last x (layout.py) is upsampled in its own memory order and stays so.
    """
    if is_nhwc(x) and factors[1] == 1:
        y = _repeat_into(nhwc_buffer(x), [factors[0], factors[2], factors[3], 1])
        return y.transpose(0, 3, 1, 2)
    out = np.empty(tuple(n * f for n, f in zip(x.shape, factors)), dtype=x.dtype)
    lead = next((a for a, f in enumerate(factors) if f != 1), len(factors))
    if not x.flags.c_contiguous:
        lead = 0  # collapsing the leading axes would copy x
    outer = int(np.prod(x.shape[:lead], dtype=np.int64))
    src = x.reshape((outer,) + x.shape[lead:])
    tail = list(zip(x.shape[lead:], factors[lead:]))
    dst = out.reshape((outer,) + tuple(d for n, f in tail for d in (n, f)))
    step = max(1, _SLAB_BYTES // max(out.nbytes // max(outer, 1), 1))
    phases = list(itertools.product(*(range(f) for _, f in tail)))
    for o0 in range(0, outer, step):
        d, s = dst[o0:o0 + step], src[o0:o0 + step]
        for phase in phases:
            d[(slice(None),) + tuple(i for ph in phase for i in (slice(None), ph))] = s
    return out


def _nearest(x: np.ndarray, indices: list) -> np.ndarray:
    """Gather x at per-axis index arrays (None = keep the axis)."""
    factors = _repeat_factors(indices, x.shape)
    if factors is not None:
        return _repeat_into(x, factors)
    resized = [a for a, idx in enumerate(indices) if idx is not None]
    if not resized:
        return x.copy()
    if resized == list(range(resized[0], resized[-1] + 1)):
        # Adjacent advanced indices keep their place: a single gather, one allocation.
        grids = np.ix_(*(indices[a] for a in resized))
        return x[(slice(None),) * resized[0] + grids]
    out = x
    for a in resized:
        out = np.take(out, indices[a], axis=a)
    return out


def _interpolate_axis(x: np.ndarray, axis: int, idx: np.ndarray, w: np.ndarray, cdt) -> np.ndarray:
    """Weighted sum of the taps of one axis: out = sum_k w[:, k] * x.take(idx[:, k], axis)."""
    bshape = (1,) * axis + (len(idx),) + (1,) * (x.ndim - axis - 1)
    acc = None
    for k in range(idx.shape[1]):
        wk = w[:, k]
        if not wk.any():
            continue
        g = np.take(x, idx[:, k], axis=axis).astype(cdt, copy=False)
        g *= wk.astype(cdt).reshape(bshape)
        if acc is None:
            acc = g
        else:
            acc += g
    if acc is None:
        acc = np.zeros(x.shape[:axis] + (len(idx),) + x.shape[axis + 1:], dtype=cdt)
    return acc


def _cast_result(y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        y = np.clip(np.rint(y), info.min, info.max)
    return y.astype(dtype, copy=False)


# --------------------------------------------------------------------------- driver
def _resolve_shape(x, scales, sizes, axes, keep_aspect_ratio_policy):
    """Output shape and per-axis scale (1.0 for untouched axes) from scales or sizes."""
    rank = x.ndim
    have_scales = scales is not None and np.asarray(scales).size > 0
    have_sizes = sizes is not None and np.asarray(sizes).size > 0
    if have_scales == have_sizes:
        raise ValueError(f"Resize: exactly one of scales and sizes must be given "
                         f"(scales {None if scales is None else np.shape(scales)}, "
                         f"sizes {None if sizes is None else np.shape(sizes)})")
    if axes is None:
        axes = list(range(rank))
    axes = [a + rank if a < 0 else a for a in axes]
    if any(not 0 <= a < rank for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"Resize: axes {axes} invalid for X of shape {x.shape}")
    out_shape = list(x.shape)
    scale = [1.0] * rank
    if have_scales:
        sc = np.asarray(scales, dtype=np.float32).reshape(-1)
        if sc.size != len(axes):
            raise ValueError(f"Resize: scales has {sc.size} values, expected {len(axes)} for X of shape {x.shape}")
        if (sc <= 0).any():
            raise ValueError(f"Resize: scales must be positive, got {sc.tolist()}")
        for a, s in zip(axes, sc):
            out_shape[a] = int(np.floor(np.float32(x.shape[a]) * s))
            scale[a] = float(s)
        return out_shape, scale, axes
    sz = np.asarray(sizes, dtype=np.int64).reshape(-1)
    if sz.size != len(axes) or (sz < 0).any():
        raise ValueError(f"Resize: sizes {sz.tolist()} invalid: expected {len(axes)} non-negative values "
                         f"for X of shape {x.shape}")
    ratios = [int(n) / x.shape[a] if x.shape[a] else 1.0 for a, n in zip(axes, sz)]
    if keep_aspect_ratio_policy == "stretch":
        for a, n, rt in zip(axes, sz, ratios):
            out_shape[a], scale[a] = int(n), rt
    elif keep_aspect_ratio_policy in ("not_larger", "not_smaller"):
        rt = min(ratios) if keep_aspect_ratio_policy == "not_larger" else max(ratios)
        for a in axes:
            out_shape[a], scale[a] = int(rt * x.shape[a] + 0.5), rt
    else:
        raise ValueError(f"Resize: unknown keep_aspect_ratio_policy {keep_aspect_ratio_policy!r}")
    return out_shape, scale, axes


def _resize(x, roi, scales, sizes, *, mode, ctm, nearest_mode, cubic_coeff_a=-0.75, exclude_outside=0,
            extrapolation_value=0.0, antialias=0, axes=None, keep_aspect_ratio_policy="stretch",
            allowed_ctm=_COORD_MODES_19):
    x = np.asarray(x)
    if mode not in ("nearest", "linear", "cubic"):
        raise ValueError(f"Resize: unknown mode {mode!r} (expected nearest, linear or cubic)")
    if ctm not in allowed_ctm:
        raise ValueError(f"Resize: coordinate_transformation_mode {ctm!r} not valid at this opset "
                         f"(expected one of {allowed_ctm})")
    if x.ndim == 0:
        raise ValueError("Resize: X must have rank >= 1, got a scalar")
    out_shape, scale, axes = _resolve_shape(x, scales, sizes, axes, keep_aspect_ratio_policy)
    rank = x.ndim
    roi_start, roi_end = [0.0] * rank, [1.0] * rank
    if ctm == "tf_crop_and_resize":
        r = np.asarray(roi if roi is not None else [], dtype=np.float64).reshape(-1)
        if r.size != 2 * len(axes):
            raise ValueError(f"Resize: tf_crop_and_resize needs roi of {2 * len(axes)} values, got {r.size}")
        for i, a in enumerate(axes):
            roi_start[a], roi_end[a] = r[i], r[len(axes) + i]

    coords, masks = [None] * rank, [None] * rank
    for a in axes:
        identity = (out_shape[a] == x.shape[a] and scale[a] == 1.0 and roi_start[a] == 0.0 and roi_end[a] == 1.0)
        if identity or x.shape[a] == 0 or out_shape[a] == 0:
            continue
        coords[a], masks[a] = _source_coords(ctm, out_shape[a], x.shape[a], scale[a], roi_start[a], roi_end[a])

    if any(n == 0 for n in out_shape) or x.size == 0:
        return np.zeros(out_shape, dtype=x.dtype)
    if mode == "nearest":
        y = _nearest(x, [None if c is None else _nearest_index(c, nearest_mode, n, s)
                         for c, n, s in zip(coords, x.shape, scale)])
    else:
        if x.dtype == np.bool_:
            raise TypeError(f"Resize: mode {mode!r} needs a numeric X, got bool {x.shape}")
        cdt = np.float32 if x.dtype in (np.float16, np.float32) else np.float64
        # Shrinking axes first keeps the intermediates small.
        order = sorted((a for a in range(rank) if coords[a] is not None), key=lambda a: out_shape[a] / x.shape[a])
        y = x
        for a in order:
            idx, w = _taps(coords[a], x.shape[a], mode, scale[a], cubic_coeff_a, bool(antialias),
                           bool(exclude_outside))
            y = _interpolate_axis(y, a, idx, w, cdt)
        y = _cast_result(y, x.dtype) if y is not x else x.copy()
    for a, m in enumerate(masks):
        if m is not None and m.any():
            if not y.flags.writeable or y is x:
                y = y.copy()
            y[(slice(None),) * a + (m,)] = extrapolation_value
    return y


# --------------------------------------------------------------------------- registrations
@op("Upsample", since=7)
def Upsample7(X, *, mode="nearest", scales=None):
    """Opset 7: scales is an attribute."""
    if scales is None:
        raise ValueError("Upsample: attribute scales is required")
    return Upsample9(X, np.asarray(scales, dtype=np.float32), mode=mode)


@op("Upsample", since=9)
def Upsample9(X, scales, *, mode="nearest"):
    """Opsets 9-10: scales is an input. Asymmetric coordinates, legacy nearest rounding."""
    mode = "linear" if mode == "bilinear" else mode
    if mode not in ("nearest", "linear"):
        raise ValueError(f"Upsample: mode must be nearest or linear, got {mode!r}")
    return _resize(X, None, scales, None, mode=mode, ctm="asymmetric", nearest_mode=_LEGACY_NEAREST)


@op("Resize", since=10)
def Resize10(X, scales, *, mode="nearest"):
    """Opset 10: scales only; same semantics as Upsample-9."""
    if mode not in ("nearest", "linear"):
        raise ValueError(f"Resize: opset 10 mode must be nearest or linear, got {mode!r}")
    return _resize(X, None, scales, None, mode=mode, ctm="asymmetric", nearest_mode=_LEGACY_NEAREST)


@op("Resize", since=11)
def Resize11(X, roi=None, scales=None, sizes=None, *, coordinate_transformation_mode="half_pixel",
             cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0, mode="nearest",
             nearest_mode="round_prefer_floor"):
    """Opsets 11-17: roi, scales, sizes inputs (13 makes roi/scales optional; an empty
    tensor means absent in both).
    """
    return _resize(X, roi, scales, sizes, mode=mode, ctm=coordinate_transformation_mode,
                   nearest_mode=nearest_mode, cubic_coeff_a=cubic_coeff_a, exclude_outside=exclude_outside,
                   extrapolation_value=extrapolation_value, allowed_ctm=_COORD_MODES_11)


@op("Resize", since=18)
def Resize18(X, roi=None, scales=None, sizes=None, *, antialias=0, axes=None,
             coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.75, exclude_outside=0,
             extrapolation_value=0.0, keep_aspect_ratio_policy="stretch", mode="nearest",
             nearest_mode="round_prefer_floor"):
    """Opset 18 adds antialias, axes and keep_aspect_ratio_policy."""
    return _resize(X, roi, scales, sizes, mode=mode, ctm=coordinate_transformation_mode,
                   nearest_mode=nearest_mode, cubic_coeff_a=cubic_coeff_a, exclude_outside=exclude_outside,
                   extrapolation_value=extrapolation_value, antialias=antialias, axes=axes,
                   keep_aspect_ratio_policy=keep_aspect_ratio_policy, allowed_ctm=_COORD_MODES_18)


@op("Resize", since=19)
def Resize19(X, roi=None, scales=None, sizes=None, *, antialias=0, axes=None,
             coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.75, exclude_outside=0,
             extrapolation_value=0.0, keep_aspect_ratio_policy="stretch", mode="nearest",
             nearest_mode="round_prefer_floor"):
    """Opset 19 adds coordinate_transformation_mode half_pixel_symmetric."""
    return _resize(X, roi, scales, sizes, mode=mode, ctm=coordinate_transformation_mode,
                   nearest_mode=nearest_mode, cubic_coeff_a=cubic_coeff_a, exclude_outside=exclude_outside,
                   extrapolation_value=extrapolation_value, antialias=antialias, axes=axes,
                   keep_aspect_ratio_policy=keep_aspect_ratio_policy, allowed_ctm=_COORD_MODES_19)
