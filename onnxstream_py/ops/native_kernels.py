"""Native implementations backed by our own C kernels (native/osn_k_*.c): normalisation
(including the plan's fused GroupNorm + SiLU), Erf, Gelu, Softmax and the float16 <-> float32 Cast.

Trade-off: each op accelerates only its common float32 case (the one Stable Diffusion runs)
and hands every other case (float16/float64 inputs, other stash types or axes, empty
tensors) to the numpy reference implementation, which stays the single statement of the
op's semantics and error messages. Inputs are never modified; a strided input is copied
once to C order before the kernel runs, except channels-last activations, which the
group-normalisation kernel reads as they are (output channels-last too).
Reference: https://onnx.ai/onnx/operators/ (one section per op).
"""
from __future__ import annotations

import numpy as np

from .. import native
from ..layout import is_nhwc, nhwc_buffer
from . import elementwise, fused, norm, reduce
from .registry import op

_F32 = np.dtype(np.float32)
_ONNX_FLOAT, _ONNX_FLOAT16 = 1, 10   # TensorProto.FLOAT, TensorProto.FLOAT16


def _is_f32(x) -> bool:
    return isinstance(x, np.ndarray) and x.dtype == _F32 and x.size > 0


def _contiguous(x: np.ndarray) -> np.ndarray:
    """C order, copying only strided inputs (np.ascontiguousarray would turn 0-d into 1-d)."""
    return x if x.flags.c_contiguous else np.ascontiguousarray(x)


# --------------------------------------------------------------------------- normalisation
def _group_norm_act(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, groups: int, epsilon: float,
                    silu: bool, pool, inplace: bool = False) -> np.ndarray:
    """GroupNorm (+ SiLU) of float32 x [N, C, *spatial] with per-channel scale/bias [C], in x's
    layout: a channels-last x is normalised as it lies in memory (no transpose) and the result
    is channels-last too; any other strides are copied to NCHW once. ``inplace``: write into
    x's own buffer (x is a dying, donated input)."""
    scale, bias = np.ascontiguousarray(scale, _F32), np.ascontiguousarray(bias, _F32)
    if is_nhwc(x):
        buf = nhwc_buffer(x)
        y = native.group_norm_act_f32(buf, scale, bias, groups, epsilon, silu, channels_last=True,
                                      out=buf if inplace else None, pool=pool)
        return y.transpose(0, 3, 1, 2)
    if not x.flags.c_contiguous:
        return native.group_norm_act_f32(np.ascontiguousarray(x), scale, bias, groups, epsilon, silu, pool=pool)
    return native.group_norm_act_f32(x, scale, bias, groups, epsilon, silu, out=x if inplace else None, pool=pool)


def _is_own_buffer(out, x: np.ndarray) -> bool:
    """The interpreter donated x itself (registry ``_out``): same memory, shape and strides."""
    return (isinstance(out, np.ndarray) and out.dtype == _F32 and out.flags.writeable
            and out.shape == x.shape and out.strides == x.strides and out.ctypes.data == x.ctypes.data)


@op("InstanceNormalization", since=6, backend="native")
def InstanceNormalization(x, scale, B, *, epsilon=1e-5, _ctx):
    """torch's GroupNorm export runs here (Reshape [N, G, -1] -> InstanceNormalization) when
    the plan did not fuse it into GroupNorm."""
    if not _is_f32(x) or x.ndim < 2:
        return norm.InstanceNormalization(x, scale, B, epsilon=epsilon)
    c = x.shape[1]
    scale = norm._channel_vector("InstanceNormalization", "scale", scale, c, _F32)
    bias = norm._channel_vector("InstanceNormalization", "bias", B, c, _F32)
    return _group_norm_act(x, scale, bias, c, epsilon, False, _ctx.pool)


@op("GroupNorm", domain=fused.DOMAIN, backend="native")
def GroupNorm(x, gamma=None, beta=None, group_scale=None, group_bias=None, *, num_groups=None,
              epsilon=1e-5, silu=0, batch=0, shape=None, _out=None, _ctx):
    """The plan's fused GroupNorm (+ SiLU) in one C kernel, NCHW or channels-last, in place
    when x dies here (a norm2 input of a UNet ResNet block); every case that is not a float32
    per-channel affine runs the numpy op (ops/fused.py)."""
    aff = None if num_groups is None else fused.per_channel_affine(x, gamma, beta, group_scale, group_bias,
                                                                   num_groups, batch, shape)
    if aff is None:
        return fused.GroupNorm(x, gamma, beta, group_scale, group_bias, num_groups=num_groups,
                               epsilon=epsilon, silu=silu, batch=batch, shape=shape)
    return _group_norm_act(x, aff[0], aff[1], num_groups, epsilon, bool(silu), _ctx.pool,
                           inplace=_is_own_buffer(_out, x))


def _group_norm(x, scale, bias, epsilon, num_groups, per_group_params: bool, pool):
    """The float32 case natively; None for every other case (the caller runs numpy, which
    also raises the reference's errors for bad group counts)."""
    if not _is_f32(x) or x.ndim < 2 or num_groups is None or num_groups <= 0 or x.shape[1] % num_groups:
        return None
    c = x.shape[1]
    cpg = c // num_groups
    if per_group_params:
        scale = np.repeat(norm._channel_vector("GroupNormalization", "scale", scale, num_groups, _F32), cpg)
        bias = np.repeat(norm._channel_vector("GroupNormalization", "bias", bias, num_groups, _F32), cpg)
    else:
        scale = norm._channel_vector("GroupNormalization", "scale", scale, c, _F32)
        bias = norm._channel_vector("GroupNormalization", "bias", bias, c, _F32)
    return _group_norm_act(x, scale, bias, num_groups, epsilon, False, pool)


@op("GroupNormalization", since=18, backend="native")
def GroupNormalization18(x, scale, bias, *, epsilon=1e-5, num_groups=None, _ctx):
    """Opset 18: scale and bias per group [G]."""
    y = _group_norm(x, scale, bias, epsilon, num_groups, True, _ctx.pool)
    return y if y is not None else norm.GroupNormalization18(x, scale, bias, epsilon=epsilon,
                                                             num_groups=num_groups)


@op("GroupNormalization", since=21, backend="native")
def GroupNormalization21(x, scale, bias, *, epsilon=1e-5, num_groups=None, stash_type=1, _ctx):
    """Opset 21: scale and bias per channel [C]."""
    y = None if stash_type != 1 else _group_norm(x, scale, bias, epsilon, num_groups, False, _ctx.pool)
    return y if y is not None else norm.GroupNormalization21(x, scale, bias, epsilon=epsilon,
                                                             num_groups=num_groups, stash_type=stash_type)


@op("LayerNormalization", since=17, backend="native")
def LayerNormalization(x, scale, B=None, *, axis=-1, epsilon=1e-5, stash_type=1, _noutputs=3, _ctx):
    """Normalises over dims [axis:] (any axis: they are the trailing, contiguous columns of a
    [rows, cols] view); Mean and InvStdDev are computed only when the node has those outputs."""
    if not _is_f32(x) or stash_type != 1 or not -x.ndim <= axis < x.ndim:
        return norm.LayerNormalization(x, scale, B, axis=axis, epsilon=epsilon, stash_type=stash_type)
    axis, rows, cols = norm._normalized_split("LayerNormalization", x, axis)
    norm_shape = x.shape[axis:]
    col_mul = norm._cols_param("LayerNormalization", "Scale", scale, norm_shape, _F32)
    col_add = norm._cols_param("LayerNormalization", "B", B, norm_shape, _F32)
    x2d = _contiguous(x).reshape(rows, cols)
    stats = _noutputs > 1
    mean = np.empty(rows, dtype=_F32) if stats else None
    invstd = np.empty(rows, dtype=_F32) if stats else None
    y = native.layer_norm_f32(x2d, np.ascontiguousarray(col_mul),
                              None if col_add is None else np.ascontiguousarray(col_add), epsilon,
                              mean=mean, invstd=invstd, pool=_ctx.pool).reshape(x.shape)
    if not stats:
        return y
    stat_shape = x.shape[:axis] + (1,) * (x.ndim - axis)
    return y, mean.reshape(stat_shape), invstd.reshape(stat_shape)


# --------------------------------------------------------------------------- Erf, Gelu
def _into(out, x: np.ndarray) -> np.ndarray | None:
    """The interpreter's donated buffer (registry: ``_out``) when it can take a float32 result
    of x's shape: the kernels accept x itself or a buffer that does not overlap x."""
    if not (isinstance(out, np.ndarray) and out.shape == x.shape and out.dtype == _F32
            and out.flags.writeable and out.flags.c_contiguous):
        return None
    if out.ctypes.data != x.ctypes.data and np.may_share_memory(out, x):
        return None
    return out


@op("Erf", since=9, backend="native")
def Erf(x, *, _out=None, _ctx):
    if not _is_f32(x):
        return elementwise.Erf(x, _out=_out)
    xc = _contiguous(x)
    return native.erf_f32(xc, _into(_out, xc), pool=_ctx.pool)


@op("Gelu", since=20, backend="native")
def Gelu(x, approximate="none", *, _ctx):
    if not _is_f32(x) or approximate not in ("none", "tanh"):
        return elementwise.Gelu(x, approximate=approximate)
    return native.gelu_f32(_contiguous(x), approximate == "tanh", pool=_ctx.pool)


# --------------------------------------------------------------------------- Softmax
@op("Softmax", since=1, backend="native")
def Softmax1(x, axis=1, *, _out=None, _ctx):
    """Opsets 1-12: the input is flattened to [prod(shape[:axis]), prod(shape[axis:])]."""
    if not _is_f32(x) or not -x.ndim <= axis <= x.ndim:
        return reduce.Softmax1(x, axis=axis)
    xc = _contiguous(x)
    x2d = reduce._coerce_2d(xc, axis, "Softmax")
    if x2d.shape[1] == 0:
        return reduce.Softmax1(x, axis=axis)
    out = _into(_out, xc)
    return native.softmax_f32(x2d, None if out is None else out.reshape(x2d.shape),
                              pool=_ctx.pool).reshape(x.shape)


@op("Softmax", since=13, backend="native")
def Softmax13(x, axis=-1, *, _out=None, _ctx):
    """Opset 13+: one axis; the last one (attention scores) runs natively."""
    if not _is_f32(x) or x.ndim == 0 or axis not in (-1, x.ndim - 1):
        return reduce.Softmax13(x, axis=axis)
    xc = _contiguous(x)
    return native.softmax_f32(xc, _into(_out, xc), pool=_ctx.pool)


# --------------------------------------------------------------------------- Cast
def _cast(x, to, pool):
    """float16 <-> float32 natively; None for every other conversion (the caller runs numpy)."""
    if isinstance(x, np.ndarray) and x.size > 0:
        if x.dtype == np.float16 and to == _ONNX_FLOAT:
            return native.f16_to_f32(_contiguous(x), pool=pool)
        if x.dtype == _F32 and to == _ONNX_FLOAT16:
            return native.f32_to_f16(_contiguous(x), pool=pool)
    return None


@op("Cast", since=6, backend="native")
def Cast6(x, to=1, *, _ctx):
    """float16 <-> float32 in plain C (numpy's astype is several times slower); the rest numpy."""
    y = _cast(x, to, _ctx.pool)
    return y if y is not None else elementwise.Cast6(x, to=to)


@op("Cast", since=19, backend="native")
def Cast19(x, to=1, saturate=1, round_mode="up", *, _ctx):
    y = _cast(x, to, _ctx.pool)
    return y if y is not None else elementwise.Cast19(x, to=to, saturate=saturate, round_mode=round_mode)


# --------------------------------------------------------------------------- fused LayerNorm, Gelu, GeluMul, Silu
# The plan's fusions of older exporters' spellings (ops/fused.py states each op). Elementwise
# ones keep their input's layout: a channels-last activation runs on its NHWC buffer, and
# the GEGLU halves (column slices of one projection) are read in place as row-strided matrices.

def _row_view(a: np.ndarray) -> np.ndarray:
    """a itself when the act kernels can read it (C order or evenly spaced contiguous rows),
    else a C-order copy."""
    try:
        native.row_matrix("", "", a)
        return a
    except ValueError:
        return np.ascontiguousarray(a)


def _same_layout(fn, x: np.ndarray, *others):
    """fn(x, *others) on the NHWC buffers when x (and every other) is channels-last, returning
    a channels-last result; None when x is not channels-last."""
    if not is_nhwc(x) or not all(is_nhwc(o) for o in others):
        return None
    return fn(nhwc_buffer(x), *(nhwc_buffer(o) for o in others)).transpose(0, 3, 1, 2)


def _out_for(out, *inputs) -> np.ndarray | None:
    """The donated buffer when it is one of the (C-contiguous) inputs or overlaps none of them."""
    for a in inputs:
        if (isinstance(out, np.ndarray) and out.ctypes.data == a.ctypes.data and a.flags.c_contiguous
                and out.shape == a.shape and out.strides == a.strides):
            return _into(out, a)
    if out is None or any(np.may_share_memory(out, a) for a in inputs):
        return None
    return _into(out, inputs[0])


@op("LayerNorm", domain=fused.DOMAIN, backend="native")
def LayerNorm(x, gamma=None, beta=None, *, axes=None, epsilon=1e-5, square="pow", _ctx):
    """The plan's LayerNorm (ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div[/Mul/Add] chain) in the
    LayerNormalization kernel: rows x cols over the trailing normalised dims."""
    p = fused.layer_norm_params(x, gamma, beta, axes)
    if p is None:
        return fused.LayerNorm(x, gamma, beta, axes=axes, epsilon=epsilon, square=square)
    axis, scale, bias = p
    cols = scale.size
    x2d = _contiguous(x).reshape(-1, cols)
    return native.layer_norm_f32(x2d, scale, bias, epsilon, pool=_ctx.pool).reshape(x.shape)


@op("Gelu", domain=fused.DOMAIN, backend="native")
def FusedGelu(x, *, approximate="none", const_rank=0, _out=None, _ctx):
    if not (_is_f32(x) and x.ndim >= const_rank) or approximate not in ("none", "tanh"):
        return fused.Gelu(x, approximate=approximate, const_rank=const_rank)
    tanh = approximate == "tanh"
    y = _same_layout(lambda b: native.gelu_f32(b, tanh, pool=_ctx.pool), x)
    if y is not None:
        return y
    xc = _contiguous(x)
    return native.gelu_f32(xc, tanh, _into(_out, xc), pool=_ctx.pool)


@op("GeluMul", domain=fused.DOMAIN, backend="native")
def GeluMul(x, m, *, approximate="none", const_rank=0, _out=None, _ctx):
    """m * Gelu(x) in one pass when x and m are float32 of one shape (GEGLU); else numpy."""
    if (not (_is_f32(x) and _is_f32(m) and x.shape == m.shape and x.ndim >= max(const_rank, 1))
            or approximate not in ("none", "tanh")):
        return fused.GeluMul(x, m, approximate=approximate, const_rank=const_rank)
    tanh = approximate == "tanh"
    y = _same_layout(lambda bx, bm: native.gelu_mul_f32(bx, bm, tanh, pool=_ctx.pool), x, m)
    if y is not None:
        return y
    x, m = _row_view(x), _row_view(m)
    return native.gelu_mul_f32(x, m, tanh, _out_for(_out, x, m), pool=_ctx.pool)


@op("Silu", domain=fused.DOMAIN, backend="native")
def Silu(x, *, alpha=1.0, const_rank=0, _out=None, _ctx):
    if not (_is_f32(x) and x.ndim >= max(const_rank, 1)):
        return fused.Silu(x, alpha=alpha, const_rank=const_rank)
    y = _same_layout(lambda b: native.silu_f32(b, alpha, pool=_ctx.pool), x)
    if y is not None:
        return y
    x = _row_view(x)
    return native.silu_f32(x, alpha, _out_for(_out, x), pool=_ctx.pool)
