"""Fused ops the plan makes from exported chains: GroupNorm (+ SiLU) from torch's export of
nn.GroupNorm, and (at the end of the file) LayerNorm, Gelu, GeluMul and Silu.

torch spells GroupNorm as Reshape [N, G, -1] -> InstanceNormalization(ones, zeros) ->
Reshape(shape of x) -> Mul(gamma [C,1,1]) -> Add(beta [C,1,1]), usually followed by SiLU as
y * Sigmoid(y): five to seven full passes over the activation (the SD 1.5 UNet has 61 such
chains, the VAE decoder 30 at up to 512x512). plan.fuse_group_norm replaces each chain by one
``onnxstream:GroupNorm`` node, which reads x once for the statistics and once for the output.

Trade-off: the op's definition *is* the chain it replaces, so the plan fuses on the graph's
structure alone, without knowing activation shapes: gamma/beta broadcast exactly as the
Mul/Add did, InstanceNormalization's own scale/bias (per group; they are weights in converted
models, so the plan cannot check that they are ones/zeros) are folded into the per-channel
affine, and the first Reshape's batch and the second's target (when a constant) are kept as
attributes. Whenever the chain is not a per-channel affine of a float32 group normalisation
(other dtypes, gamma broadcasting along another axis, a reshape that does not restore x's
shape), the op runs the unfused ops instead: same result, no fast path.
Reference: https://onnx.ai/onnx/operators/onnx__InstanceNormalization.html, onnx__Reshape,
onnx__Mul, onnx__Add, onnx__Sigmoid; torch.onnx symbolic_opset9.group_norm.
"""
from __future__ import annotations

import math

import numpy as np

from . import elementwise, norm, tensor
from .attention import DOMAIN
from .registry import op

_F32 = np.dtype(np.float32)
_SILU_BLOCK = 1 << 15   # elements per SiLU block: its temporaries stay in cache


def _reshape_back_target(shape, n: int, groups: int, per_group: int) -> tuple[int, ...] | None:
    """The shape the second Reshape gives the [n, groups, per_group] InstanceNormalization
    output for a constant target ``shape`` (allowzero = 0: 0 copies that input dim), or None
    when the Reshape would fail."""
    src = (n, groups, per_group)
    dims = [src[i] if d == 0 and i < 3 else int(d) for i, d in enumerate(shape)]
    if dims.count(-1) > 1 or any(d < -1 for d in dims):
        return None
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        if known == 0 or (n * groups * per_group) % known:
            return None
        dims[dims.index(-1)] = n * groups * per_group // known
    return tuple(dims) if math.prod(dims) == n * groups * per_group else None


def _channel_vector(v, x: np.ndarray) -> np.ndarray | None:
    """v broadcast against x as ONNX Mul/Add do, as a float32 [C] vector when that broadcast is
    per channel (shape [C,1,..,1], [1,C,1,..,1], a scalar, ...); None otherwise."""
    if not isinstance(v, np.ndarray) or v.dtype != _F32 or v.ndim > x.ndim:
        return None
    c = x.shape[1]
    shape = (1,) * (x.ndim - v.ndim) + v.shape
    if shape[1] not in (1, c) or any(d != 1 for i, d in enumerate(shape) if i != 1):
        return None
    return np.broadcast_to(v.reshape(-1), (c,))


def per_channel_affine(x, gamma, beta, group_scale, group_bias, num_groups: int, batch: int, shape):
    """The chain as z = groupnorm(x) * scale[c] + bias[c]: the float32 [C] vectors (scale, bias),
    or None when x/params are not the float32 per-channel case the fused kernels run."""
    if not (isinstance(x, np.ndarray) and x.dtype == _F32 and x.ndim >= 2 and x.size > 0):
        return None
    n, c = x.shape[0], x.shape[1]
    if num_groups is None or num_groups <= 0 or c % num_groups or (batch and batch != n):
        return None
    if shape is not None and _reshape_back_target(shape, n, num_groups, x.size // (n * num_groups)) != x.shape:
        return None
    cpg = c // num_groups
    ones, zeros = np.ones(c, _F32), np.zeros(c, _F32)
    g = ones if gamma is None else _channel_vector(gamma, x)
    b = zeros if beta is None else _channel_vector(beta, x)
    if g is None or b is None:
        return None
    per_group = []
    for v in (group_scale, group_bias):
        if v is None:
            per_group.append(None)
        elif isinstance(v, np.ndarray) and v.dtype == _F32 and v.shape == (num_groups,):
            per_group.append(np.repeat(v, cpg))
        else:
            return None          # InstanceNormalization would reject it: the unfused path raises
    gs, gb = per_group
    # ((xhat * s_g + b_g) * gamma_c + beta_c) = xhat * (s_g gamma_c) + (b_g gamma_c + beta_c)
    scale = g if gs is None else gs * g
    bias = b if gb is None else gb * g + b
    return np.ascontiguousarray(scale, _F32), np.ascontiguousarray(bias, _F32)


def silu_inplace(y: np.ndarray) -> np.ndarray:
    """y *= sigmoid(y) block by block, for a C-contiguous float array; returns y."""
    flat = y.reshape(-1)
    with np.errstate(all="ignore"):
        for i in range(0, flat.size, _SILU_BLOCK):
            blk = flat[i:i + _SILU_BLOCK]
            blk *= elementwise._sigmoid(blk)
    return y


def group_norm_reference(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, num_groups: int,
                         epsilon: float, silu: bool) -> np.ndarray:
    """Numpy twin of native.group_norm_act_f32 for x [N, C, *spatial] of any strides (the
    result is C-contiguous): norm.py's memory-bounded group normalisation, then SiLU."""
    x = norm._float_input("GroupNorm", x)
    y = norm._per_channel_norm("GroupNorm", x, scale, bias, x.shape[1] // num_groups, epsilon, _F32)
    return silu_inplace(y) if silu else y


def unfused(x, gamma, beta, group_scale, group_bias, num_groups, epsilon, silu, batch, shape):
    """The exported chain itself, op by op (every case the fused path does not take)."""
    t = tensor._reshape(x, [batch, num_groups, -1], 0)
    gs = np.ones(num_groups, t.dtype) if group_scale is None else group_scale
    gb = np.zeros(num_groups, t.dtype) if group_bias is None else group_bias
    t = norm.InstanceNormalization(t, gs, gb, epsilon=epsilon)
    t = tensor._reshape(t, list(x.shape) if shape is None else list(shape), 0)
    if gamma is not None:
        t = np.multiply(t, gamma)
    if beta is not None:
        t = np.add(t, beta)
    if silu:
        t = np.multiply(t, elementwise.Sigmoid(t))
    return t


@op("GroupNorm", domain=DOMAIN)
def GroupNorm(x, gamma=None, beta=None, group_scale=None, group_bias=None, *, num_groups=None,
              epsilon=1e-5, silu=0, batch=0, shape=None):
    """y = [silu](groupnorm(x) * gamma + beta) for x [N, C, *spatial].

    num_groups: G (C/G consecutive channels per group); epsilon: as InstanceNormalization's.
    gamma, beta (optional): multiplied/added with numpy broadcasting, as the replaced Mul/Add.
    group_scale, group_bias (optional, [G]): InstanceNormalization's scale and B (absent: ones
    and zeros). batch: the first Reshape's target dim 0 (0: copy N). shape: the second
    Reshape's constant target (absent: x's shape, i.e. Reshape(Shape(x))).
    """
    if num_groups is None:
        raise ValueError("GroupNorm: attribute num_groups is required")
    aff = per_channel_affine(x, gamma, beta, group_scale, group_bias, num_groups, batch, shape)
    if aff is None:
        return unfused(x, gamma, beta, group_scale, group_bias, num_groups, epsilon, silu, batch, shape)
    return group_norm_reference(x, aff[0], aff[1], num_groups, epsilon, bool(silu))


# =========================================================================== LayerNorm, Gelu, GeluMul, Silu
# Fused ops the plan makes from older exporters' spellings (plan.fuse_layer_norm, fuse_gelu,
# fuse_silu). Same trade-off as GroupNorm above: each op's definition is the chain it
# replaces, the plan fuses on structure and constant values alone, and every case the fast
# path does not cover exactly (dtypes other than float32, parameters that broadcast along
# other axes, ranks that change the broadcast) runs the chain op by op.
# Reference: onnx__ReduceMean, onnx__Sub, onnx__Pow, onnx__Sqrt, onnx__Div, onnx__Erf,
# onnx__Tanh, onnx__Sigmoid, onnx__LayerNormalization, onnx__Gelu (opset 20);
# torch.onnx symbolic_opset9.layer_norm (older exports) and gelu.

_SQRT_HALF = 0.7071067811865476
_SQRT_2_OVER_PI = 0.7978845608028654


def _trailing_axes(axes, ndim: int) -> int | None:
    """k when ``axes`` (None: all) are exactly the last k of ndim dims, else None."""
    if ndim == 0:
        return None
    if axes is None or len(axes) == 0:
        return ndim
    try:
        norm_axes = sorted({int(a) % ndim for a in axes if -ndim <= int(a) < ndim})
    except TypeError:
        return None
    if len(norm_axes) != len(axes) or norm_axes != list(range(ndim - len(norm_axes), ndim)):
        return None
    return len(norm_axes)


def _cols_vector(v, x: np.ndarray, k: int) -> np.ndarray | None:
    """v as Mul/Add broadcast it against x, as a float32 vector over x's last k dims (flattened),
    when that broadcast varies along those dims only and keeps x's shape; None otherwise."""
    if not isinstance(v, np.ndarray) or v.dtype != _F32 or v.ndim > x.ndim:
        return None
    shape = (1,) * (x.ndim - v.ndim) + v.shape
    lead, tail = shape[:x.ndim - k], shape[x.ndim - k:]
    if any(d != 1 for d in lead) or any(d not in (1, n) for d, n in zip(tail, x.shape[x.ndim - k:])):
        return None
    return np.ascontiguousarray(np.broadcast_to(v.reshape(tail), x.shape[x.ndim - k:]).reshape(-1))


def layer_norm_params(x, gamma, beta, axes):
    """(axis, scale [cols], bias [cols] | None) of the LayerNorm chain on float32 x when it is a
    LayerNormalization over x's trailing dims with per-column affine; None otherwise."""
    if not (isinstance(x, np.ndarray) and x.dtype == _F32 and x.size > 0):
        return None
    k = _trailing_axes(axes, x.ndim)
    if k is None:
        return None
    cols = math.prod(x.shape[x.ndim - k:])
    scale = np.ones(cols, _F32) if gamma is None else _cols_vector(gamma, x, k)
    bias = None if beta is None else _cols_vector(beta, x, k)
    if scale is None or (beta is not None and bias is None):
        return None
    return x.ndim - k, scale, bias


def layer_norm_unfused(x, gamma, beta, axes, epsilon, square):
    """The exported chain op by op: ReduceMean -> Sub -> Pow(2) | Mul(d, d) -> ReduceMean ->
    Add(eps) -> Sqrt -> Div [-> Mul(gamma)] [-> Add(beta)]."""
    from . import reduce
    with np.errstate(all="ignore"):
        mean = reduce._reduce("ReduceMean", reduce._k_mean, x, axes, 1)
        d = np.subtract(x, mean)
        sq = np.multiply(d, d) if square == "mul" else np.power(d, np.asarray(2.0, x.dtype))
        var = reduce._reduce("ReduceMean", reduce._k_mean, sq, axes, 1)
        y = np.divide(d, np.sqrt(np.add(var, np.asarray(epsilon, x.dtype))))
        if gamma is not None:
            y = np.multiply(y, gamma)
        if beta is not None:
            y = np.add(y, beta)
    return np.asarray(y)


@op("LayerNorm", domain=DOMAIN)
def LayerNorm(x, gamma=None, beta=None, *, axes=None, epsilon=1e-5, square="pow"):
    """y = (x - mean) / sqrt(var + epsilon) [* gamma] [+ beta], statistics over ``axes`` (None:
    all) as two ReduceMeans with keepdims; gamma/beta broadcast as the replaced Mul/Add.
    square: how the chain squared x - mean ("pow": Pow(d, 2), "mul": Mul(d, d))."""
    p = layer_norm_params(x, gamma, beta, axes)
    if p is None:
        return layer_norm_unfused(x, gamma, beta, axes, epsilon, square)
    axis, scale, bias = p
    return norm.LayerNormalization(x, scale.reshape(x.shape[axis:]),
                                   None if bias is None else bias.reshape(x.shape[axis:]),
                                   axis=axis, epsilon=epsilon)[0]


def gelu_unfused(x, approximate: str) -> np.ndarray:
    """The exported chain op by op in x's dtype (erf: x / sqrt 2 -> Erf -> + 1 -> * x -> * 0.5;
    tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))))."""
    dt = x.dtype.type
    with np.errstate(all="ignore"):
        if approximate == "tanh":
            inner = np.tanh(np.multiply(np.add(x, np.multiply(np.power(x, dt(3)), dt(0.044715))),
                                        dt(_SQRT_2_OVER_PI)))
        else:
            inner = elementwise.Erf(np.asarray(np.divide(x, dt(math.sqrt(2.0)))))
        return np.asarray(np.multiply(np.multiply(x, np.add(inner, dt(1))), dt(0.5)), x.dtype)


def _fused_rank_ok(x, const_rank: int) -> bool:
    """The chain's constants (rank const_rank) broadcast to x's own shape."""
    return isinstance(x, np.ndarray) and x.ndim >= const_rank


@op("Gelu", domain=DOMAIN)
def Gelu(x, *, approximate="none", const_rank=0):
    """x * Phi(x) as the exported chain spelled it (approximate: "none" for the erf form,
    "tanh" for the tanh form); const_rank: the largest rank among the chain's constants (a
    lower-rank x takes the chain's broadcast shape, so runs the chain)."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"Gelu: approximate={approximate!r}, expected 'none' or 'tanh'")
    if not (_fused_rank_ok(x, const_rank) and x.dtype == _F32):
        x = np.asarray(x)
        y = gelu_unfused(x, approximate)
        return y.reshape((1,) * (const_rank - y.ndim) + y.shape) if y.ndim < const_rank else y
    return elementwise.Gelu(x, approximate=approximate)


@op("GeluMul", domain=DOMAIN)
def GeluMul(x, m, *, approximate="none", const_rank=0):
    """m * Gelu(x) (GEGLU's product; Mul is commutative in IEEE arithmetic, so the operand
    order of the replaced Mul does not matter); m broadcasts as the Mul did."""
    return np.asarray(np.multiply(Gelu(x, approximate=approximate, const_rank=const_rank), m))


def silu_reference(x: np.ndarray, alpha: float) -> np.ndarray:
    """Numpy twin of native.silu_f32: x * sigmoid(alpha * x) in float32, block by block (any
    strides in, C order out)."""
    a = _F32.type(alpha)

    def block(b):
        s = b * a if alpha != 1.0 else b.copy()
        s = elementwise._sigmoid(s)
        s *= b
        return s
    with np.errstate(all="ignore"):
        return elementwise._blockwise(block, np.ascontiguousarray(x))


@op("Silu", domain=DOMAIN)
def Silu(x, *, alpha=1.0, const_rank=0):
    """x * Sigmoid(alpha * x): SiLU (alpha 1, exported as x * Sigmoid(x)) or QuickGELU
    (x * Sigmoid(1.702 x), CLIP). const_rank: the rank of alpha's constant in the chain."""
    if isinstance(x, np.ndarray) and x.dtype == _F32 and x.ndim >= max(const_rank, 1):
        return silu_reference(x, alpha)
    x = np.asarray(x)
    with np.errstate(all="ignore"):
        t = x if alpha == 1.0 else np.multiply(x, np.full((1,) * const_rank, alpha, x.dtype))
        return np.asarray(np.multiply(x, elementwise.Sigmoid(np.asarray(t))))


# --------------------------------------------------------------------------- GEGLU projection
# The SD UNet's feed-forward starts with GEGLU: p = x @ W + b ([tokens, 2H]), then
# p[..., :H] * Gelu(p[..., H:]). Unfused, p is the largest activation of a streamed run
# (4096 x 2560 floats = 40 MiB at 512x512, plus the 20 MiB product). plan.fuse_geglu_linear
# makes it one op that computes p a block of rows at a time, so only the [.., H] product is
# alive. The exporter computes the split point at run time (Shape(p)[-1] / 2), so the op
# receives both Slices' parameters as inputs and checks that they halve the last axis;
# anything else runs the replaced ops.

GEGLU_BLOCK_BYTES = 4 << 20     # rows of p computed at once (float32)


def last_axis_range(rank: int, n: int, starts, ends, axes, steps) -> tuple[int, int] | None:
    """(c0, c1) when Slice(starts, ends, axes, steps) on a rank-``rank`` tensor whose last axis
    has n elements selects columns c0:c1 of that axis only, step 1; else None."""
    starts, ends = tensor._ints(starts), tensor._ints(ends)
    axes = tensor._ints(axes) if axes is not None else list(range(len(starts)))
    steps = tensor._ints(steps) if steps is not None else [1] * len(starts)
    if not (len(starts) == len(ends) == len(axes) == len(steps) == 1) or steps[0] != 1:
        return None
    if axes[0] not in (-1, rank - 1):
        return None
    c0, c1 = starts[0], ends[0]
    c0, c1 = (min(max(c + n if c < 0 else c, 0), n) for c in (c0, c1))
    return (c0, c1) if c0 < c1 else None


def geglu_halves(rank: int, n: int, m_slice, g_slice) -> int | None:
    """H when the two Slices take p[..., :H] (the multiplier) and p[..., H:] (Gelu's input)
    with n == 2H; else None."""
    m, g = last_axis_range(rank, n, *m_slice), last_axis_range(rank, n, *g_slice)
    if m is None or g is None or n % 2 or m != (0, n // 2) or g != (n // 2, n):
        return None
    return n // 2


def geglu_unfused(p, m_slice, g_slice, approximate, const_rank):
    """The replaced Slice, Slice and GeluMul on the projection p."""
    m, g = tensor.Slice10(p, *m_slice), tensor.Slice10(p, *g_slice)
    return GeluMul(g, m, approximate=approximate, const_rank=const_rank)


def geglu_rows(x2d, n, rows_fn, product_fn, dtype) -> np.ndarray:
    """y [M, n/2] computed GEGLU_BLOCK_BYTES of p at a time: rows_fn(r0, r1) -> p rows [r, n]
    (a fresh array), product_fn(m_half, g_half, out) writes m * Gelu(g) into out."""
    m_rows, h = x2d.shape[0], n // 2
    y = np.empty((m_rows, h), dtype)
    step = max(1, GEGLU_BLOCK_BYTES // (n * 4))
    for r0 in range(0, m_rows, step):
        r1 = min(m_rows, r0 + step)
        p = rows_fn(r0, r1)
        product_fn(p[:, :h], p[:, h:], y[r0:r1])
        del p
    return y


@op("GegluLinear", domain=DOMAIN)
def GegluLinear(x, w, bias=None, m_starts=None, m_ends=None, m_axes=None, m_steps=None,
                g_starts=None, g_ends=None, g_axes=None, g_steps=None, *, approximate="none", const_rank=0):
    """GeluMul(Slice(p, g_*), Slice(p, m_*)) with p = MatMul(x, w) [+ bias]: the GEGLU
    projection (plan.fuse_geglu_linear); m_*/g_* are the replaced Slices' inputs."""
    m_slice, g_slice = (m_starts, m_ends, m_axes, m_steps), (g_starts, g_ends, g_axes, g_steps)
    w = np.asarray(w)
    ok = (isinstance(x, np.ndarray) and x.dtype == _F32 and w.dtype == _F32 and w.ndim == 2 and x.ndim >= 2
          and x.shape[-1] == w.shape[0] and x.ndim >= max(const_rank, 1) and x.size > 0
          and (bias is None or (bias.dtype == _F32 and bias.shape in ((w.shape[1],), (1, w.shape[1])))))
    n = w.shape[1]
    if not ok or geglu_halves(x.ndim, n, m_slice, g_slice) is None:
        from . import linalg
        p = linalg.MatMul(x, w)
        if bias is not None:
            p = np.asarray(np.add(p, bias))
        return geglu_unfused(p, m_slice, g_slice, approximate, const_rank)
    x2d = x.reshape(-1, x.shape[-1])
    b = None if bias is None else bias.reshape(n)

    def rows(r0, r1):
        p = x2d[r0:r1] @ w
        if b is not None:
            p += b
        return p

    def product(mh, gh, out):
        out[...] = GeluMul(np.ascontiguousarray(gh), mh, approximate=approximate)

    return geglu_rows(x2d, n, rows, product, _F32).reshape(x.shape[:-1] + (n // 2,))


@op("MatMulShape", domain=DOMAIN)
def MatMulShape(x, *, n, start=0, end=None):
    """Shape(x @ W)[start:end] for a weight W with n columns, from x alone: what a Shape of a
    fused GEGLU projection becomes (the projection itself is never materialised)."""
    return np.array((x.shape[:-1] + (int(n),))[start:end], dtype=np.int64)
