"""Quantized fused ops (domain onnxstream) that plan.fuse_qdq makes from QDQ patterns, in numpy:
the reference semantics of each fused op, the numpy twins of the int8 kernels, and the
blockwise dequantize-compute-requantize runner the native ops fall back to.

A QDQ graph (what onnxruntime's quantize_static writes, and quantize.py) keeps every large
activation as int8 between ops: ``t_q = QuantizeLinear(t)``, and each reader computes on
``DequantizeLinear(t_q)``. Run op by op, each reader still materialises the full float tensor.
The fused ops read and write the int8 tensors directly:

- ``QConv`` / ``QLinear``: DQ(x) and DQ(int8 weight, per output channel) [+ bias] -> Conv /
  MatMul / Gemm [-> Q]. Here: dequantize, compute in float, quantize (the unfused graph's own
  arithmetic); natively XNNPACK's qc8 kernels (ops/native_int8.py).
- ``QPrologueConv``: a QDQ GroupNorm(+SiLU) or nearest Resize read only by a QConv, as one op
  (natively the conv's input is made one band of rows at a time).
- ``QDQ``: DQ(..) -> any other op -> Q. Data-movement ops (Reshape, Transpose, Concat, nearest
  Resize, ...) run on the int8 values themselves after requantizing each input to the output's
  scale (exactly Q(op(DQ(x))) for them); every other op is computed block by block along an
  axis the op treats independently (rows of a Softmax, groups of an InstanceNormalization,
  any axis of an elementwise op, query rows of attention), so at most one block of float
  values is alive; an op without such an axis is computed whole.

Trade-off: one generic wrapper rather than an int8 twin of every op: every op keeps its own
float implementation (and error messages); the price is a float copy of one block per op.
Results equal the unfused QDQ graph up to float rounding order (within one int8 unit).
Reference: https://onnx.ai/onnx/operators/onnx__QuantizeLinear.html, onnx__DequantizeLinear;
onnxruntime/python/tools/quantization (QDQ format).
"""
from __future__ import annotations

import numpy as np

from . import conv as conv_ops
from . import linalg, quant
from .attention import DOMAIN
from .registry import lookup, op
from ..layout import is_nhwc, nhwc_empty

_I8 = np.dtype(np.int8)
_F32 = np.dtype(np.float32)
BLOCK_ELEMS = 1 << 18      # float values per block of the generic runner (1 MiB)

# Ops whose output values are input values moved around: Q(op(DQ(x))) == op(requant(x)).
# data_inputs: the input positions holding tensor data (the rest are shapes, indices, axes).
MOVE_OPS = {"Reshape": (0,), "Transpose": (0,), "Flatten": (0,), "Squeeze": (0,), "Unsqueeze": (0,),
            "Identity": (0,), "Slice": (0,), "Expand": (0,), "Tile": (0,), "DepthToSpace": (0,),
            "SpaceToDepth": (0,), "Gather": (0,), "Resize": (0,), "Upsample": (0,), "Concat": None}
# Elementwise ops (numpy broadcasting): any output axis splits every input alike.
ELEMENTWISE_OPS = {"Add", "Sub", "Mul", "Div", "Pow", "Sigmoid", "Tanh", "Relu", "LeakyRelu", "Clip", "Erf",
                   "Exp", "Sqrt", "Neg", "Abs", "HardSigmoid", "HardSwish", "Softplus", "Elu", "Selu",
                   "Silu", "Gelu", "GeluMul", "Where", "Max", "Min", "Mish", "Identity"}


def is_move(op_type: str, domain: str, attrs: dict) -> bool:
    """Whether Q(op(DQ(x))) equals op on requantized int8 values for this node."""
    if domain or op_type not in MOVE_OPS:
        return False
    if op_type in ("Resize", "Upsample"):
        return attrs.get("mode", "nearest") == "nearest"
    return True


def data_inputs(op_type: str, n_inputs: int) -> tuple[int, ...]:
    d = MOVE_OPS.get(op_type, (0,))
    return tuple(range(n_inputs)) if d is None else d


def movable(op_type: str, domain: str, attrs: dict, vals: list, qps: list) -> bool:
    """is_move, and every data input present arrives quantized (a float one, say a Concat of an
    int8 and a float tensor, needs the dequantize-compute-requantize path)."""
    return is_move(op_type, domain, attrs) and all(
        qps[i] is not None for i in data_inputs(op_type, len(vals)) if i < len(vals) and vals[i] is not None)


# ---------------------------------------------------------------- quantize / dequantize

def qparams(scale, zero_point) -> tuple[np.float32, int]:
    """(scale, zero point) of a per-tensor int8 quantization, from the node's inputs."""
    s = np.asarray(scale)
    z = 0 if zero_point is None else np.asarray(zero_point)
    if s.size != 1 or np.size(z) != 1:
        raise ValueError(f"quantized fused op: per-tensor scale and zero point expected, got shapes "
                         f"{s.shape} and {np.shape(z)}")
    if zero_point is not None and np.asarray(zero_point).dtype != _I8:
        raise ValueError(f"quantized fused op: int8 zero point expected, got {np.asarray(zero_point).dtype}")
    return np.float32(s.reshape(-1)[0]), int(np.asarray(z).reshape(-1)[0])


def dequantize(q: np.ndarray, s: np.float32, z: int) -> np.ndarray:
    """(q - z) * s as float32: DequantizeLinear's arithmetic."""
    return quant.dequantize(q, np.asarray(s, _F32), np.asarray(z, _I8))


def quantize(x: np.ndarray, s: np.float32, z: int) -> np.ndarray:
    """saturate(rint(x / s) + z) as int8: QuantizeLinear's arithmetic (float32 x / s, round half
    to even), in one float32 temporary (saturating before adding z is the same as after, and
    exact in float32); NaN gives 0, as ops/quant.py's reference."""
    t = np.divide(np.asarray(x, _F32), np.float32(s), dtype=_F32)
    np.rint(t, out=t)
    np.nan_to_num(t, copy=False, nan=np.float32(-z))
    np.clip(t, np.float32(-128 - z), np.float32(127 - z), out=t)
    t += np.float32(z)
    return t.astype(_I8)


def requantize(q: np.ndarray, src: tuple, dst: tuple) -> np.ndarray:
    """Q(DQ(q, src), dst), block by block (no full-size float copy); q itself when src == dst."""
    if src[0] == dst[0] and src[1] == dst[1]:
        return q
    out = np.empty_like(q)            # keeps a channels-last layout
    for sl in _blocks_any(q.shape, BLOCK_ELEMS):
        out[sl] = quantize(dequantize(q[sl], *src), *dst)
    return out


def _blocks_any(shape, limit: int):
    """Index tuples covering an array of ``shape`` in blocks of at most ~limit elements, cut
    along the first axis whose sub-block fits."""
    shape = tuple(shape)
    if not shape:
        yield ()
        return
    inner = int(np.prod(shape[1:], dtype=np.int64))
    if inner <= limit or len(shape) == 1:
        step = max(1, limit // max(inner, 1))
        for i in range(0, shape[0], step):
            yield (slice(i, min(shape[0], i + step)),)
        return
    for i in range(shape[0]):
        for rest in _blocks_any(shape[1:], limit):
            yield (slice(i, i + 1),) + rest


# ---------------------------------------------------------------- kernel twins

def _qp(q: tuple) -> tuple[np.float32, int]:
    """(scale, zero point) given as plain numbers."""
    return np.float32(q[0]), int(q[1])


def qconv_twin(x: np.ndarray, w: np.ndarray, w_scale: np.ndarray, bias: np.ndarray | None, x_q: tuple, y_q: tuple,
               *, groups=1, strides=(1, 1), dilations=(1, 1), pads=(0, 0, 0, 0), y_min=-128, y_max=127) -> np.ndarray:
    """Numpy twin of native.XnnQConv2d (XNNPACK qc8, "fp32" requantization): the int32
    accumulator exactly (float64 convolution of integers), then float32(acc) * float32(x_scale *
    w_scale[c] / y_scale), clamped, rounded half to even, plus y's zero point. x: NCHW int8
    (any strides), w: OIHW int8, bias: int32 [Cout] or None; pads [top, left, bottom, right]."""
    (xs, xz), (ys, yz) = (np.float32(x_q[0]), int(x_q[1])), (np.float32(y_q[0]), int(y_q[1]))
    xd = x.astype(np.float64) - xz
    onnx_pads = [pads[0], pads[1], pads[2], pads[3]]
    acc = conv_ops.conv_nd(xd, w.astype(np.float64), None, list(strides), onnx_pads, list(dilations), groups)
    if bias is not None:
        acc += bias.astype(np.float64).reshape(1, -1, 1, 1)
    req = (xs * np.asarray(w_scale, _F32).reshape(-1) / ys).astype(_F32).reshape(1, -1, 1, 1)
    t = acc.astype(_F32) * req
    t = np.clip(t, np.float32(y_min - yz), np.float32(y_max - yz))
    return (np.rint(t) + yz).astype(_I8)


def qbinary_twin(op_type: str, a: np.ndarray, b: np.ndarray, a_q: tuple, b_q: tuple, y_q: tuple,
                 y_min=-128, y_max=127) -> np.ndarray:
    """Numpy twin of native.xnn_qbinary: the float formula Q(DQ(a) op DQ(b)) (XNNPACK's fixed
    point is within one unit of it)."""
    fa, fb = dequantize(a, *_qp(a_q)), dequantize(b, *_qp(b_q))
    y = fa + fb if op_type == "Add" else fa * fb
    return np.clip(quantize(y, *_qp(y_q)), y_min, y_max).astype(_I8)


def qgroup_norm_twin(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, groups: int, epsilon: float,
                     x_q: tuple, y_q: tuple, silu: bool = False) -> np.ndarray:
    """Numpy twin of native.qgroup_norm_act on NCHW-shaped x (any strides): float64 statistics
    of the dequantized values per (image, group), then the per-channel affine, SiLU and Q."""
    xs, xz = _qp(x_q)
    n, c = x.shape[:2]
    xd = (x.astype(np.float64) - xz).reshape(n, groups, -1) * np.float64(xs)
    mean = xd.mean(axis=2, keepdims=True)
    var = xd.var(axis=2, keepdims=True)
    u = ((xd - mean) / np.sqrt(var + epsilon)).reshape(x.shape)
    shape = (1, c) + (1,) * (x.ndim - 2)
    u = (u * gamma.reshape(shape) + beta.reshape(shape)).astype(_F32)
    if silu:
        u = u / (np.float32(1) + np.exp(-u))
    return quantize(u, *_qp(y_q))


# ---------------------------------------------------------------- QConv / QLinear

def _dq_weight(w, w_scale, w_zp, axis):
    return quant.dequantize(w, np.asarray(w_scale, _F32), None if w_zp is None else np.asarray(w_zp), axis=axis)


def _bias_float(b, b_scale, b_zp):
    if b is None:
        return None
    if b_scale is None:
        return b
    return quant.dequantize(b, np.asarray(b_scale, _F32), None if b_zp is None else np.asarray(b_zp), axis=0)


@op("QConv", domain=DOMAIN)
def QConv(x, x_scale, x_zp, w, w_scale, w_zp=None, b=None, b_scale=None, b_zp=None, y_scale=None, y_zp=None, *,
          auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
    """Q(Conv(DQ(x), DQ(w, axis 0), b | DQ(b))): x int8 per tensor, w int8 per output channel.
    Without y_scale the output is the float Conv output (the QuantizeLinear was not fused)."""
    xf = dequantize(x, *qparams(x_scale, x_zp))
    wf = _dq_weight(w, w_scale, w_zp, 0)
    y = conv_ops.Conv(xf, wf, _bias_float(b, b_scale, b_zp), auto_pad=auto_pad, dilations=dilations, group=group,
                      kernel_shape=kernel_shape, pads=pads, strides=strides)
    return y if y_scale is None else quantize(y, *qparams(y_scale, y_zp))


@op("QLinear", domain=DOMAIN)
def QLinear(a, a_scale, a_zp, w, w_scale, w_zp=None, b=None, b_scale=None, b_zp=None, y_scale=None, y_zp=None, *,
            weight_kn=1):
    """Q(DQ(a) @ W + bias): MatMul by a weight (weight_kn=1: w [K, N], scales along axis 1) or
    Gemm with transB=1 (weight_kn=0: w [N, K], axis 0), alpha = beta = 1, no transA."""
    af = dequantize(a, *qparams(a_scale, a_zp))
    wf = _dq_weight(w, w_scale, w_zp, 1 if weight_kn else 0)
    y = linalg.matmul(af, wf if weight_kn else wf.T)
    bf = _bias_float(b, b_scale, b_zp)
    if bf is not None:
        y = y + bf
    return y if y_scale is None else quantize(y, *qparams(y_scale, y_zp))


# ---------------------------------------------------------------- QDQ: any other op

def unpack_inputs(inputs, qin) -> tuple[list, list]:
    """Node inputs -> (inner inputs as given, their qparams or None). qin[i] = 1: inner input i
    is three node inputs (int8 tensor, scale, zero point), else one."""
    vals, qps, k = [], [], 0
    for flag in qin:
        if flag:
            vals.append(inputs[k])
            qps.append(None if inputs[k] is None else qparams(inputs[k + 1], inputs[k + 2]))
            k += 3
        else:
            vals.append(inputs[k])
            qps.append(None)
            k += 1
    return vals, qps, list(inputs[k:])


def _split_spec(op_type: str, domain: str, attrs: dict, vals: list) -> tuple[int, list] | None:
    """(axes, hows): the output axes the op computes independently of each other, and per input
    how a block along one of them is cut: 'b' (broadcast-aligned with the output), 's' (the same
    axis of input 0's shape), 'c' (along its axis 0 when the output's axis 1 is cut: per-channel
    parameters), 'm' (an attention mask's query axis), None (whole). None: no such axis."""
    x = vals[0]
    if not isinstance(x, np.ndarray):
        return None
    r = x.ndim
    if op_type in ELEMENTWISE_OPS and (domain == "" or op_type in ("Silu", "Gelu", "GeluMul")):
        arrays = [v for v in vals if isinstance(v, np.ndarray)]
        r = max(a.ndim for a in arrays)
        return list(range(r)), ["b" if isinstance(v, np.ndarray) else None for v in vals]
    if domain == "" and op_type in ("Softmax", "LogSoftmax"):
        axis = attrs.get("axis", -1) % max(r, 1)
        return [a for a in range(r) if a != axis], ["s"] + [None] * (len(vals) - 1)
    if domain == "" and op_type == "LayerNormalization":
        axis = attrs.get("axis", -1) % max(r, 1)
        return list(range(axis)), ["s"] + [None] * (len(vals) - 1)
    if domain == DOMAIN and op_type == "LayerNorm":
        axes = attrs.get("axes")
        first = r - 1 if axes is None else min(a % r for a in axes)
        return list(range(first)), ["s"] + [None] * (len(vals) - 1)
    if domain == "" and op_type == "InstanceNormalization":
        return [0, 1], ["s", "c", "c"]
    if domain == "" and op_type == "MatMul" and r >= 2:
        return [r - 2], ["s", None]
    if domain == DOMAIN and op_type == "SlicedAttention" and r >= 2:
        spec = ["s", None, None, None]
        if len(vals) > 4 and isinstance(vals[4], np.ndarray) and vals[4].ndim >= 2 and vals[4].shape[-2] == x.shape[-2]:
            spec.append("m")
        else:
            spec += [None] * (len(vals) - 4)
        return [r - 2], spec[:len(vals)]
    if domain == DOMAIN and op_type == "GroupNorm":
        return [0], ["s"] + [None] * (len(vals) - 1)
    return None


def _slice_input(v, how, axis: int, out_rank: int, sl: slice):
    if how is None or not isinstance(v, np.ndarray):
        return v
    if how == "b":
        a = axis - (out_rank - v.ndim)
        if a < 0 or v.shape[a] == 1:
            return v
        return v[(slice(None),) * a + (sl,)]
    if how == "s":
        return v[(slice(None),) * axis + (sl,)]
    if how == "c":
        return v[sl] if axis == 1 else v
    if how == "m":
        return v[(slice(None),) * (v.ndim - 2) + (sl,)]
    return v


def _empty_like_layout(shape, like: np.ndarray | None) -> np.ndarray:
    if like is not None and is_nhwc(like) and len(shape) == 4:
        return nhwc_empty(shape, _I8)
    return np.empty(shape, _I8)


def run_blockwise(fn, vals: list, qps: list, y_q: tuple | None, spec, max_elems: int = BLOCK_ELEMS):
    """Compute fn(*float inputs) block by block along the op's best independent axis (or whole),
    dequantizing the quantized inputs' blocks and quantizing each output block into one int8
    output (or a float one when y_q is None). The output keeps input 0's channels-last layout."""
    def dq(v, q):
        return v if q is None or v is None else dequantize(v, *q)

    x = vals[0]
    if spec is not None:
        axes, hows = spec
        out_rank = max([v.ndim for v in vals if isinstance(v, np.ndarray)] + [0]) if "b" in hows else x.ndim
        shapes = [v.shape for v, h in zip(vals, hows) if h == "b"]
        full = np.broadcast_shapes(*shapes) if shapes else x.shape
        # the independent axis with the most blocks available
        cands = [a for a in axes if (full[a] if "b" in hows else x.shape[a]) > 1]
        if cands:
            axis = max(cands, key=lambda a: (full[a] if "b" in hows else x.shape[a]))
            extent = full[axis] if "b" in hows else x.shape[axis]
            total = int(np.prod(full if "b" in hows else x.shape, dtype=np.int64))
            per = max(1, total // max(extent, 1))
            step = max(1, max_elems // per)
            if step < extent:
                out = None
                for i in range(0, extent, step):
                    sl = slice(i, min(extent, i + step))
                    args = [dq(_slice_input(v, h, axis, out_rank, sl), q) for v, h, q in zip(vals, hows, qps)]
                    yb = fn(*args)
                    if out is None:
                        shape = list(yb.shape)
                        shape[axis] = extent
                        out = (_empty_like_layout(tuple(shape), x) if y_q is not None
                               else np.empty(shape, yb.dtype))
                    dst = (slice(None),) * axis + (sl,)
                    out[dst] = yb if y_q is None else quantize(yb, *y_q)
                    del args, yb
                return out
    y = fn(*[dq(v, q) for v, q in zip(vals, qps)])
    if y_q is None:
        return y
    out = _empty_like_layout(y.shape, x if (isinstance(x, np.ndarray) and x.shape == y.shape) else None)
    out[...] = quantize(y, *y_q)
    return out


def inner_kwargs(impl, op_attrs: dict) -> dict:
    kw = dict(op_attrs or {})
    if impl.wants_noutputs:
        kw["_noutputs"] = 1
    return kw


def run_move(fn, vals: list, qps: list, y_q: tuple, data: tuple[int, ...]):
    """A data-movement op on int8 values: each quantized data input requantized to y's
    (scale, zero point), then the op itself."""
    args = list(vals)
    for i in data:
        if i < len(args) and qps[i] is not None:
            args[i] = requantize(args[i], qps[i], y_q)
    return fn(*args)


@op("QDQ", domain=DOMAIN)
def QDQ(*inputs, op_type, op_domain="", op_opset=1, op_attrs=None, qin=(), qout=1):
    """Q(op(DQ(x), ...)) for any registered op (numpy implementations): see the module docstring.
    qin: per inner input, 1 when it arrives quantized (tensor, scale, zero point); the last two
    node inputs are the output's scale and zero point when qout."""
    vals, qps, rest = unpack_inputs(list(inputs), qin)
    y_q = qparams(rest[0], rest[1]) if qout else None
    impl = lookup(op_type, op_opset, op_domain, "numpy")
    if impl is None:
        raise ValueError(f"QDQ: no implementation of {op_domain or 'ai.onnx'}:{op_type} at opset {op_opset}")
    kw = inner_kwargs(impl, op_attrs)

    def fn(*args):
        return impl.fn(*args, **kw)

    if qout and movable(op_type, op_domain, op_attrs or {}, vals, qps):
        return run_move(fn, vals, qps, y_q, data_inputs(op_type, len(vals)))
    return run_blockwise(fn, vals, qps, y_q, _split_spec(op_type, op_domain, op_attrs or {}, vals))


@op("QPrologueConv", domain=DOMAIN)
def QPrologueConv(*inputs, prologue, n_prologue, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
                  pads=None, strides=None):
    """QConv(QDQ(prologue)(...)): a quantized op whose int8 output only this convolution reads
    (GroupNorm(+SiLU), nearest Resize), kept as one node so that the native op can make the
    convolution's input one band of rows at a time (ops/native_int8.py). inputs: the
    prologue's node inputs (n_prologue of them, its output scale and zero point last), then the
    convolution's from w on (w, w_scale, w_zp, b, b_scale, b_zp, y_scale, y_zp)."""
    pro, rest = list(inputs[:n_prologue]), list(inputs[n_prologue:])
    x = QDQ(*pro, **prologue)
    return QConv(x, pro[-2], pro[-1], *rest, auto_pad=auto_pad, dilations=dilations, group=group,
                 kernel_shape=kernel_shape, pads=pads, strides=strides)
