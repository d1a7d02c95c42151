"""Native Conv (2-D) and MatMul/Gemm (2-D weight B) through XNNPACK, chosen by measurement.

Trade-off: XNNPACK is not assumed to beat the numpy/BLAS path; for every new shape key
``kernel_choice.run_chosen`` times both on the real inputs (XNNPACK including its weight
packing and, for Conv, the NCHW<->NHWC transposes, since without an operator cache both
happen on every run) and keeps the faster. Other dtypes, ranks and attributes go to the numpy
op. Memory: a weight larger than WEIGHT_BLOCK_BYTES is packed one block of output channels
at a time (create, run, delete), so the ONNX weight never coexists with a full packed copy.
Reference: https://onnx.ai/onnx/operators/onnx__Conv.html, onnx__MatMul.html, onnx__Gemm.html
"""
from __future__ import annotations

import numpy as np

from .. import kernel_choice
from .. import native
from .conv import Conv as numpy_conv, _ints, conv_nd, resolve_pads
from .linalg import Gemm7 as numpy_gemm7, Gemm11 as numpy_gemm11, MatMul as numpy_matmul, matmul
from .registry import op

# Largest block of weight packed at once; a bigger weight is split along output channels
# (each block re-reads the input, which is small wherever the weights are large in SD).
WEIGHT_BLOCK_BYTES = 16 << 20
_FLOATS = (np.dtype(np.float32), np.dtype(np.float16))


def _blocks(n: int, row_bytes: int) -> list[tuple[int, int]]:
    """[begin, end) blocks of n output channels whose weight rows take <= WEIGHT_BLOCK_BYTES."""
    step = max(1, min(n, WEIGHT_BLOCK_BYTES // max(1, row_bytes)))
    return [(c, min(n, c + step)) for c in range(0, n, step)]


_XNN_DTYPE_OK: dict[np.dtype, bool] = {}


def _same_float(*arrays) -> bool:
    """All given arrays share one dtype that XNNPACK runs on this CPU (float16 needs FP16
    arithmetic or XNNPACK's x86 F16C kernels: probed once with a 1x1 operator)."""
    dts = {a.dtype for a in arrays if a is not None}
    if len(dts) != 1:
        return False
    dt = dts.pop()
    if dt not in _FLOATS:
        return False
    if dt not in _XNN_DTYPE_OK:
        try:
            native.XnnFullyConnected(np.ones((1, 1), dt)).close()
            _XNN_DTYPE_OK[dt] = True
        except native.NativeError:
            _XNN_DTYPE_OK[dt] = False
    return _XNN_DTYPE_OK[dt]


# ---------------------------------------------------------------- Conv

def conv2d_xnnpack(x, w, b, strides, pads, dilations, groups, pool=None) -> np.ndarray:
    """ONNX Conv (2-D, NCHW in and out) through XNNPACK: transpose to NHWC, run (by blocks
    of output channels for a large weight), transpose back. pads: [top, left, bottom, right]."""
    n, cin, h, wd = x.shape
    cout = w.shape[0]
    x_nhwc = native.transpose_last2(x.reshape(n, cin, h * wd), pool=pool).reshape(n, h, wd, cin)
    blocks = _blocks(cout, w[0].nbytes) if groups == 1 else [(0, cout)]
    y_nhwc = None
    for c0, c1 in blocks:
        with native.XnnConv2d(w, b, groups=groups, strides=strides, dilations=dilations, pads=pads,
                              co_begin=c0, co_end=c1, y_channels=cout) as conv:
            if y_nhwc is None:
                oh, ow = conv.output_hw(h, wd)
                y_nhwc = np.empty((n, oh, ow, cout), x.dtype)
            conv.run(x_nhwc, y_nhwc, c0, pool)
    del x_nhwc
    y = np.empty((n, cout, oh, ow), x.dtype)
    native.transpose_last2(y_nhwc.reshape(n, oh * ow, cout), y.reshape(n, cout, oh * ow), pool)
    return y


@op("Conv", since=1, backend="native")
def Conv(x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None,
         strides=None, _ctx):
    attrs = dict(auto_pad=auto_pad, dilations=dilations, group=group, kernel_shape=kernel_shape, pads=pads,
                 strides=strides)
    if x.ndim != 4 or w.ndim != 4 or not _same_float(x, w, b) or x.size == 0 or w.size == 0:
        return numpy_conv(x, w, b, **attrs)
    if kernel_shape is not None and list(kernel_shape) != list(w.shape[2:]):
        return numpy_conv(x, w, b, **attrs)   # raises the numpy op's error
    group = int(group)
    strides = _ints(strides, 2, 1, "strides", "Conv")
    dilations = _ints(dilations, 2, 1, "dilations", "Conv")
    onnx_pads = resolve_pads("Conv", x.shape[2:], w.shape[2:], strides, dilations, pads, auto_pad)
    cin, cout = x.shape[1], w.shape[0]
    valid = (group >= 1 and cin % group == 0 and cout % group == 0 and w.shape[1] * group == cin
             and (b is None or b.shape == (cout,)))
    spans = [x.shape[2 + i] + onnx_pads[i] + onnx_pads[2 + i] - (w.shape[2 + i] - 1) * dilations[i] - 1
             for i in range(2)]
    if not valid or min(spans) < 0:
        return numpy_conv(x, w, b, **attrs)   # errors and empty outputs are the numpy op's
    xpads = [onnx_pads[0], onnx_pads[1], onnx_pads[2], onnx_pads[3]]   # top, left, bottom, right
    pool = _ctx.pool
    key = ("Conv", x.dtype.name, tuple(map(int, x.shape)), tuple(map(int, w.shape)), group, tuple(strides),
           tuple(onnx_pads), tuple(dilations), b is not None, pool.threads)
    return kernel_choice.run_chosen(key, {
        "xnnpack": lambda: conv2d_xnnpack(x, w, b, strides, xpads, dilations, group, pool),
        "blas": lambda: conv_nd(x, w, b, strides, onnx_pads, dilations, group),
    }, measure=_ctx.measure_kernels, default=_ctx.default_kernel)


# ---------------------------------------------------------------- MatMul / Gemm

def fc_xnnpack(a2d, w, bias, weight_kn, pool=None) -> np.ndarray:
    """a2d [M, K] @ W (+ bias) through XNNPACK; W is [K, N] (weight_kn) or [N, K]."""
    n = w.shape[1] if weight_kn else w.shape[0]
    y = np.empty((a2d.shape[0], n), a2d.dtype)
    col_bytes = w.nbytes // n
    for n0, n1 in _blocks(n, col_bytes):
        with native.XnnFullyConnected(w, bias, weight_kn=weight_kn, n_begin=n0, n_end=n1, y_stride=n) as fc:
            fc.run(a2d, y, n0, pool)
    return y


def _linear(op_name, a, w, bias, weight_kn, ctx, numpy_fn):
    """Measured choice between XNNPACK and numpy for a [..., K] @ W (+ bias)."""
    k = a.shape[-1]
    n = w.shape[1] if weight_kn else w.shape[0]
    m = a.size // k
    pool = ctx.pool
    key = (op_name, a.dtype.name, m, k, n, bool(weight_kn), bias is not None, pool.threads)

    def xnn():
        return fc_xnnpack(a.reshape(m, k), w, bias, weight_kn, pool).reshape(a.shape[:-1] + (n,))

    return kernel_choice.run_chosen(key, {"xnnpack": xnn, "blas": numpy_fn},
                                    measure=ctx.measure_kernels, default=ctx.default_kernel)


@op("MatMul", since=1, backend="native")
def MatMul(a, b, *, _ctx):
    if a.ndim < 2 or b.ndim != 2 or a.shape[-1] != b.shape[0] or not _same_float(a, b) or a.size == 0 or b.size == 0:
        return numpy_matmul(a, b)
    return _linear("MatMul", a, b, None, True, _ctx, lambda: matmul(a, b))


def _gemm(a, b, c, alpha, beta, transA, transB, ctx, numpy_fn):
    """Gemm with A' = A, alpha = 1 and C absent or a bias row (beta 1) goes to _linear."""
    if (a.ndim != 2 or b.ndim != 2 or transA or alpha != 1.0 or not _same_float(a, b)
            or a.size == 0 or b.size == 0):
        return numpy_fn()
    n = b.shape[0] if transB else b.shape[1]
    k = b.shape[1] if transB else b.shape[0]
    if a.shape[1] != k:
        return numpy_fn()
    bias = None
    if c is not None and beta != 0.0:
        if beta != 1.0 or c.dtype != a.dtype or c.shape not in ((n,), (1, n)):
            return numpy_fn()
        bias = c.reshape(n)
    return _linear("Gemm", a, b, bias, not transB, ctx, numpy_fn)


@op("Gemm", since=7, backend="native")
def Gemm7(a, b, c, *, alpha=1.0, beta=1.0, transA=0, transB=0, _ctx):
    return _gemm(a, b, c, alpha, beta, transA, transB, _ctx,
                 lambda: numpy_gemm7(a, b, c, alpha=alpha, beta=beta, transA=transA, transB=transB))


@op("Gemm", since=11, backend="native")
def Gemm11(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0, _ctx):
    return _gemm(a, b, c, alpha, beta, transA, transB, _ctx,
                 lambda: numpy_gemm11(a, b, c, alpha=alpha, beta=beta, transA=transA, transB=transB))
