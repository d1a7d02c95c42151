"""Native quantized fused ops (W8A8): QConv / QLinear on XNNPACK's per-channel int8 (qc8)
kernels, QDQ with int8 GroupNorm(+SiLU) and qs8 Add/Mul in C, everything else through the
blockwise runner of ops/qfused.py (whose numpy ops are the reference semantics).

Trade-off: XNNPACK accumulates int8 x int8 exactly in int32 and requantizes each output once,
where the unfused QDQ graph convolves dequantized floats: the results differ by float
rounding only (measured within one int8 unit, tests/test_int8.py). A case the int8 kernels do
not take (non-zero weight zero points, uint8 activations, scales outside XNNPACK's accepted
ranges, ranks other than 4 for Conv) runs the numpy op: same result, no fast path. A QConv
whose output stays float (the graph's last conv) runs XNNPACK's float convolution on bands of
output rows, dequantizing only the input rows of one band, so the full float input (128
channels at 512x512 = 128 MiB in the SD VAE decoder) never exists.
Reference: https://onnx.ai/onnx/operators/onnx__QLinearConv.html (same arithmetic).
"""
from __future__ import annotations

import numpy as np

from .. import native
from ..layout import is_nhwc, nhwc_buffer, nhwc_empty
from . import fused, qfused
from .attention import DOMAIN
from .conv import _ints, resolve_pads
from .registry import lookup, op

_I8 = np.dtype(np.int8)
_F32 = np.dtype(np.float32)
FLOAT_BAND_ELEMS = 1 << 20     # float input values per band of a float-output QConv (4 MiB)
# int8 input bytes per band of a banded QConv. XNNPACK's indirection buffer holds kh*kw pointers
# per output pixel (19 MiB for a 3x3 conv at 512x512); by bands it holds one band's.
BAND_INPUT_BYTES = 4 << 20
BAND_MIN_INDIRECTION_BYTES = 4 << 20   # convolutions with a smaller indirection buffer run whole


def _nhwc_i8(x: np.ndarray) -> np.ndarray:
    """The [N, H, W, C] int8 buffer of x: its own memory when channels-last, else one transpose."""
    if is_nhwc(x):
        return nhwc_buffer(x)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def _zero(zp) -> bool:
    return zp is None or not np.any(np.asarray(zp))


def _channel_scales(w_scale, cout: int) -> np.ndarray | None:
    s = np.asarray(w_scale)
    if s.dtype != _F32 or s.size not in (1, cout) or s.ndim > 1:
        return None
    return np.ascontiguousarray(np.broadcast_to(s.reshape(-1), (cout,)), _F32)


def _int32_bias(bf, xs: np.float32, ws: np.ndarray, cout: int) -> np.ndarray | None:
    """A float bias in units of x_scale * w_scale[c], rounded half to even (XNNPACK's int32
    bias); None when it does not fit int32."""
    if bf is None:
        return np.zeros(cout, np.int32)
    bf = np.asarray(bf, np.float64).reshape(-1)
    if bf.size != cout:
        return None
    q = np.rint(bf / (np.float64(xs) * ws.astype(np.float64)))
    if not np.all(np.abs(q) < 2 ** 31 - 1):
        return None
    return q.astype(np.int32)


def _cache_put(cache, entry, present: tuple[int, ...]) -> bool:
    """Keep a created operator across runs when every input it embeds (all but input 0) is a
    weight or a constant."""
    if cache is None or not cache.has_room(entry.nbytes):
        return False
    covers = tuple(i for i in present if i > 0)
    if not set(covers) <= set(cache.static):
        return False
    return cache.put(entry, entry.nbytes, covers)


def _present(*inputs) -> tuple[int, ...]:
    return tuple(i for i, v in enumerate(inputs) if v is not None)


def run_banded(conv: native.XnnQConv2d, rows, n: int, h: int, w: int, pads_tb, zero_point: int, pool,
               view=None, inplace: np.ndarray | None = None) -> np.ndarray:
    """y [N, OH, OW, Cout] int8 of a qc8 convolution created without top/bottom padding, computed
    one band of output rows at a time. ``rows(a, b, out)`` writes input rows [a, b) into out
    [N, b - a, W, Cin] (computing them: GroupNorm, Resize); ``view(a, b)``, when given, returns
    them without a copy (an input that exists). Padding rows hold the input zero point (real 0).

    ``inplace``: the [N, H, W, Cin] buffer that ``rows``/``view`` read (a dying input), to hold
    the output when it has the output's shape: each band's output waits in a small buffer until
    the next band has run, by then no later band reads those input rows (bands of at least
    (kh-1)*dh + 1 rows), so the output takes no memory of its own."""
    kh, dh, sh = conv.kernel[0], conv.dilations[0], conv.strides[0]
    pt, pb = pads_tb
    oh = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
    ow = conv.output_hw((kh - 1) * dh + 1, w)[1]
    c = conv.cin
    rows_in = max(1, BAND_INPUT_BYTES // max(1, n * w * c))
    band = max(1, (rows_in - (kh - 1) * dh - 1) // sh + 1)
    if inplace is not None and inplace.dtype == _I8 and inplace.flags.c_contiguous and sh == 1:
        if inplace.shape == (n, oh, ow, conv.cout) and band > (kh - 1) * dh:
            return _run_banded_inplace(conv, rows, n, h, w, pads_tb, zero_point, pool, view, inplace, band)
        # a 1x1-high kernel with no more output than input channels (a resnet's shortcut): output
        # row r lands at or before input row r's bytes, which band k+1 no longer reads
        if n == 1 and kh == 1 and (oh, ow) == (h, w) and conv.cout <= c:
            y = inplace.reshape(-1)[:oh * ow * conv.cout].reshape(n, oh, ow, conv.cout)
            return _run_banded_inplace(conv, rows, n, h, w, pads_tb, zero_point, pool, view, y, band)
    y = np.empty((n, oh, ow, conv.cout), _I8)
    # one band buffer for every band (n == 1: its leading rows are contiguous): no allocator churn
    scratch = native.xnn_empty((n, (band - 1) * sh + (kh - 1) * dh + 1, w, c), _I8) if n == 1 else None
    for r0 in range(0, oh, band):
        r1 = min(oh, r0 + band)
        lo, hi = r0 * sh - pt, (r1 - 1) * sh - pt + (kh - 1) * dh + 1
        xb = _band_input(lo, hi, h, n, w, c, rows, view, scratch, zero_point)
        if n == 1:
            conv.run(xb, y[:, r0:r1], pool=pool)
        else:
            y[:, r0:r1] = conv.run(xb, pool=pool)
        del xb
    return y


def _band_input(lo, hi, h, n, w, c, rows, view, scratch, zero_point, copy_view=False) -> np.ndarray:
    """Input rows [lo, hi) of one band, [n, hi - lo, w, c] int8: a view of the input when it has
    them all (copied when the band's output may overwrite them), else the rows inside [0, h)
    written by ``rows`` into ``scratch`` (or a new buffer) and the padding rows set to the zero point."""
    a, b = max(lo, 0), min(hi, h)
    if view is not None and (a, b) == (lo, hi):
        return np.ascontiguousarray(view(a, b)) if copy_view else view(a, b)
    xb = scratch[:, :hi - lo] if scratch is not None else native.xnn_empty((n, hi - lo, w, c), _I8)
    if a > lo:
        xb[:, :a - lo] = zero_point
    if hi > b:
        xb[:, b - lo:] = zero_point
    if b > a:
        rows(a, b, xb[:, a - lo:b - lo])
    return xb


def _run_banded_inplace(conv, rows, n, h, w, pads_tb, zero_point, pool, view, y, band) -> np.ndarray:
    """run_banded writing into the input's own buffer y (stride 1, output shape = input shape):
    band k's output is stored once band k+1 has run; band k+2 reads from row r2 - pt on, which
    is past band k's rows."""
    kh, dh = conv.kernel[0], conv.dilations[0]
    pt, pb = pads_tb
    oh, c = y.shape[1], conv.cin
    scratch = native.xnn_empty((n, band + (kh - 1) * dh, w, c), _I8)
    pending = None                          # (r0, r1, output rows) not yet stored
    spare = [np.empty((n, band, y.shape[2], conv.cout), _I8), np.empty((n, band, y.shape[2], conv.cout), _I8)]
    for k, r0 in enumerate(range(0, oh, band)):
        r1 = min(oh, r0 + band)
        lo, hi = r0 - pt, r1 - 1 - pt + (kh - 1) * dh + 1
        xb = _band_input(lo, hi, h, n, w, c, rows, view, scratch if n == 1 else None, zero_point, copy_view=True)
        out = spare[k % 2][:, :r1 - r0]
        if n == 1:
            conv.run(xb, out, pool=pool)
        else:
            out[...] = conv.run(xb, pool=pool)
        if pending is not None:
            y[:, pending[0]:pending[1]] = pending[2]
        pending = (r0, r1, out)
    if pending is not None:
        y[:, pending[0]:pending[1]] = pending[2]
    return y


def _indirection_bytes(conv: native.XnnQConv2d, h: int, w: int, n: int) -> int:
    oh, ow = conv.output_hw(h, w)
    return n * oh * ow * conv.kernel[0] * conv.kernel[1] * 8


class PreparedQConv:
    """A created qc8 convolution and the quantization it was made for (operator-cache entry).
    A large one runs in bands of output rows (run_banded): then it is created without top and
    bottom padding, which the bands supply as zero-point rows."""

    def __init__(self, conv: native.XnnQConv2d, x_q: tuple, pads_tb=None):
        self.conv, self.x_q, self.cin = conv, x_q, conv.cin
        self.pads_tb = pads_tb          # (top, bottom) when banded
        self.nbytes = conv.nbytes

    def run(self, x: np.ndarray, pool, donated: bool = False) -> np.ndarray:
        """``donated``: x dies here and nothing else shares its memory (the interpreter's _out),
        so a banded run may write the output into it."""
        xb = _nhwc_i8(x)
        if self.pads_tb is None:
            return self.conv.run(xb, pool=pool).transpose(0, 3, 1, 2)
        n, h, w, _ = xb.shape

        def copy_rows(a, b, out):
            out[...] = xb[:, a:b]

        view = (lambda a, b: xb[:, a:b]) if n == 1 else None
        inplace = xb if donated and is_nhwc(x) and x.flags.writeable else None
        return run_banded(self.conv, copy_rows, n, h, w, self.pads_tb, self.x_q[1], pool, view,
                          inplace).transpose(0, 3, 1, 2)

    def close(self) -> None:
        self.conv.close()


def _conv_geometry(x, w, auto_pad, dilations, group, kernel_shape, pads, strides):
    """(strides, onnx_pads, dilations, group) of a 2-D Conv the int8 kernels can run, else None."""
    if x.ndim != 4 or w.ndim != 4 or x.size == 0 or w.size == 0:
        return None
    if kernel_shape is not None and list(kernel_shape) != list(w.shape[2:]):
        return None
    strides = _ints(strides, 2, 1, "strides", "QConv")
    dilations = _ints(dilations, 2, 1, "dilations", "QConv")
    onnx_pads = resolve_pads("QConv", x.shape[2:], w.shape[2:], strides, dilations, pads, auto_pad)
    group = int(group)
    cin, cout = x.shape[1], w.shape[0]
    if group < 1 or cin % group or cout % group or w.shape[1] * group != cin:
        return None
    if any(x.shape[2 + i] + onnx_pads[i] + onnx_pads[2 + i] - (w.shape[2 + i] - 1) * dilations[i] - 1 < 0
           for i in range(2)):
        return None
    return strides, onnx_pads, dilations, group


def qconv_float_out(x, x_q, wf, bf, strides, onnx_pads, dilations, group, pool) -> np.ndarray:
    """Conv(DQ(x), wf) + bf in float32 on XNNPACK, band by band of output rows: each band
    dequantizes just the input rows it reads (zero rows stand for the top/bottom padding).
    Returns the NCHW-shaped channels-last view of the NHWC result."""
    xb = _nhwc_i8(x)
    n, h, wd, c = xb.shape
    cout, _, kh, kw = wf.shape
    sh, sw = strides
    dh, dw = dilations
    pt, pl, pb, pr = onnx_pads
    oh = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
    ow = (wd + pl + pr - (kw - 1) * dw - 1) // sw + 1
    y = native.xnn_empty((n, oh, ow, cout), _F32)
    rows_in = max(1, FLOAT_BAND_ELEMS // max(1, n * wd * c))
    band = max(1, (rows_in - (kh - 1) * dh - 1) // sh + 1)
    with native.XnnConv2d(np.ascontiguousarray(wf, _F32), None if bf is None else np.ascontiguousarray(bf, _F32),
                          groups=group, strides=strides, dilations=dilations, pads=(0, pl, 0, pr)) as conv:
        for r0 in range(0, oh, band):
            r1 = min(oh, r0 + band)
            lo, hi = r0 * sh - pt, (r1 - 1) * sh - pt + (kh - 1) * dh + 1
            buf = native.xnn_empty((n, hi - lo, wd, c), _F32)
            a, b = max(lo, 0), min(hi, h)
            if a > lo:
                buf[:, :a - lo] = 0
            if hi > b:
                buf[:, b - lo:] = 0
            if b > a:
                buf[:, a - lo:b - lo] = qfused.dequantize(xb[:, a:b], *x_q)
            if n == 1:
                conv.run(buf, y[:, r0:r1], pool=pool)
            else:
                y[:, r0:r1] = conv.run(buf, pool=pool)
            del buf
    return y.transpose(0, 3, 1, 2)


def _prepare_qconv(w, ws, bias, x_q, y_q, group, strides, dilations, onnx_pads, x_shape,
                   banded: bool | None = None) -> PreparedQConv:
    """The qc8 operator of a Conv: whole, or (large outputs, or ``banded``) without top/bottom
    padding for run_banded."""
    n, _, h, wd = x_shape
    kh, kw = w.shape[2:]
    oh = (h + onnx_pads[0] + onnx_pads[2] - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    ow = (wd + onnx_pads[1] + onnx_pads[3] - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    if banded is None:
        banded = n * oh * ow * kh * kw * 8 > BAND_MIN_INDIRECTION_BYTES
    pads = [0, onnx_pads[1], 0, onnx_pads[3]] if banded else [onnx_pads[0], onnx_pads[1], onnx_pads[2], onnx_pads[3]]
    conv = native.XnnQConv2d(w, ws, bias, x_scale=x_q[0], x_zero_point=x_q[1], y_scale=y_q[0], y_zero_point=y_q[1],
                             groups=group, strides=strides, dilations=dilations, pads=pads)
    return PreparedQConv(conv, x_q, (onnx_pads[0], onnx_pads[2]) if banded else None)


@op("QConv", domain=DOMAIN, backend="native")
def QConv(x, x_scale, x_zp, w, w_scale, w_zp=None, b=None, b_scale=None, b_zp=None, y_scale=None, y_zp=None, *,
          auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None, _ctx, _cache=None,
          _out=None):
    donated = _out is not None and _out is x
    prepared = None if _cache is None else _cache.entry
    if prepared is not None:
        if x.ndim != 4 or x.shape[1] != prepared.cin or x.dtype != _I8:
            raise ValueError(f"QConv: input {x.dtype}{list(x.shape)} does not fit the cached operator "
                             f"(int8, {prepared.cin} input channels)")
        return prepared.run(x, _ctx.pool, donated)
    attrs = dict(auto_pad=auto_pad, dilations=dilations, group=group, kernel_shape=kernel_shape, pads=pads,
                 strides=strides)

    def reference():
        return qfused.QConv(x, x_scale, x_zp, w, w_scale, w_zp, b, b_scale, b_zp, y_scale, y_zp, **attrs)

    if not (isinstance(x, np.ndarray) and x.dtype == _I8 and isinstance(w, np.ndarray) and w.dtype == _I8
            and np.asarray(x_zp).dtype == _I8 and _zero(w_zp)):
        return reference()
    geo = _conv_geometry(x, w, **attrs)
    ws = _channel_scales(w_scale, w.shape[0])
    if geo is None or ws is None:
        return reference()
    strides, onnx_pads, dilations, group = geo
    x_q = qfused.qparams(x_scale, x_zp)
    bf = qfused._bias_float(b, b_scale, b_zp)
    if y_scale is None:
        wf = qfused._dq_weight(w, w_scale, None, 0)
        return qconv_float_out(x, x_q, wf, bf, strides, onnx_pads, dilations, group, _ctx.pool)
    y_q = qfused.qparams(y_scale, y_zp)
    bias = _int32_bias(bf, x_q[0], ws, w.shape[0])
    req = x_q[0] * ws / y_q[0]
    if bias is None or not (np.all(req >= native.QCONV_SCALE_RANGE[0]) and np.all(req < native.QCONV_SCALE_RANGE[1])):
        return reference()
    shrink = (donated and x.shape[0] == 1 and w.shape[2] == 1 and list(strides) == [1, 1] and not any(onnx_pads)
              and w.shape[0] <= x.shape[1] and group == 1)
    p = _prepare_qconv(w, ws, bias, x_q, y_q, group, strides, dilations, onnx_pads, x.shape,
                       banded=True if shrink else None)
    inputs_present = _present(x, x_scale, x_zp, w, w_scale, w_zp, b, b_scale, b_zp, y_scale, y_zp)
    try:
        y = p.run(x, _ctx.pool, donated)
    except BaseException:
        p.close()
        raise
    if not _cache_put(_cache, p, inputs_present):
        p.close()
    return y


class PreparedQLinear:
    """A qc8 1x1 convolution over [M, K] rows: the per-channel int8 fully-connected path
    (this XNNPACK's fully_connected_nc_qs8 takes one weight scale only)."""

    def __init__(self, conv: native.XnnQConv2d, k: int, n: int):
        self.conv, self.k, self.n = conv, k, n
        self.nbytes = conv.nbytes

    def run(self, a: np.ndarray, pool) -> np.ndarray:
        m = a.size // self.k
        a4 = np.ascontiguousarray(a).reshape(m, 1, 1, self.k)
        return self.conv.run(a4, pool=pool).reshape(a.shape[:-1] + (self.n,))

    def close(self) -> None:
        self.conv.close()


def _qlinear_float_out(a, a_scale, a_zp, w, w_scale, b, b_scale, b_zp, weight_kn, reference):
    """DQ(a) @ DQ(w) (+ bias) with a float output, a block of rows at a time (the float copy of
    the activation never exists whole); the unfused arithmetic (float32 matmul)."""
    k = a.shape[-1]
    wf = qfused._dq_weight(w, w_scale, None, 1 if weight_kn else 0)
    wf = wf if weight_kn else wf.T
    if wf.shape[0] != k:
        return reference()
    bf = qfused._bias_float(b, b_scale, b_zp)
    a_q = qfused.qparams(a_scale, a_zp)
    a2 = a.reshape(-1, k)
    y = np.empty((a2.shape[0], wf.shape[1]), _F32)
    step = max(1, qfused.BLOCK_ELEMS // k)
    for r0 in range(0, a2.shape[0], step):
        blk = np.matmul(qfused.dequantize(a2[r0:r0 + step], *a_q), wf)
        y[r0:r0 + step] = blk if bf is None else blk + bf
    return y.reshape(a.shape[:-1] + (wf.shape[1],))


@op("QLinear", domain=DOMAIN, backend="native")
def QLinear(a, a_scale, a_zp, w, w_scale, w_zp=None, b=None, b_scale=None, b_zp=None, y_scale=None, y_zp=None, *,
            weight_kn=1, _ctx, _cache=None):
    prepared = None if _cache is None else _cache.entry
    if prepared is not None:
        if a.ndim < 1 or a.shape[-1] != prepared.k or a.dtype != _I8:
            raise ValueError(f"QLinear: input {a.dtype}{list(a.shape)} does not fit the cached operator "
                             f"(int8, K={prepared.k})")
        return prepared.run(a, _ctx.pool)

    def reference():
        return qfused.QLinear(a, a_scale, a_zp, w, w_scale, w_zp, b, b_scale, b_zp, y_scale, y_zp,
                              weight_kn=weight_kn)

    if not (isinstance(a, np.ndarray) and a.dtype == _I8 and a.ndim >= 1 and isinstance(w, np.ndarray)
            and w.dtype == _I8 and w.ndim == 2 and np.asarray(a_zp).dtype == _I8 and _zero(w_zp) and a.size > 0):
        return reference()
    if y_scale is None:
        return _qlinear_float_out(a, a_scale, a_zp, w, w_scale, b, b_scale, b_zp, weight_kn, reference)
    wnk = w.T if weight_kn else w
    n, k = wnk.shape
    ws = _channel_scales(w_scale, n)
    if a.shape[-1] != k or ws is None:
        return reference()
    a_q, y_q = qfused.qparams(a_scale, a_zp), qfused.qparams(y_scale, y_zp)
    bias = _int32_bias(qfused._bias_float(b, b_scale, b_zp), a_q[0], ws, n)
    req = a_q[0] * ws / y_q[0]
    if bias is None or not (np.all(req >= native.QCONV_SCALE_RANGE[0]) and np.all(req < native.QCONV_SCALE_RANGE[1])):
        return reference()
    conv = native.XnnQConv2d(np.ascontiguousarray(wnk).reshape(n, k, 1, 1), ws, bias, x_scale=a_q[0],
                             x_zero_point=a_q[1], y_scale=y_q[0], y_zero_point=y_q[1])
    p = PreparedQLinear(conv, k, n)
    inputs_present = _present(a, a_scale, a_zp, w, w_scale, w_zp, b, b_scale, b_zp, y_scale, y_zp)
    try:
        y = p.run(a, _ctx.pool)
    except BaseException:
        p.close()
        raise
    if not _cache_put(_cache, p, inputs_present):
        p.close()
    return y


def _qgroup_norm(vals, qps, y_q, attrs, pool):
    """The fused GroupNorm(+SiLU) on int8 in C, or None when its parameters are not the
    per-channel float32 case (the generic runner then computes it)."""
    x = vals[0]
    if not (isinstance(x, np.ndarray) and x.dtype == _I8 and x.ndim >= 2 and x.size and qps[0] is not None
            and all(q is None for q in qps[1:])):
        return None
    groups = attrs.get("num_groups")
    params = list(vals[1:]) + [None] * (5 - len(vals))
    probe = np.broadcast_to(np.float32(0), x.shape)       # per_channel_affine reads shapes only
    aff = fused.per_channel_affine(probe, *params[:4], groups, attrs.get("batch", 0), attrs.get("shape"))
    if aff is None:
        return None
    eps, silu = float(attrs.get("epsilon", 1e-5)), bool(attrs.get("silu", 0))
    if is_nhwc(x):
        n, c, h, wd = x.shape
        out = nhwc_empty(x.shape, _I8)
        native.qgroup_norm_act(nhwc_buffer(x).reshape(n, h * wd, c), aff[0], aff[1], groups, eps, qps[0], y_q,
                               silu, channels_last=True, out=nhwc_buffer(out).reshape(n, h * wd, c), pool=pool)
        return out
    xc = np.ascontiguousarray(x)
    return native.qgroup_norm_act(xc, aff[0], aff[1], groups, eps, qps[0], y_q, silu, pool=pool)


def _qbinary(op_type, vals, qps, y_q, pool, donor=None):
    """Add / Mul of two int8 tensors on XNNPACK's qs8 kernels, in their common layout (into
    ``donor``, a dying input of the output's shape, when given); None when the layouts, ranks or
    scales do not allow it."""
    a, b = vals
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == _I8 and b.dtype == _I8
            and qps[0] is not None and qps[1] is not None and a.size and b.size):
        return None
    if not native.qbinary_supported(op_type, float(qps[0][0]), float(qps[1][0]), float(y_q[0])):
        return None
    if a.shape == b.shape and is_nhwc(a) and is_nhwc(b):
        same = donor is not None and (donor is a or donor is b) and donor.flags.writeable
        out = donor if same else nhwc_empty(a.shape, _I8)
        native.xnn_qbinary(op_type, nhwc_buffer(a), nhwc_buffer(b), qps[0], qps[1], y_q, out=nhwc_buffer(out),
                           pool=pool)
        return out
    if a.flags.c_contiguous and b.flags.c_contiguous and max(a.ndim, b.ndim) <= native.XNN_MAX_DIMS:
        return native.xnn_qbinary(op_type, a, b, qps[0], qps[1], y_q, pool=pool)
    return None


def _nearest_index(fn, vals, op_type, opset, attrs):
    """(flat source pixel of each output pixel, OH, OW) of a nearest Resize of a 4-D x over its
    spatial dims, from the Resize op itself run on a small probe whose values are pixel numbers;
    None when scales/sizes touch N or C, axes is given, or a pixel is extrapolated."""
    x = vals[0]
    if attrs.get("axes") is not None:
        return None
    n, c, h, w = x.shape
    args = list(vals)
    si, zi = (1, None) if op_type == "Upsample" or opset < 11 else (2, 3)
    scales = args[si] if si < len(args) else None
    sizes = args[zi] if zi is not None and zi < len(args) else None
    if sizes is not None and np.size(sizes):
        sz = np.asarray(sizes).reshape(-1)
        if sz.size != 4 or sz[0] != n or sz[1] != c:
            return None
        args[zi] = np.array([1, 1, sz[2], sz[3]], np.int64)
    elif scales is not None and np.size(scales):
        sc = np.asarray(scales).reshape(-1)
        if sc.size != 4 or sc[0] != 1 or sc[1] != 1:
            return None
    else:
        return None
    args[0] = (np.arange(h * w, dtype=np.int32) + 1).reshape(1, 1, h, w)
    idx = fn(*args)
    if idx.ndim != 4 or idx.shape[:2] != (1, 1) or idx.size == 0 or idx.min() < 1:
        return None
    return idx.reshape(-1).astype(np.intp) - 1, idx.shape[2], idx.shape[3]


def _qresize_nearest(fn, vals, qps, y_q, op_type, opset, attrs):
    """Nearest Resize of a 4-D int8 tensor over its spatial dims as one gather of pixels, in x's
    own layout (a channels-last input stays channels-last: no transpose, no intermediate);
    None when _nearest_index declines."""
    x = vals[0]
    if not (isinstance(x, np.ndarray) and x.dtype == _I8 and x.ndim == 4 and x.size and qps[0] is not None
            and all(q is None for q in qps[1:])):
        return None
    found = _nearest_index(fn, vals, op_type, opset, attrs)
    if found is None:
        return None
    idx, oh, ow = found
    n, c, h, w = x.shape
    xr = qfused.requantize(x, qps[0], y_q)
    if is_nhwc(xr):
        y = np.take(nhwc_buffer(xr).reshape(n, h * w, c), idx, axis=1)
        return y.reshape(n, oh, ow, c).transpose(0, 3, 1, 2)
    return np.take(np.ascontiguousarray(xr).reshape(n * c, h * w), idx, axis=1).reshape(n, c, oh, ow)


def _qlut(fn, op_type, op_domain, vals, qps, y_q, pool):
    """An elementwise op of one int8 tensor (the other inputs scalar constants) as a 256-entry
    table: the op itself on the 256 dequantized values, quantized, then one lookup per element
    in x's layout. None when that is not the case."""
    if op_type not in qfused.ELEMENTWISE_OPS or (op_domain and op_type not in ("Silu", "Gelu")):
        return None
    x = vals[0]
    if not (isinstance(x, np.ndarray) and x.dtype == _I8 and x.size and qps[0] is not None):
        return None
    others = vals[1:]
    if any(q is not None for q in qps[1:]) or not all(isinstance(v, np.ndarray) and v.size == 1 for v in others):
        return None
    if any(v.ndim > x.ndim for v in others) or not (x.flags.c_contiguous or is_nhwc(x)):
        return None
    probe = np.arange(256, dtype=np.uint8).view(_I8).reshape((1,) * (x.ndim - 1) + (256,))
    y = fn(qfused.dequantize(probe, *qps[0]), *others)
    if not isinstance(y, np.ndarray) or y.size != 256 or y.dtype != _F32:
        return None
    lut = np.ascontiguousarray(qfused.quantize(y, *y_q).reshape(-1))
    if x.flags.c_contiguous:
        return native.lut_i8(x, lut, pool=pool)
    out = nhwc_empty(x.shape, _I8)
    native.lut_i8(nhwc_buffer(x), lut, out=nhwc_buffer(out), pool=pool)
    return out


@op("QDQ", domain=DOMAIN, backend="native")
def QDQ(*inputs, op_type, op_domain="", op_opset=1, op_attrs=None, qin=(), qout=1, _ctx, _out=None):
    vals, qps, rest = qfused.unpack_inputs(list(inputs), qin)
    y_q = qfused.qparams(rest[0], rest[1]) if qout else None
    attrs = op_attrs or {}
    if qout and op_domain == DOMAIN and op_type == "GroupNorm":
        y = _qgroup_norm(vals, qps, y_q, attrs, _ctx.pool)
        if y is not None:
            return y
    if qout and op_domain == "" and op_type in ("Add", "Mul") and len(vals) == 2:
        y = _qbinary(op_type, vals, qps, y_q, _ctx.pool, _out)
        if y is not None:
            return y
    impl = lookup(op_type, op_opset, op_domain, "native")
    if impl is None:
        raise ValueError(f"QDQ: no implementation of {op_domain or 'ai.onnx'}:{op_type} at opset {op_opset}")
    kw = qfused.inner_kwargs(impl, attrs)
    if impl.wants_ctx:
        kw["_ctx"] = _ctx

    def fn(*args):
        return impl.fn(*args, **kw)

    if qout:
        y = _qlut(fn, op_type, op_domain, vals, qps, y_q, _ctx.pool)
        if y is not None:
            return y
    if qout and op_domain == "" and op_type in ("Resize", "Upsample") and qfused.is_move(op_type, op_domain, attrs):
        y = _qresize_nearest(fn, vals, qps, y_q, op_type, op_opset, attrs)
        if y is not None:
            return y
    if qout and qfused.movable(op_type, op_domain, attrs, vals, qps):
        return qfused.run_move(fn, vals, qps, y_q, qfused.data_inputs(op_type, len(vals)))
    return qfused.run_blockwise(fn, vals, qps, y_q, qfused._split_spec(op_type, op_domain, attrs, vals))


def _gn_rows(vals, qps, y_q, attrs, pool):
    """rows(a, b, out) making row bands of the int8 GroupNorm(+SiLU) of a 4-D x (its statistics
    computed here, once), or None when the GroupNorm is not the per-channel float32 case."""
    x = vals[0]
    if not (isinstance(x, np.ndarray) and x.dtype == _I8 and x.ndim == 4 and x.size and qps[0] is not None):
        return None
    groups = attrs.get("num_groups")
    params = list(vals[1:]) + [None] * (5 - len(vals))
    aff = fused.per_channel_affine(np.broadcast_to(np.float32(0), x.shape), *params[:4], groups,
                                   attrs.get("batch", 0), attrs.get("shape"))
    if aff is None:
        return None
    n, c, h, w = x.shape
    xb = _nhwc_i8(x)
    a, b = native.qgroup_norm_coeffs(xb.reshape(n, h * w, c), aff[0], aff[1], groups,
                                     float(attrs.get("epsilon", 1e-5)), qps[0], channels_last=True, pool=pool)
    silu = bool(attrs.get("silu", 0))

    def rows(r0, r1, out):
        for i in range(n):
            if out[i].flags.c_contiguous:
                native.qaffine_act_nhwc(xb[i, r0:r1], a[i], b[i], qps[0], y_q, silu, out=out[i], pool=pool)
            else:
                out[i] = native.qaffine_act_nhwc(xb[i, r0:r1], a[i], b[i], qps[0], y_q, silu, pool=pool)
    return rows


def _resize_rows(fn, vals, qps, y_q, op_type, opset, attrs):
    """rows(a, b, out) making row bands of a nearest Resize of a 4-D int8 x (requantized once to
    the output's scale), or None when it is not a resize of the spatial dims only."""
    x = vals[0]
    if not (isinstance(x, np.ndarray) and x.dtype == _I8 and x.ndim == 4 and x.size and qps[0] is not None):
        return None
    found = _nearest_index(fn, vals, op_type, opset, attrs)
    if found is None:
        return None
    idx, oh, ow = found
    n, c, h, w = x.shape
    src = _nhwc_i8(qfused.requantize(x, qps[0], y_q)).reshape(n, h * w, c)

    def rows(r0, r1, out):
        sel = idx[r0 * ow:r1 * ow]
        if out.flags.c_contiguous:
            np.take(src, sel, axis=1, out=out.reshape(n, (r1 - r0) * ow, c))
        else:
            out[...] = np.take(src, sel, axis=1).reshape(n, r1 - r0, ow, c)
    return rows, oh, ow


@op("QPrologueConv", domain=DOMAIN, backend="native")
def QPrologueConv(*inputs, prologue, n_prologue, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
                  pads=None, strides=None, _ctx, _out=None):
    """The convolution's input made one band of rows at a time by its prologue (GroupNorm(+SiLU)
    or nearest Resize); any case the bands do not cover runs the two native ops in turn. A
    GroupNorm's dying input of the output's shape (a resnet's second conv) holds the output."""
    pro, rest = list(inputs[:n_prologue]), list(inputs[n_prologue:])
    w, w_scale, w_zp, b, b_scale, b_zp, y_scale, y_zp = rest + [None] * (8 - len(rest))
    attrs = dict(auto_pad=auto_pad, dilations=dilations, group=group, kernel_shape=kernel_shape, pads=pads,
                 strides=strides)

    def unfused():
        x = QDQ(*pro, **prologue, _ctx=_ctx)
        return QConv(x, pro[-2], pro[-1], w, w_scale, w_zp, b, b_scale, b_zp, y_scale, y_zp, **attrs, _ctx=_ctx)

    vals, qps, tail = qfused.unpack_inputs(pro, prologue["qin"])
    y_x = qfused.qparams(tail[0], tail[1])       # the prologue's output = the convolution's input
    x0 = vals[0]
    if not (y_scale is not None and isinstance(w, np.ndarray) and w.dtype == _I8 and w.ndim == 4 and _zero(w_zp)
            and isinstance(x0, np.ndarray) and x0.ndim == 4):
        return unfused()
    p_attrs = prologue.get("op_attrs") or {}
    if prologue["op_type"] == "GroupNorm":
        rows = _gn_rows(vals, qps, y_x, p_attrs, _ctx.pool)
        shape = x0.shape
    else:
        impl = lookup(prologue["op_type"], prologue["op_opset"], prologue["op_domain"], "native")
        kw = qfused.inner_kwargs(impl, p_attrs)
        if impl.wants_ctx:
            kw["_ctx"] = _ctx
        found = _resize_rows(lambda *a: impl.fn(*a, **kw), vals, qps, y_x, prologue["op_type"],
                             prologue["op_opset"], p_attrs)
        rows, shape = (None, None) if found is None else (found[0], x0.shape[:2] + found[1:])
    if rows is None:
        return unfused()
    probe = np.broadcast_to(np.int8(0), shape)
    geo = _conv_geometry(probe, w, **attrs)
    ws = _channel_scales(w_scale, w.shape[0])
    if geo is None or ws is None:
        return unfused()
    strides_, onnx_pads, dilations_, group_ = geo
    y_q = qfused.qparams(y_scale, y_zp)
    bias = _int32_bias(qfused._bias_float(b, b_scale, b_zp), y_x[0], ws, w.shape[0])
    req = y_x[0] * ws / y_q[0]
    if bias is None or not (np.all(req >= native.QCONV_SCALE_RANGE[0]) and np.all(req < native.QCONV_SCALE_RANGE[1])):
        return unfused()
    p = _prepare_qconv(w, ws, bias, y_x, y_q, group_, strides_, dilations_, onnx_pads, shape, banded=True)
    inplace = None
    if (prologue["op_type"] == "GroupNorm" and _out is not None and _out is x0 and is_nhwc(x0)
            and x0.flags.writeable):
        inplace = nhwc_buffer(x0)           # what _gn_rows reads; each row read before it is overwritten
    with p.conv:
        n, _, h, wd = shape
        return run_banded(p.conv, rows, n, h, wd, p.pads_tb, y_x[1], _ctx.pool, None, inplace).transpose(0, 3, 1, 2)
