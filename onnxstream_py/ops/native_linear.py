"""Native Conv (2-D) and MatMul/Gemm (2-D weight B) through XNNPACK, chosen by measurement.

Trade-off: XNNPACK is not assumed to beat the numpy/BLAS path; for every new shape key
``kernel_choice.run_chosen`` times both on the real inputs and keeps the faster. What
XNNPACK pays depends on context, so the Conv key says it: its weight packing is paid every
run unless the operator cache keeps the packed operator ("cached"), and an NCHW input costs
a transpose that a channels-last one (layout.py) does not. XNNPACK's Conv output is left
channels-last, so consecutive convolutions (and the elementwise ops between them) never
transpose. Other dtypes, ranks and attributes go to the numpy op. Memory: without the cache
a weight larger than WEIGHT_BLOCK_BYTES is packed one block of output channels at a time
(create, run, delete), so the ONNX weight never coexists with a full packed copy. A weight
that arrives as a WeightRef (weight_ref.py: streamed from disk, RunOptions.max_weight_chunk_bytes)
is also *read* one chunk at a time: Conv by output channels, a [K, N] MatMul/Gemm weight by K
rows (partial products summed into the output), an [N, K] (transB) one by N rows. Both kernel
candidates run chunk by chunk, under the same kernel-choice key as the whole weight.
Reference: https://onnx.ai/onnx/operators/onnx__Conv.html, onnx__MatMul.html, onnx__Gemm.html
"""
from __future__ import annotations

import numpy as np

from .. import kernel_choice
from .. import native
from ..layout import is_nhwc, nhwc_buffer
from ..weight_ref import WeightRef, materialize
from .conv import Conv as numpy_conv, _ints, conv_nd, resolve_pads
from .linalg import Gemm7 as numpy_gemm7, Gemm11 as numpy_gemm11, MatMul as numpy_matmul, matmul
from . import fused
from .registry import op
from .winograd import PreparedWinograd, conv2d_winograd

# Largest block of weight packed at once; a bigger weight is split along output channels
# (each block re-reads the input, which is small wherever the weights are large in SD).
WEIGHT_BLOCK_BYTES = 16 << 20
_FLOATS = (np.dtype(np.float32), np.dtype(np.float16))
# A streamed weight's chunks on the BLAS path may be this many times max_weight_chunk_bytes:
# XNNPACK holds a chunk twice (raw and packed), BLAS once, so the memory bound is the same,
# and OpenBLAS loses speed on split weights (2 threads: a [640, 8640] weight's GEMM in halves
# took 1.6x the time of one call, in quarters 2.5-3.5x; 3x3 convs chunked 1.2-2.4x).
BLAS_CHUNK_FACTOR = 2


def _blocks(n: int, row_bytes: int) -> list[tuple[int, int]]:
    """[begin, end) blocks of n output channels whose weight rows take <= WEIGHT_BLOCK_BYTES."""
    step = max(1, min(n, WEIGHT_BLOCK_BYTES // max(1, row_bytes)))
    return [(c, min(n, c + step)) for c in range(0, n, step)]


def _conv_blocks(w, b, groups):
    """(c0, weight, bias, begin, end) per block of output channels packed at once: blocks of
    WEIGHT_BLOCK_BYTES within an array w (channels [begin, end) of it), or a WeightRef's chunks
    read in turn (each its own [c1-c0, ...] weight). Grouped convolutions are one block."""
    cout = w.shape[0]
    if groups != 1:
        yield 0, materialize(w), b, 0, cout
    elif isinstance(w, WeightRef):
        for c0, c1 in w.row_chunks(min(WEIGHT_BLOCK_BYTES, w.max_chunk_bytes)):
            yield c0, w.rows(c0, c1), None if b is None else b[c0:c1], 0, c1 - c0
    else:
        for c0, c1 in _blocks(cout, w[0].nbytes):
            yield c0, w, b, c0, c1


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

class PreparedConv:
    """XNNPACK operators for every output-channel block of one Conv weight: what the operator
    cache keeps across runs (the packed weight), closed when evicted or the model closes."""

    def __init__(self, w, b, strides, xpads, dilations, groups):
        cout = w.shape[0]
        blocks = _blocks(cout, w[0].nbytes) if groups == 1 else [(0, cout)]
        self.cin, self.cout, self.dtype = w.shape[1] * groups, cout, w.dtype
        self.nbytes = w.nbytes + (0 if b is None else b.nbytes)
        self.blocks = []
        try:
            for c0, c1 in blocks:
                self.blocks.append((c0, native.XnnConv2d(w, b, groups=groups, strides=strides, dilations=dilations,
                                                         pads=xpads, co_begin=c0, co_end=c1, y_channels=cout)))
        except BaseException:
            self.close()
            raise

    def run(self, x_nhwc: np.ndarray, pool) -> np.ndarray:
        """[N, H, W, Cin] -> [N, OH, OW, Cout] (an xnn_empty buffer)."""
        n, h, wd, _ = x_nhwc.shape
        oh, ow = self.blocks[0][1].output_hw(h, wd)
        y = native.xnn_empty((n, oh, ow, self.cout), self.dtype)
        for c0, conv in self.blocks:
            conv.run(x_nhwc, y, c0, pool)
        return y

    def close(self) -> None:
        for _, conv in self.blocks:
            conv.close()
        self.blocks = []


def _nhwc_input(x, pool) -> np.ndarray:
    """The [N, H, W, C] buffer of x: its own memory when x is channels-last, else a transpose."""
    if is_nhwc(x):
        return native.xnn_readable(nhwc_buffer(x))
    n, c, h, wd = x.shape
    return native.transpose_last2(np.ascontiguousarray(x).reshape(n, c, h * wd), pool=pool).reshape(n, h, wd, c)


def conv2d_xnnpack(x, w, b, strides, pads, dilations, groups, pool=None, prepared=None) -> np.ndarray:
    """ONNX Conv (2-D) through XNNPACK on channels-last memory; returns the NCHW-shaped,
    channels-last view of the NHWC result (the next convolution reads it without a transpose).
    x may be NCHW (transposed once here) or channels-last. ``prepared``: a PreparedConv to use
    (cached); without one, each block of output channels is packed, run and freed in turn so
    at most one block's packed weight exists. pads: [top, left, bottom, right]."""
    x_nhwc = _nhwc_input(x, pool)
    if prepared is not None:
        return prepared.run(x_nhwc, pool).transpose(0, 3, 1, 2)
    n, h, wd, _ = x_nhwc.shape
    cout = w.shape[0]
    y = None
    for c0, wb, bb, begin, end in _conv_blocks(w, b, groups):
        with native.XnnConv2d(wb, bb, groups=groups, strides=strides, dilations=dilations, pads=pads,
                              co_begin=begin, co_end=end, y_channels=cout) as conv:
            if y is None:
                oh, ow = conv.output_hw(h, wd)
                y = native.xnn_empty((n, oh, ow, cout), x.dtype)
            del wb          # a streamed chunk is freed before the next one is read
            conv.run(x_nhwc, y, c0, pool)
    return y.transpose(0, 3, 1, 2)


def conv2d_blas(x, w, b, strides, onnx_pads, dilations, groups, pool=None) -> np.ndarray:
    """ONNX Conv (2-D) on numpy's BLAS. A channels-last x stays channels-last for a 1x1
    stride-1 unpadded conv (one GEMM [N*H*W, Cin] @ [Cin, Cout] on its memory); otherwise x
    is brought to NCHW and conv_nd (tiled im2col GEMMs) writes an NCHW output. A WeightRef w
    is read one chunk of output channels at a time, each chunk computing its slice of y."""
    chunked = isinstance(w, WeightRef) and groups == 1
    if isinstance(w, WeightRef) and not chunked:
        w = w.full()
    if is_nhwc(x):
        pointwise = (w.shape[2:] == (1, 1) and groups == 1 and tuple(strides) == (1, 1) and not any(onnx_pads))
        if pointwise:
            n, cin, h, wd = x.shape
            cout = w.shape[0]
            y = native.xnn_empty((n, h, wd, cout), x.dtype)
            y2 = y.reshape(n * h * wd, cout)
            x2 = nhwc_buffer(x).reshape(n * h * wd, cin)
            if chunked:
                for c0, c1 in w.row_chunks(BLAS_CHUNK_FACTOR * w.max_chunk_bytes):
                    y2[:, c0:c1] = x2 @ w.rows(c0, c1).reshape(c1 - c0, cin).T
            else:
                np.matmul(x2, w.reshape(cout, cin).T, out=y2)
            if b is not None:
                y2 += b
            return y.transpose(0, 3, 1, 2)
        n, c, h, wd = x.shape
        x = native.transpose_last2(nhwc_buffer(x).reshape(n, h * wd, c), pool=pool).reshape(n, c, h, wd)
    if not chunked:
        return conv_nd(x, w, b, strides, onnx_pads, dilations, groups)
    out_hw = tuple((x.shape[2 + i] + onnx_pads[i] + onnx_pads[2 + i] - dilations[i] * (w.shape[2 + i] - 1) - 1)
                   // strides[i] + 1 for i in range(2))
    y = np.empty((x.shape[0], w.shape[0]) + out_hw, x.dtype)
    for c0, c1 in w.row_chunks(BLAS_CHUNK_FACTOR * w.max_chunk_bytes):
        conv_nd(x, w.rows(c0, c1), None if b is None else b[c0:c1], strides, onnx_pads, dilations, 1,
                out=y[:, c0:c1])
    return y


@op("Conv", since=1, backend="native")
def Conv(x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None,
         strides=None, _ctx, _cache=None, _weight_refs=(1,)):
    """2-D float Conv on XNNPACK or BLAS, measured per shape and input layout. With an operator
    cache slot, an XNNPACK choice keeps its packed operator across runs (later runs do not
    fetch w or b: they arrive as None). w may be a WeightRef (read in chunks of output channels)."""
    prepared = None if _cache is None else _cache.entry
    if prepared is not None:
        if x.ndim != 4 or x.shape[1] != prepared.cin or x.dtype != prepared.dtype:
            raise ValueError(f"Conv: input {x.dtype}{list(x.shape)} does not fit the cached operator "
                             f"({prepared.dtype}, {prepared.cin} input channels)")
        if isinstance(prepared, PreparedWinograd):
            return conv2d_winograd(x, None, None, prepared.pads, _ctx.pool, prepared=prepared)
        return conv2d_xnnpack(x, None, None, None, None, None, None, _ctx.pool, prepared)
    attrs = dict(auto_pad=auto_pad, dilations=dilations, group=group, kernel_shape=kernel_shape, pads=pads,
                 strides=strides)
    if x.ndim != 4 or w.ndim != 4 or not _same_float(x, w, b) or x.size == 0 or w.size == 0:
        return numpy_conv(x, materialize(w), b, **attrs)
    if kernel_shape is not None and list(kernel_shape) != list(w.shape[2:]):
        return numpy_conv(x, materialize(w), b, **attrs)   # raises the numpy op's error
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
        return numpy_conv(x, materialize(w), b, **attrs)   # errors and empty outputs are the numpy op's
    xpads = [onnx_pads[0], onnx_pads[1], onnx_pads[2], onnx_pads[3]]   # top, left, bottom, right
    pool = _ctx.pool
    nbytes = w.nbytes + (0 if b is None else b.nbytes)
    cacheable = _cache is not None and not isinstance(w, WeightRef) and _cache.has_room(nbytes)
    # The measured cost differs by input layout (a transpose or not), by whether XNNPACK's
    # packing is paid every run or once (cached), and by whether the weight arrives whole or in
    # chunks of rows (Winograd then transforms smaller blocks), so all three are in the key.
    mode = "cached" if cacheable else "chunked" if isinstance(w, WeightRef) else "streamed"
    key = ("Conv", x.dtype.name, tuple(map(int, x.shape)), tuple(map(int, w.shape)), group, tuple(strides),
           tuple(onnx_pads), tuple(dilations), b is not None, pool.threads,
           "nhwc" if is_nhwc(x) else "nchw", mode)
    choice = kernel_choice.lookup(key)
    out_pixels = x.shape[0] * ((spans[0] // strides[0]) + 1) * ((spans[1] // strides[1]) + 1)
    # (a WeightRef is transformed block by block, each block's rows read then: ops/winograd.py)
    wino_ok = (tuple(w.shape[2:]) == (3, 3) and tuple(strides) == (1, 1) and tuple(dilations) == (1, 1)
               and group == 1 and x.dtype == np.float32 and w.dtype == np.float32)
    default = _ctx.default_conv_kernel(out_pixels, wino_ok, cacheable, min(cin, cout))
    might_use_xnn = choice == "xnnpack" or (choice is None and (_ctx.measure_kernels or default == "xnnpack"))
    candidates = {
        "xnnpack": lambda: conv2d_xnnpack(x, w, b, strides, xpads, dilations, group, pool, prepared),
        "blas": lambda: conv2d_blas(x, w, b, strides, onnx_pads, dilations, group, pool),
    }
    # Winograd F(4x4,3x3) (ops/winograd.py) for 3x3 stride-1 float32 convolutions: a third
    # measured candidate (and the untuned default where native_context's rule says); its
    # transformed weight is cached like XNNPACK's packed one.
    wino = None
    if wino_ok:
        if cacheable and (choice == "winograd" or (choice is None and (_ctx.measure_kernels or default == "winograd"))):
            wino = PreparedWinograd(w, b, "f4", pool)      # 4x the weight (36 of 9 taps)
            wino.pads = xpads
            if not _cache.has_room(wino.nbytes):
                wino.close()
                wino = None
        candidates["winograd"] = lambda: conv2d_winograd(x, w, b, xpads, pool, "f4", prepared=wino)
    if cacheable and might_use_xnn:
        prepared = PreparedConv(w, b, strides, xpads, dilations, group)   # packing not timed: paid once
    try:
        y = kernel_choice.run_chosen(key, candidates, measure=_ctx.measure_kernels, default=default)
    except BaseException:
        for p in (prepared, wino):
            if p is not None:
                p.close()
        raise
    chosen = kernel_choice.lookup(key)
    chosen = default if chosen is None or chosen not in candidates else chosen
    covers = (1,) if b is None else (1, 2)
    for name, p in (("xnnpack", prepared), ("winograd", wino)):
        if p is not None and not (chosen == name and _cache.put(p, p.nbytes if p is wino else nbytes, covers)):
            p.close()
    return y


# ---------------------------------------------------------------- MatMul / Gemm

class PreparedFC:
    """XNNPACK fully-connected operators for every column block of one weight (cacheable)."""

    def __init__(self, w, bias, weight_kn):
        n = w.shape[1] if weight_kn else w.shape[0]
        self.k, self.n, self.dtype = (w.shape[0] if weight_kn else w.shape[1]), n, w.dtype
        self.nbytes = w.nbytes + (0 if bias is None else bias.nbytes)
        self.blocks = []
        try:
            for n0, n1 in _blocks(n, w.nbytes // n):
                self.blocks.append((n0, native.XnnFullyConnected(w, bias, weight_kn=weight_kn, n_begin=n0,
                                                                 n_end=n1, y_stride=n)))
        except BaseException:
            self.close()
            raise

    def run(self, a2d, pool) -> np.ndarray:
        y = np.empty((a2d.shape[0], self.n), a2d.dtype)
        for n0, fc in self.blocks:
            fc.run(a2d, y, n0, pool)
        return y

    def close(self) -> None:
        for _, fc in self.blocks:
            fc.close()
        self.blocks = []


def fc_xnnpack(a2d, w, bias, weight_kn, pool=None, prepared=None) -> np.ndarray:
    """a2d [M, K] @ W (+ bias) through XNNPACK; W is [K, N] (weight_kn) or [N, K]. Without a
    ``prepared`` (cached) operator, one block of columns is packed, run and freed at a time."""
    if prepared is not None:
        return prepared.run(a2d, pool)
    n = w.shape[1] if weight_kn else w.shape[0]
    y = np.empty((a2d.shape[0], n), a2d.dtype)
    col_bytes = w.nbytes // n
    for n0, n1 in _blocks(n, col_bytes):
        with native.XnnFullyConnected(w, bias, weight_kn=weight_kn, n_begin=n0, n_end=n1, y_stride=n) as fc:
            fc.run(a2d, y, n0, pool)
    return y


def fc_chunked(a2d, w: WeightRef, bias, weight_kn, kernel, pool=None) -> np.ndarray:
    """a2d [M, K] @ W (+ bias) with ``kernel`` ("xnnpack" or "blas"), reading the WeightRef W
    one chunk of rows at a time: an [N, K] weight by N rows, each chunk writing its columns of
    y; a [K, N] weight by K rows, y = sum of a2d[:, k0:k1] @ W[k0:k1] (one [M, N] scratch; M
    is small wherever weights are big in SD, e.g. 64-256 rows for its 26-52 MB weights)."""
    m = a2d.shape[0]
    n = w.shape[1] if weight_kn else w.shape[0]
    y = np.empty((m, n), a2d.dtype)
    limit = w.max_chunk_bytes * (1 if kernel == "xnnpack" else BLAS_CHUNK_FACTOR)
    if not weight_kn:
        for n0, n1 in w.row_chunks(limit):
            wc, bc = w.rows(n0, n1), None if bias is None else bias[n0:n1]
            if kernel == "xnnpack":
                with native.XnnFullyConnected(wc, bc, weight_kn=False, y_stride=n) as fc:
                    del wc
                    fc.run(a2d, y, n0, pool)
            else:
                np.matmul(a2d, wc.T, out=y[:, n0:n1])
                if bc is not None:
                    y[:, n0:n1] += bc
        return y
    part = None
    for k0, k1 in w.row_chunks(limit):
        wc = w.rows(k0, k1)
        if k0 == 0:
            dest = y
        else:
            dest = part = np.empty_like(y) if part is None else part
        if kernel == "xnnpack":
            with native.XnnFullyConnected(wc, None, weight_kn=True) as fc:
                del wc
                fc.run(np.ascontiguousarray(a2d[:, k0:k1]), dest, 0, pool)
        else:
            np.matmul(a2d[:, k0:k1], wc, out=dest)
        if dest is not y:
            y += dest
    if bias is not None:
        y += bias
    return y


def _cached_fc(op_name, a, prepared, pool):
    """Run a cached operator (its weight was not fetched this run)."""
    if a.ndim < 1 or a.shape[-1] != prepared.k or a.dtype != prepared.dtype:
        raise ValueError(f"{op_name}: input {a.dtype}{list(a.shape)} does not fit the cached operator "
                         f"({prepared.dtype}, K={prepared.k})")
    m = a.size // prepared.k
    return prepared.run(np.ascontiguousarray(a).reshape(m, prepared.k), pool).reshape(a.shape[:-1] + (prepared.n,))


def _linear(op_name, a, w, bias, weight_kn, ctx, numpy_fn, cache=None, covers=(1,)):
    """Measured choice between XNNPACK and numpy for a [..., K] @ W (+ bias); an XNNPACK
    choice keeps its packed operator in the operator cache when it has room."""
    k = a.shape[-1]
    n = w.shape[1] if weight_kn else w.shape[0]
    m = a.size // k
    pool = ctx.pool
    nbytes = w.nbytes + (0 if bias is None else bias.nbytes)
    chunked = isinstance(w, WeightRef)
    cacheable = cache is not None and not chunked and cache.has_room(nbytes)
    key = (op_name, a.dtype.name, m, k, n, bool(weight_kn), bias is not None, pool.threads,
           "cached" if cacheable else "streamed")
    if chunked:     # same key: chunking changes where the weight lives, not which kernel wins
        a2d = a.reshape(m, k)
        return kernel_choice.run_chosen(key, {
            name: (lambda name=name: fc_chunked(a2d, w, bias, weight_kn, name, pool).reshape(a.shape[:-1] + (n,)))
            for name in ("xnnpack", "blas")}, measure=ctx.measure_kernels, default=ctx.default_kernel)
    choice = kernel_choice.lookup(key)
    prepared = None
    if cacheable and (choice == "xnnpack" or (choice is None and (ctx.measure_kernels or ctx.default_kernel == "xnnpack"))):
        prepared = PreparedFC(w, bias, weight_kn)

    def xnn():
        return fc_xnnpack(a.reshape(m, k), w, bias, weight_kn, pool, prepared).reshape(a.shape[:-1] + (n,))

    try:
        y = kernel_choice.run_chosen(key, {"xnnpack": xnn, "blas": numpy_fn},
                                     measure=ctx.measure_kernels, default=ctx.default_kernel)
    except BaseException:
        if prepared is not None:
            prepared.close()
        raise
    if prepared is not None and not (kernel_choice.lookup(key) in ("xnnpack", None)
                                     and cache.put(prepared, nbytes, covers)):
        prepared.close()
    return y


@op("MatMul", since=1, backend="native")
def MatMul(a, b, *, _ctx, _cache=None, _weight_refs=(1,)):
    if _cache is not None and _cache.entry is not None:
        return _cached_fc("MatMul", a, _cache.entry, _ctx.pool)
    if a.ndim < 2 or b.ndim != 2 or a.shape[-1] != b.shape[0] or not _same_float(a, b) or a.size == 0 or b.size == 0:
        return numpy_matmul(a, materialize(b))
    return _linear("MatMul", a, b, None, True, _ctx, lambda: matmul(a, b), _cache)


def _gemm(a, b, c, alpha, beta, transA, transB, ctx, numpy_fn, cache=None):
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
    return _linear("Gemm", a, b, bias, not transB, ctx, numpy_fn, cache, (1,) if bias is None else (1, 2))


@op("Gemm", since=7, backend="native")
def Gemm7(a, b, c, *, alpha=1.0, beta=1.0, transA=0, transB=0, _ctx, _cache=None, _weight_refs=(1,)):
    if _cache is not None and _cache.entry is not None:
        return _cached_fc("Gemm", a, _cache.entry, _ctx.pool)
    return _gemm(a, b, c, alpha, beta, transA, transB, _ctx,
                 lambda: numpy_gemm7(a, materialize(b), c, alpha=alpha, beta=beta, transA=transA, transB=transB),
                 _cache)


@op("Gemm", since=11, backend="native")
def Gemm11(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0, _ctx, _cache=None, _weight_refs=(1,)):
    if _cache is not None and _cache.entry is not None:
        return _cached_fc("Gemm", a, _cache.entry, _ctx.pool)
    return _gemm(a, b, c, alpha, beta, transA, transB, _ctx,
                 lambda: numpy_gemm11(a, materialize(b), c, alpha=alpha, beta=beta, transA=transA, transB=transB),
                 _cache)


# --------------------------------------------------------------------------- GEGLU projection
# ops/fused.py GegluLinear (plan.fuse_geglu_linear): the projection computed a block of rows
# at a time and multiplied by Gelu of its second half in the C kernel, so the [tokens, 2H]
# projection never exists whole. The kernel for the rows is the measured XNNPACK/BLAS choice
# of the whole projection (one packing per run, or the cached operator).

@op("GegluLinear", domain=fused.DOMAIN, backend="native")
def GegluLinear(x, w, bias=None, m_starts=None, m_ends=None, m_axes=None, m_steps=None,
                g_starts=None, g_ends=None, g_axes=None, g_steps=None, *, approximate="none", const_rank=0,
                _ctx, _cache=None, _weight_refs=(1,)):
    m_slice, g_slice = (m_starts, m_ends, m_axes, m_steps), (g_starts, g_ends, g_axes, g_steps)
    pool = _ctx.pool
    entry = _cache.entry if _cache is not None else None
    if (entry is None and isinstance(w, WeightRef) and w.ndim == 2 and isinstance(x, np.ndarray)
            and w.nbytes <= (x.size // max(1, x.shape[-1])) * w.shape[1] * 4):
        # a chunked weight smaller than the projection it makes (the SD UNet's 640-channel
        # level: 13 MB of weight, 20 MB of projection): read it whole and keep the row blocks;
        # a bigger one (the 1280 level: 52 MB for 10 MB) runs the replaced ops chunk by chunk
        w = w.full()
    if entry is not None:
        k, n, wdt = entry.k, entry.n, entry.dtype
    else:
        k, n, wdt = (w.shape[0], w.shape[1], w.dtype) if w.ndim == 2 else (-1, -1, None)
    f32 = np.dtype(np.float32)
    fast = (isinstance(x, np.ndarray) and x.dtype == f32 and wdt == f32 and x.ndim >= max(const_rank, 2)
            and x.shape[-1] == k and x.size > 0 and approximate in ("none", "tanh")
            and fused.geglu_halves(x.ndim, n, m_slice, g_slice) is not None)
    if entry is None:
        fast = fast and not isinstance(w, WeightRef) and (
            bias is None or (bias.dtype == f32 and bias.shape in ((n,), (1, n))))
    if not fast:
        if entry is not None:
            p = _cached_fc("GegluLinear", x, entry, pool)       # bias included
        else:
            p = MatMul(x, w, _ctx=_ctx)
            if bias is not None:
                p = np.asarray(np.add(p, bias))
        return fused.geglu_unfused(p, m_slice, g_slice, approximate, const_rank)
    x2d = np.ascontiguousarray(x).reshape(-1, k)
    tanh = approximate == "tanh"
    out_shape = x.shape[:-1] + (n // 2,)

    def product(mh, gh, out):
        native.gelu_mul_f32(gh, mh, tanh, out, pool=pool)

    if entry is not None:
        return fused.geglu_rows(x2d, n, lambda r0, r1: entry.run(x2d[r0:r1], pool), product, f32).reshape(out_shape)
    b = None if bias is None else bias.reshape(n)
    nbytes = w.nbytes + (0 if b is None else b.nbytes)
    cacheable = _cache is not None and _cache.has_room(nbytes)
    key = ("GegluLinear", x2d.shape[0], k, n, b is not None, pool.threads, "cached" if cacheable else "streamed")
    prepared = []

    def xnn():
        if not prepared:
            prepared.append(PreparedFC(w, b, True))
        return fused.geglu_rows(x2d, n, lambda r0, r1: prepared[0].run(x2d[r0:r1], pool), product, f32)

    def blas():
        def rows(r0, r1):
            p = np.matmul(x2d[r0:r1], w)
            if b is not None:
                p += b
            return p
        return fused.geglu_rows(x2d, n, rows, product, f32)

    try:
        y = kernel_choice.run_chosen(key, {"xnnpack": xnn, "blas": blas},
                                     measure=_ctx.measure_kernels, default=_ctx.default_kernel)
    finally:
        if prepared and not (cacheable and kernel_choice.lookup(key) in ("xnnpack", None)
                             and _cache.put(prepared[0], nbytes, (1,) if b is None else (1, 2))):
            prepared[0].close()
    return y.reshape(out_shape)
