"""Shape and data-movement ops: Reshape, Transpose, Concat, Split, Slice, Pad, Shape, ...

Numpy reference implementations. The trade-off is memory over safety-by-copying: ops
that only rearrange metadata return **numpy views of their first input** (zero-copy)
instead of fresh arrays. That is what lets a 512 MB device reshape and transpose a
[2, 4096, 320] activation without doubling it. The views are safe because the
interpreter never writes into an op output in place unless it owns the buffer; the
interpreter/planner must treat the output of an op in ``VIEW_OPS`` as an alias of that
op's first input (the input's buffer stays alive as long as the view does, and neither
may be used as an in-place destination while the other is still live).

Ops that may return a view (or the input object itself): see ``VIEW_OPS`` below.
``Constant`` returns a read-only view of its attribute array (it must survive runs).
Every other op here returns a freshly allocated array.

Shape arithmetic (Shape, Concat/Slice/Unsqueeze/Squeeze on small int64 vectors, Range,
ConstantOfShape) runs hundreds of times per UNet step with dynamic shapes, so those
bodies convert index tensors with ``tolist()`` and do the bookkeeping on Python ints.

Reference: https://onnx.ai/onnx/operators/ (one page per op; cited per function).
"""
from __future__ import annotations

import math

import numpy as np

from ..layout import is_nhwc, nhwc_empty
from .registry import op

# Ops whose output may share memory with input 0 (a numpy view or the input itself).
VIEW_OPS = frozenset({
    "Reshape", "Transpose", "Split", "Slice", "Squeeze", "Unsqueeze", "Flatten",
    "Identity", "Dropout", "Expand",
})
# Ops whose output aliases an attribute tensor (read-only view, shared across runs).
ATTRIBUTE_ALIAS_OPS = frozenset({"Constant"})

INT64_MAX = np.iinfo(np.int64).max


def _ints(t) -> list[int]:
    """An index tensor (shape, axes, pads, ...) or attribute list as a list of Python ints."""
    if t is None:
        return []
    if isinstance(t, np.ndarray):
        return t.reshape(-1).tolist()
    return [int(v) for v in t]


def _scalar(t):
    """A 0-d or 1-element tensor as a Python number."""
    return t.reshape(-1)[0].item() if isinstance(t, np.ndarray) else t


def _axis(op_name: str, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ValueError(f"{op_name}: axis {axis} out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


# --- Reshape -------------------------------------------------------------------------

def _reshape(x: np.ndarray, shape: list[int], allowzero: int) -> np.ndarray:
    # Reference: https://onnx.ai/onnx/operators/onnx__Reshape.html
    # 0 copies the input dim (unless allowzero), -1 is inferred; numpy does the -1.
    if not allowzero and 0 in shape:
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    try:
        return x.reshape(shape)
    except ValueError:
        raise ValueError(f"Reshape: cannot reshape input of shape {x.shape} to {shape}") from None


@op("Reshape", since=1)
def Reshape1(data, *, shape=(), consumed_inputs=None):
    return _reshape(data, _ints(shape), 0)


@op("Reshape", since=5)
def Reshape5(data, shape):
    return _reshape(data, _ints(shape), 0)


@op("Reshape", since=14)
def Reshape14(data, shape, allowzero=0):
    return _reshape(data, _ints(shape), allowzero)


# --- Transpose / Flatten / Squeeze / Unsqueeze -----------------------------------------

@op("Transpose", since=1)
def Transpose(data, perm=None):
    # Reference: https://onnx.ai/onnx/operators/onnx__Transpose.html (default: reverse dims)
    if perm is None:
        return data.transpose()
    if sorted(perm) != list(range(data.ndim)):
        raise ValueError(f"Transpose: perm {perm} is not a permutation of rank {data.ndim}")
    return data.transpose(perm)


@op("Flatten", since=1)
def Flatten(input, axis=1):
    # Reference: https://onnx.ai/onnx/operators/onnx__Flatten.html  (axis in [-r, r])
    r = input.ndim
    if not -r <= axis <= r:
        raise ValueError(f"Flatten: axis {axis} out of range for rank {r}")
    if axis < 0:
        axis += r
    outer = math.prod(input.shape[:axis])
    return input.reshape(outer, math.prod(input.shape[axis:]))


def _squeeze(x: np.ndarray, axes: list[int]) -> np.ndarray:
    # Reference: https://onnx.ai/onnx/operators/onnx__Squeeze.html
    shape = list(x.shape)
    if not axes:
        return x.reshape([d for d in shape if d != 1])
    r = len(shape)
    for a in sorted((a + r if a < 0 else a for a in axes), reverse=True):
        if not 0 <= a < r or shape[a] != 1:
            raise ValueError(f"Squeeze: axes {axes} must name dims of size 1 in input shape {x.shape}")
        del shape[a]
    if len(shape) != r - len(axes):
        raise ValueError(f"Squeeze: repeated axes {axes}")
    return x.reshape(shape)


@op("Squeeze", since=1)
def Squeeze1(data, *, axes=None):
    return _squeeze(data, _ints(axes))


@op("Squeeze", since=13)
def Squeeze13(data, axes=None):
    return _squeeze(data, _ints(axes))


def _unsqueeze(x: np.ndarray, axes: list[int]) -> np.ndarray:
    # Reference: https://onnx.ai/onnx/operators/onnx__Unsqueeze.html
    # Axes index the output (rank r + len(axes)); negative axes count from its end.
    out_rank = x.ndim + len(axes)
    norm = sorted(a + out_rank if a < 0 else a for a in axes)
    if norm and (norm[0] < 0 or norm[-1] >= out_rank or len(set(norm)) != len(norm)):
        raise ValueError(f"Unsqueeze: invalid axes {axes} for output rank {out_rank}")
    shape = list(x.shape)
    for a in norm:
        shape.insert(a, 1)
    return x.reshape(shape)


@op("Unsqueeze", since=1)
def Unsqueeze1(data, *, axes=()):
    return _unsqueeze(data, _ints(axes))


@op("Unsqueeze", since=13)
def Unsqueeze13(data, axes):
    return _unsqueeze(data, _ints(axes))


# --- Concat / Split ------------------------------------------------------------------

def _concat(inputs, axis: int) -> np.ndarray:
    # Reference: https://onnx.ai/onnx/operators/onnx__Concat.html
    if not inputs:
        raise ValueError("Concat: needs at least one input")
    try:
        if (axis in (1, -3) and all(isinstance(t, np.ndarray) and t.ndim == 4 for t in inputs)
                and any(is_nhwc(t) for t in inputs)):
            # channels-last inputs (layout.py): keep the result channels-last, so the skip
            # connections of a UNet reach the next convolution without a transpose
            shape = list(inputs[0].shape)
            shape[1] = sum(t.shape[1] for t in inputs)
            return np.concatenate(inputs, axis=1, out=nhwc_empty(shape, np.result_type(*inputs)))
        return np.concatenate(inputs, axis=axis)
    except (ValueError, np.exceptions.AxisError):
        shapes = [t.shape for t in inputs]
        raise ValueError(f"Concat: cannot concatenate shapes {shapes} on axis {axis}") from None


@op("Concat", since=1)
def Concat1(*inputs, axis=1):
    return _concat(inputs, axis)


@op("Concat", since=4)
def Concat4(*inputs, axis):
    return _concat(inputs, axis)


def _split(x: np.ndarray, sizes: list[int] | None, axis: int, n: int) -> tuple:
    # Reference: https://onnx.ai/onnx/operators/onnx__Split.html
    # Without explicit sizes: n chunks of ceil(dim / n), the last one smaller (opset 18).
    axis = _axis("Split", axis, x.ndim)
    dim = x.shape[axis]
    if not sizes:
        chunk = -(-dim // n)
        sizes = [max(0, min(chunk, dim - i * chunk)) for i in range(n)]
    elif sum(sizes) != dim:
        raise ValueError(f"Split: sizes {sizes} do not sum to dim {dim} of shape {x.shape} "
                         f"on axis {axis}")
    lead = (slice(None),) * axis
    outs, start = [], 0
    for s in sizes:
        outs.append(x[lead + (slice(start, start + s),)])
        start += s
    return tuple(outs)


@op("Split", since=1)
def Split1(input, split_input=None, *, axis=0, split=None, _noutputs):
    return _split(input, _ints(split_input) or _ints(split), axis, _noutputs)


@op("Split", since=2)
def Split2(input, *, axis=0, split=None, _noutputs):
    return _split(input, _ints(split), axis, _noutputs)


@op("Split", since=13)
def Split13(input, split=None, *, axis=0, _noutputs):
    return _split(input, _ints(split), axis, _noutputs)


@op("Split", since=18)
def Split18(input, split=None, *, axis=0, num_outputs=None, _noutputs):
    if split is not None and num_outputs is not None:
        raise ValueError("Split: both the 'split' input and 'num_outputs' are given")
    return _split(input, _ints(split), axis, num_outputs or _noutputs)


# --- Slice ---------------------------------------------------------------------------

def _slice(x: np.ndarray, starts: list[int], ends: list[int], axes: list[int] | None,
           steps: list[int] | None) -> np.ndarray:
    # Reference: https://onnx.ai/onnx/operators/onnx__Slice.html
    # Negative start/end count from the end; then start is clamped to [0, dim] (step > 0)
    # or [0, dim-1] (step < 0), end to [0, dim] or [-1, dim-1]; INT64 sentinels clamp too.
    shape = x.shape
    r = len(shape)
    if len(starts) != len(ends):
        raise ValueError(f"Slice: starts {starts} and ends {ends} differ in length")
    if not axes:
        axes = range(len(starts))
    if not steps:
        steps = (1,) * len(starts)
    index = [slice(None)] * r
    for start, end, a, step in zip(starts, ends, axes, steps):
        if a < 0:
            a += r
        if not 0 <= a < r:
            raise ValueError(f"Slice: axis in {list(axes)} out of range for input shape {shape}")
        dim = shape[a]
        if start < 0:
            start += dim
        if end < 0:
            end += dim
        if step > 0:
            index[a] = slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
        elif step < 0:
            end = min(max(end, -1), dim - 1)
            index[a] = slice(min(max(start, 0), dim - 1), None if end < 0 else end, step)
        else:
            raise ValueError("Slice: step must not be 0")
    return x[tuple(index)]


@op("Slice", since=1)
def Slice1(data, *, starts, ends, axes=None):
    return _slice(data, _ints(starts), _ints(ends), _ints(axes), None)


@op("Slice", since=10)
def Slice10(data, starts, ends, axes=None, steps=None):
    return _slice(data, _ints(starts), _ints(ends), _ints(axes), _ints(steps))


# --- Expand / Tile -------------------------------------------------------------------

@op("Expand", since=8)
def Expand(input, shape):
    # Reference: https://onnx.ai/onnx/operators/onnx__Expand.html  (bidirectional broadcast)
    # Materialised: a zero-stride broadcast view would be read-only and surprise any
    # consumer that assumes contiguous memory; Expand outputs are small in practice.
    target = _ints(shape)
    # Broadcast shape by hand: np.broadcast_shapes costs more than the copy for small inputs.
    src = input.shape
    n = max(len(src), len(target))
    a = (1,) * (n - len(src)) + src
    b = (1,) * (n - len(target)) + tuple(target)
    out_shape = []
    for da, db in zip(a, b):
        if da != db and da != 1 and db != 1:
            raise ValueError(f"Expand: input shape {src} does not broadcast with shape {target}")
        out_shape.append(db if da == 1 else da)
    out_shape = tuple(out_shape)
    if out_shape == src:
        return input
    out = np.empty(out_shape, dtype=input.dtype)
    np.copyto(out, input)
    return out


@op("Tile", since=1)
def Tile1(input, tiles, axis):
    # Opset 1: repeat `tiles` times along the single axis `axis` (both scalar inputs).
    reps = [1] * input.ndim
    reps[_axis("Tile", int(_scalar(axis)), input.ndim)] = int(_scalar(tiles))
    return np.tile(input, reps)


@op("Tile", since=6)
def Tile6(input, repeats):
    # Reference: https://onnx.ai/onnx/operators/onnx__Tile.html
    reps = _ints(repeats)
    if len(reps) != input.ndim:
        raise ValueError(f"Tile: repeats {reps} must have one entry per dim of {input.shape}")
    return np.tile(input, reps)


# --- Pad -----------------------------------------------------------------------------

_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}


def _pad(x: np.ndarray, pads: list[int], mode: str, value, axes: list[int] | None) -> np.ndarray:
    # Reference: https://onnx.ai/onnx/operators/onnx__Pad.html
    # pads = [x1_begin, x2_begin, ..., x1_end, x2_end, ...] over `axes` (default: all).
    # Negative pads crop; cropping is applied first, then the positive pads.
    if mode not in _PAD_MODES:
        raise ValueError(f"Pad: unsupported mode {mode!r} (expected {sorted(_PAD_MODES)})")
    r = x.ndim
    axes = [_axis("Pad", a, r) for a in axes] if axes else list(range(r))
    if len(pads) != 2 * len(axes):
        raise ValueError(f"Pad: {len(pads)} pads for {len(axes)} axes of input {x.shape} "
                         f"(expected {2 * len(axes)})")
    n = len(axes)
    width = [(0, 0)] * r
    crop = [slice(None)] * r
    for i, a in enumerate(axes):
        b, e = pads[i], pads[i + n]
        if b < 0 or e < 0:
            crop[a] = slice(max(-b, 0), x.shape[a] - max(-e, 0))
        width[a] = (max(b, 0), max(e, 0))
    if any(s != slice(None) for s in crop):
        x = x[tuple(crop)]
    if all(w == (0, 0) for w in width):
        return x.copy()
    if mode == "constant":
        # Allocate once and copy the interior (np.pad builds the same, with more overhead).
        out_shape = tuple(d + b + e for d, (b, e) in zip(x.shape, width))
        out = np.full(out_shape, value if value is not None else 0, dtype=x.dtype)
        out[tuple(slice(b, b + d) for d, (b, _) in zip(x.shape, width))] = x
        return out
    if x.size == 0:
        raise ValueError(f"Pad: mode {mode!r} cannot pad an empty tensor of shape {x.shape}")
    return np.pad(x, width, mode=_PAD_MODES[mode])


@op("Pad", since=1)
def Pad1(data, *, paddings, mode="constant", value=0.0):
    return _pad(data, _ints(paddings), mode, value, None)


@op("Pad", since=2)
def Pad2(data, *, pads, mode="constant", value=0.0):
    return _pad(data, _ints(pads), mode, value, None)


@op("Pad", since=11)
def Pad11(data, pads, constant_value=None, *, mode="constant"):
    value = None if constant_value is None or constant_value.size == 0 else _scalar(constant_value)
    return _pad(data, _ints(pads), mode, value, None)


@op("Pad", since=18)
def Pad18(data, pads, constant_value=None, axes=None, *, mode="constant"):
    value = None if constant_value is None or constant_value.size == 0 else _scalar(constant_value)
    return _pad(data, _ints(pads), mode, value, _ints(axes))


# --- Shape / Size / Constant / ConstantOfShape / Range -------------------------------

@op("Shape", since=1)
def Shape1(data):
    return np.array(data.shape, dtype=np.int64)


@op("Shape", since=15)
def Shape15(data, start=0, end=None):
    # Reference: https://onnx.ai/onnx/operators/onnx__Shape.html
    # start/end clamp to [0, rank] after adding rank to negatives: Python slicing does that.
    return np.array(data.shape[start:end], dtype=np.int64)


@op("Size", since=1)
def Size(data):
    return np.array(data.size, dtype=np.int64)


@op("Constant", since=1)
def Constant(*, value=None, value_float=None, value_floats=None, value_int=None,
             value_ints=None, value_string=None, value_strings=None, sparse_value=None):
    # Reference: https://onnx.ai/onnx/operators/onnx__Constant.html (exactly one attribute)
    if value is not None:
        out = np.asarray(value).view()
        out.flags.writeable = False  # shared with the graph across runs
        return out
    if value_float is not None:
        return np.array(value_float, dtype=np.float32)
    if value_floats is not None:
        return np.array(value_floats, dtype=np.float32)
    if value_int is not None:
        return np.array(value_int, dtype=np.int64)
    if value_ints is not None:
        return np.array(value_ints, dtype=np.int64)
    if sparse_value is not None:
        raise NotImplementedError("Constant: sparse_value is not supported")
    if value_string is not None or value_strings is not None:
        raise NotImplementedError("Constant: string tensors are not supported")
    raise ValueError("Constant: node has no value attribute")


@op("ConstantOfShape", since=9)
def ConstantOfShape(input, value=None):
    # Reference: https://onnx.ai/onnx/operators/onnx__ConstantOfShape.html
    # `value` is a one-element tensor giving dtype and fill; default float32 0.
    shape = _ints(input)
    if value is None:
        return np.zeros(shape, dtype=np.float32)
    if value.size != 1:
        raise ValueError(f"ConstantOfShape: value must have one element, got shape {value.shape}")
    out = np.empty(shape, dtype=value.dtype)
    out.fill(value.reshape(()))
    return out


def _range(start, limit, delta) -> np.ndarray:
    # Reference: https://onnx.ai/onnx/operators/onnx__Range.html
    # n = max(ceil((limit - start) / delta), 0); out[i] = start + i * delta, dtype of start.
    # Floats are computed in float64 and rounded once (at least as exact as stash_type=1).
    s, lim, d = start.item(), limit.item(), delta.item()
    if d == 0:
        raise ValueError("Range: delta must not be 0")
    if start.dtype.kind in "iu":
        return np.arange(s, lim, d, dtype=start.dtype)
    n = max(math.ceil((lim - s) / d), 0)
    return (s + np.arange(n, dtype=np.float64) * d).astype(start.dtype)


@op("Range", since=11)
def Range11(start, limit, delta):
    return _range(start, limit, delta)


@op("Range", since=27)
def Range27(start, limit, delta, *, stash_type=1):
    return _range(start, limit, delta)


# --- Identity / Dropout --------------------------------------------------------------

@op("Identity", since=1)
def Identity(input):
    return input


def _dropout(x, ratio: float, training: bool, noutputs: int, mask_dtype):
    # Reference: https://onnx.ai/onnx/operators/onnx__Dropout.html
    # Inference: output = input, mask (if requested) all True. Training with ratio > 0
    # draws random masks, which an inference engine cannot reproduce.
    if training and ratio != 0:
        raise NotImplementedError(f"Dropout: training_mode with ratio {ratio} is not supported "
                                  f"(inference engine; export the model in eval mode)")
    if noutputs < 2:
        return x
    return x, np.ones(x.shape, dtype=mask_dtype)


@op("Dropout", since=1)
def Dropout1(data, *, is_test=0, ratio=0.5, consumed_inputs=None, _noutputs=1):
    # is_test=0 is ignored on purpose: old exporters left it at 0 in inference graphs.
    return _dropout(data, ratio, False, _noutputs, data.dtype)


@op("Dropout", since=7)
def Dropout7(data, *, ratio=0.5, _noutputs=1):
    return _dropout(data, ratio, False, _noutputs, data.dtype)


@op("Dropout", since=10)
def Dropout10(data, *, ratio=0.5, _noutputs=1):
    return _dropout(data, ratio, False, _noutputs, np.bool_)


@op("Dropout", since=12)
def Dropout12(data, ratio=None, training_mode=None, *, seed=None, _noutputs=1):
    r = 0.5 if ratio is None else float(_scalar(ratio))
    training = training_mode is not None and bool(_scalar(training_mode))
    return _dropout(data, r, training, _noutputs, np.bool_)


# --- DepthToSpace / SpaceToDepth -----------------------------------------------------

@op("DepthToSpace", since=1)
def DepthToSpace(input, *, blocksize, mode="DCR"):
    # Reference: https://onnx.ai/onnx/operators/onnx__DepthToSpace.html
    # [N, C, H, W] -> [N, C/bs^2, H*bs, W*bs]; DCR takes depth as (bs, bs, C'), CRD as (C', bs, bs).
    if input.ndim != 4 or input.shape[1] % (blocksize * blocksize):
        raise ValueError(f"DepthToSpace: input {input.shape} must be 4-D with C divisible "
                         f"by blocksize^2={blocksize * blocksize}")
    n, c, h, w = input.shape
    bs, c2 = blocksize, c // (blocksize * blocksize)
    if mode == "DCR":
        t = input.reshape(n, bs, bs, c2, h, w).transpose(0, 3, 4, 1, 5, 2)
    elif mode == "CRD":
        t = input.reshape(n, c2, bs, bs, h, w).transpose(0, 1, 4, 2, 5, 3)
    else:
        raise ValueError(f"DepthToSpace: mode must be 'DCR' or 'CRD', got {mode!r}")
    return np.ascontiguousarray(t).reshape(n, c2, h * bs, w * bs)


def _space_to_depth(x: np.ndarray, bs: int, mode: str) -> np.ndarray:
    # Reference: https://onnx.ai/onnx/operators/onnx__SpaceToDepth.html
    # [N, C, H, W] -> [N, C*bs^2, H/bs, W/bs]; the inverse of DepthToSpace in the same mode.
    if x.ndim != 4 or x.shape[2] % bs or x.shape[3] % bs:
        raise ValueError(f"SpaceToDepth: input {x.shape} must be 4-D with H, W divisible "
                         f"by blocksize={bs}")
    n, c, h, w = x.shape
    t = x.reshape(n, c, h // bs, bs, w // bs, bs)
    if mode == "DCR":
        t = t.transpose(0, 3, 5, 1, 2, 4)
    elif mode == "CRD":
        t = t.transpose(0, 1, 3, 5, 2, 4)
    else:
        raise ValueError(f"SpaceToDepth: mode must be 'DCR' or 'CRD', got {mode!r}")
    return np.ascontiguousarray(t).reshape(n, c * bs * bs, h // bs, w // bs)


@op("SpaceToDepth", since=1)
def SpaceToDepth1(input, *, blocksize):
    return _space_to_depth(input, blocksize, "DCR")


@op("SpaceToDepth", since=28)
def SpaceToDepth28(input, *, blocksize, mode="DCR"):
    return _space_to_depth(input, blocksize, mode)


# --- Trilu / EyeLike -----------------------------------------------------------------

@op("Trilu", since=14)
def Trilu(input, k=None, *, upper=1):
    # Reference: https://onnx.ai/onnx/operators/onnx__Trilu.html (last two dims)
    if input.ndim < 2:
        raise ValueError(f"Trilu: input must be at least 2-D, got shape {input.shape}")
    kk = 0 if k is None else int(_scalar(k))
    return np.triu(input, kk) if upper else np.tril(input, kk)


@op("EyeLike", since=9)
def EyeLike(input, *, dtype=None, k=0):
    # Reference: https://onnx.ai/onnx/operators/onnx__EyeLike.html
    from ..dtypes import onnx_to_numpy
    if input.ndim != 2:
        raise ValueError(f"EyeLike: input must be 2-D, got shape {input.shape}")
    dt = input.dtype if dtype is None else onnx_to_numpy(dtype)
    return np.eye(input.shape[0], input.shape[1], k=k, dtype=dt)


# --- ReverseSequence / Compress ------------------------------------------------------

@op("ReverseSequence", since=10)
def ReverseSequence(input, sequence_lens, *, batch_axis=1, time_axis=0):
    # Reference: https://onnx.ai/onnx/operators/onnx__ReverseSequence.html
    # Reverse the first sequence_lens[b] steps along time_axis for every batch entry b.
    lens = _ints(sequence_lens)
    if len(lens) != input.shape[batch_axis]:
        raise ValueError(f"ReverseSequence: {len(lens)} sequence_lens for batch dim "
                         f"{input.shape[batch_axis]} of input {input.shape}")
    out = input.copy()
    for b, n in enumerate(lens):
        src = [slice(None)] * input.ndim
        dst = [slice(None)] * input.ndim
        src[batch_axis] = dst[batch_axis] = b
        src[time_axis] = slice(n - 1, None, -1) if n > 0 else slice(0, 0)
        dst[time_axis] = slice(0, n)
        out[tuple(dst)] = input[tuple(src)]
    return out


@op("Compress", since=9)
def Compress(input, condition, *, axis=None):
    # Reference: https://onnx.ai/onnx/operators/onnx__Compress.html
    # condition may be shorter than the axis (missing entries count as False).
    cond = np.asarray(condition, dtype=bool).reshape(-1)
    if axis is None:
        return np.compress(cond, input.reshape(-1))
    return np.compress(cond, input, axis=_axis("Compress", axis, input.ndim))
