"""GroupNorm (+ SiLU): a fused op the plan makes from torch's export of nn.GroupNorm.

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
