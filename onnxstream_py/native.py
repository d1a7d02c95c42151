"""The one module that imports the compiled extension ``onnxstream_py._native``.

It wraps each C function 1:1 and turns every non-zero status into a NativeError naming
the op and the status (``_check``); nothing else in the package touches ``ffi``/``lib``
except through this module. Arrays are validated here, in Python, before any pointer
reaches C (dtype, contiguity, shape), and passed with ``ffi.from_buffer`` (no copies).
"""
from __future__ import annotations

import numpy as np

from .errors import EngineError

APT_PACKAGES = "libxnnpack-dev libpthreadpool-dev"


class NativeUnavailable(EngineError, ImportError):
    """The native extension was not built or its system libraries are missing."""


class NativeError(EngineError):
    """A native call returned an error status."""


try:
    from . import _native
except ImportError as e:   # not built, or libXNNPACK/libpthreadpool missing at run time
    raise NativeUnavailable(
        f"onnxstream_py's native extension cannot be loaded ({e}). It needs XNNPACK and "
        f"pthreadpool: `sudo apt-get install {APT_PACKAGES}`, then reinstall the package "
        f"(`pip install -e .` or `bash scripts/setup.sh`). RunOptions(backend='numpy') runs "
        f"without it.") from None

ffi = _native.ffi
lib = _native.lib

# enum xnn_status (xnnpack.h) and our own negative codes (native/osn_core.h)
_STATUS = {1: "xnn_status_uninitialized", 2: "xnn_status_invalid_parameter",
           3: "xnn_status_invalid_state", 4: "xnn_status_unsupported_parameter",
           5: "xnn_status_unsupported_hardware", 6: "xnn_status_out_of_memory",
           -1: "invalid argument", -2: "out of memory"}


def _check(status: int, what: str) -> None:
    """Raise NativeError naming ``what`` (the op and its shapes) for a non-zero status."""
    if status != 0:
        raise NativeError(f"{what}: native call failed with {_STATUS.get(status, 'status')} ({status})")


_check(lib.osn_init(), "XNNPACK initialisation")


def ptr(a: np.ndarray, ctype: str = "void *"):
    """A C pointer to a C-contiguous array's data (no copy; the array must outlive the call)."""
    if not a.flags.c_contiguous:
        raise ValueError(f"native call needs a C-contiguous array, got strides {a.strides} for {a.shape}")
    return ffi.cast(ctype, ffi.from_buffer(a, require_writable=False))


def out_ptr(a: np.ndarray, ctype: str = "void *"):
    """Like ``ptr`` for an output: the array must also be writeable."""
    if not a.flags.c_contiguous or not a.flags.writeable:
        raise ValueError(f"native output must be a writeable C-contiguous array ({a.shape}, {a.strides})")
    return ffi.cast(ctype, ffi.from_buffer(a, require_writable=True))


class ThreadPool:
    """One pthreadpool, shared by XNNPACK operators and our kernels; one per Model."""

    def __init__(self, threads: int | None = None):
        self._pool = lib.osn_pool_create(int(threads or 0))
        if self._pool == ffi.NULL:
            raise NativeError(f"could not create a thread pool of {threads or 'all'} threads")

    @property
    def handle(self):
        if self._pool is None:
            raise NativeError("thread pool used after close()")
        return self._pool

    @property
    def threads(self) -> int:
        return int(lib.osn_pool_threads(self.handle))

    def close(self) -> None:
        if self._pool is not None:
            lib.osn_pool_destroy(self._pool)
            self._pool = None

    def __del__(self):
        self.close()


def version() -> int:
    return int(lib.osn_version())


# ---- XNNPACK linear ----
# Convolution (NHWC) and fully-connected operators of native/osn_xnn_linear.h. A created
# operator holds XNNPACK's packed copy of (a block of) the weight; the classes below own that
# handle and free it deterministically (close(), or a with-block).
import mmap as _mmap

XNN_EXTRA_BYTES = 16      # XNNPACK may read this many bytes past the end of an input
_LINEAR_DTYPES = {np.dtype(np.float32): lib.OSN_LINEAR_F32, np.dtype(np.float16): lib.OSN_LINEAR_F16}


def xnn_empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array followed by XNN_EXTRA_BYTES of readable slack."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    extra = -(-XNN_EXTRA_BYTES // dtype.itemsize)
    return np.empty(n + extra, dtype)[:n].reshape(shape)


def xnn_readable(a: np.ndarray) -> np.ndarray:
    """``a`` as a C-contiguous array whose XNN_EXTRA_BYTES past the end are mapped memory.

    No copy when ``a`` is contiguous and its last byte and the slack share a page (all but
    16 in 4096 placements); otherwise a padded copy.
    """
    if a.flags.c_contiguous and a.nbytes:
        end = a.ctypes.data + a.nbytes - 1
        if end // _mmap.PAGESIZE == (end + XNN_EXTRA_BYTES) // _mmap.PAGESIZE:
            return a
    out = xnn_empty(a.shape, a.dtype)
    np.copyto(out, a)
    return out


def _linear_dtype(what: str, **arrays) -> int:
    dtypes = {name: a.dtype for name, a in arrays.items() if a is not None}
    first = next(iter(dtypes.values()))
    if first not in _LINEAR_DTYPES or any(d != first for d in dtypes.values()):
        raise ValueError(f"{what}: dtypes {({k: str(v) for k, v in dtypes.items()})}: expected all float32 or all float16")
    return _LINEAR_DTYPES[first]


def conv2d_weight_ohwi(w: np.ndarray, co_begin: int = 0, co_end: int | None = None) -> np.ndarray:
    """OIHW [Cout, Cin/g, kh, kw] -> OHWI [co_end-co_begin, kh, kw, Cin/g] (XNNPACK's layout)."""
    if w.ndim != 4:
        raise ValueError(f"conv2d_weight_ohwi: weight {w.shape}, expected [Cout, Cin/groups, kh, kw]")
    cout, cig, kh, kw = w.shape
    co_end = cout if co_end is None else co_end
    if not 0 <= co_begin < co_end <= cout:
        raise ValueError(f"conv2d_weight_ohwi: channel block [{co_begin}, {co_end}) outside weight {w.shape}")
    dt = _linear_dtype("conv2d_weight_ohwi", weight=w)
    w = np.ascontiguousarray(w)
    out = np.empty((co_end - co_begin, kh, kw, cig), w.dtype)
    _check(lib.osn_conv2d_weight_ohwi(out_ptr(out), ptr(w), dt, cout, cig, kh, kw, co_begin, co_end),
           f"conv2d_weight_ohwi {w.shape}")
    return out


def transpose_last2(src: np.ndarray, out: np.ndarray | None = None, pool=None) -> np.ndarray:
    """[B, R, C] -> [B, C, R] (float32/float16), in cache tiles on the pool. NCHW -> NHWC is
    src.reshape(N, C, H*W); NHWC -> NCHW is src.reshape(N, H*W, C). ``out`` defaults to an
    xnn_empty array (ready to be an XNNPACK input)."""
    if src.ndim != 3 or src.dtype not in _LINEAR_DTYPES:
        raise ValueError(f"transpose_last2: input {src.dtype}{list(src.shape)}, expected float32/float16 [B, R, C]")
    b, r, c = src.shape
    if out is None:
        out = xnn_empty((b, c, r), src.dtype)
    elif out.shape != (b, c, r) or out.dtype != src.dtype:
        raise ValueError(f"transpose_last2: output {out.dtype}{list(out.shape)}, expected {src.dtype}{[b, c, r]}")
    if src.size:
        src = np.ascontiguousarray(src)
        _check(lib.osn_transpose_last2(out_ptr(out), ptr(src), ffi.NULL if pool is None else pool.handle,
                                       _LINEAR_DTYPES[src.dtype], b, r, c), f"transpose_last2 {list(src.shape)}")
    return out


class _OwnedOperator:
    """A created native operator owned by Python: freed by close(), a with-block, or when
    collected. Subclasses set ``self._op`` and say how to free it (``_free``)."""

    _op = None

    def _free(self, handle) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self._op is not None:
            self._free(self._op)
            self._op = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()


class XnnConv2d(_OwnedOperator):
    """A created XNNPACK 2-D convolution (ONNX Conv semantics) on NHWC activations.

    w: [Cout, Cin/groups, kh, kw] ONNX weight (float32 or float16), b: [Cout] or None, same dtype.
    pads: ONNX order [top, left, bottom, right]. The operator computes output channels
    [co_begin, co_end) (a block only for groups == 1) into an NHWC output with ``y_channels``
    channels (default: the block's width). The caller's weight may be freed after __init__.
    """

    def __init__(self, w, b=None, *, groups=1, strides=(1, 1), dilations=(1, 1), pads=(0, 0, 0, 0),
                 co_begin=0, co_end=None, y_channels=None):
        what = f"Conv(XNNPACK) weight {w.shape} group={groups}"
        if w.ndim != 4:
            raise ValueError(f"{what}: expected weight [Cout, Cin/groups, kh, kw]")
        cout, cig, kh, kw = (int(v) for v in w.shape)
        groups = int(groups)
        if groups < 1 or cout % groups:
            raise ValueError(f"{what}: Cout must be divisible by group")
        co_end = cout if co_end is None else int(co_end)
        if not 0 <= co_begin < co_end <= cout or (groups > 1 and (co_begin, co_end) != (0, cout)):
            raise ValueError(f"{what}: channel block [{co_begin}, {co_end}) (blocks need group=1)")
        count = co_end - co_begin
        y_channels = count if y_channels is None else int(y_channels)
        if y_channels < count:
            raise ValueError(f"{what}: y_channels {y_channels} < block width {count}")
        if b is not None and b.shape != (cout,):
            raise ValueError(f"{what}: bias {b.shape}, expected ({cout},)")
        strides, dilations, pads = [list(map(int, v)) for v in (strides, dilations, pads)]
        if len(strides) != 2 or len(dilations) != 2 or len(pads) != 4 or min(strides + dilations) < 1 or min(pads) < 0:
            raise ValueError(f"{what}: strides {strides}, dilations {dilations}, pads {pads}: "
                             f"expected 2 positive, 2 positive and 4 non-negative ints")
        dt = _linear_dtype(what, weight=w, bias=b)
        w = xnn_readable(w)
        b = None if b is None else xnn_readable(b)
        self.dtype = w.dtype
        self.cin, self.cout, self.kernel, self.groups = cig * groups, cout, (kh, kw), groups
        self.strides, self.dilations, self.pads = strides, dilations, pads
        self.co_count, self.y_channels = count, y_channels
        self._what = what
        h = ffi.new("osn_conv2d **")
        _check(lib.osn_conv2d_create(h, ptr(w), ffi.NULL if b is None else ptr(b), dt, groups, self.cin, cout,
                                     kh, kw, co_begin, co_end, y_channels, strides[0], strides[1],
                                     dilations[0], dilations[1], pads[0], pads[1], pads[2], pads[3]), what)
        self._op = h[0]

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (dh, dw), p = self.kernel, self.strides, self.dilations, self.pads
        return ((h + p[0] + p[2] - (kh - 1) * dh - 1) // sh + 1, (w + p[1] + p[3] - (kw - 1) * dw - 1) // sw + 1)

    def run(self, x: np.ndarray, y: np.ndarray | None = None, y_channel_offset: int = 0, pool=None) -> np.ndarray:
        """y[..., off:off+block] = conv(x); x: [N, H, W, Cin] NHWC, y: [N, OH, OW, y_channels]."""
        if self._op is None:
            raise NativeError(f"{self._what}: operator used after close()")
        if x.ndim != 4 or x.shape[3] != self.cin or x.dtype != self.dtype:
            raise ValueError(f"{self._what}: input {x.dtype}{list(x.shape)}, expected {self.dtype}[N, H, W, {self.cin}] NHWC")
        n, h, w, _ = x.shape
        oh, ow = self.output_hw(h, w)
        if oh < 1 or ow < 1:
            raise ValueError(f"{self._what}: input {list(x.shape)} is smaller than the (dilated) kernel")
        shape = (n, oh, ow, self.y_channels)
        if y is None:
            y = np.empty(shape, self.dtype)
        elif y.shape != shape or y.dtype != self.dtype:
            raise ValueError(f"{self._what}: output {y.dtype}{list(y.shape)}, expected {self.dtype}{list(shape)}")
        if not 0 <= y_channel_offset <= self.y_channels - self.co_count:
            raise ValueError(f"{self._what}: channel offset {y_channel_offset} + block {self.co_count} "
                             f"exceeds {self.y_channels} output channels")
        if y.size == 0:
            return y
        x = xnn_readable(x)
        _check(lib.osn_conv2d_run(self._op, ffi.NULL if pool is None else pool.handle, out_ptr(y), ptr(x),
                                  n, h, w, y_channel_offset), f"{self._what} input {list(x.shape)}")
        return y

    def _free(self, handle) -> None:
        lib.osn_conv2d_delete(handle)


class XnnFullyConnected(_OwnedOperator):
    """A created XNNPACK fully-connected operator: y = x @ W (+ bias) for x [M, K].

    w: [K, N] when ``weight_kn`` (MatMul's B) else [N, K] (Gemm with transB=1); b: [N] or
    None. Computes output columns [n_begin, n_end) into an output of row stride ``y_stride``
    (default: the block's width). The caller's weight may be freed after __init__.
    """

    def __init__(self, w, b=None, *, weight_kn=True, n_begin=0, n_end=None, y_stride=None):
        what = f"FullyConnected(XNNPACK) weight {w.shape} ({'[K, N]' if weight_kn else '[N, K]'})"
        if w.ndim != 2:
            raise ValueError(f"{what}: expected a 2-D weight")
        k, n = (int(v) for v in (w.shape if weight_kn else w.shape[::-1]))
        n_end = n if n_end is None else int(n_end)
        if not 0 <= n_begin < n_end <= n:
            raise ValueError(f"{what}: column block [{n_begin}, {n_end}) outside N={n}")
        count = n_end - n_begin
        y_stride = count if y_stride is None else int(y_stride)
        if y_stride < count:
            raise ValueError(f"{what}: y_stride {y_stride} < block width {count}")
        if b is not None and b.shape != (n,):
            raise ValueError(f"{what}: bias {b.shape}, expected ({n},)")
        dt = _linear_dtype(what, weight=w, bias=b)
        w = xnn_readable(w)
        b = None if b is None else xnn_readable(b)
        self.dtype, self.k, self.n, self.n_count, self.y_stride = w.dtype, k, n, count, y_stride
        self._what = what
        h = ffi.new("osn_fc **")
        _check(lib.osn_fc_create(h, ptr(w), ffi.NULL if b is None else ptr(b), dt, int(bool(weight_kn)),
                                 k, n, n_begin, n_end, y_stride), what)
        self._op = h[0]

    def run(self, x: np.ndarray, y: np.ndarray | None = None, y_col_offset: int = 0, pool=None) -> np.ndarray:
        """y[:, off:off+block] = x @ W (+ bias); x: [M, K], y: [M, y_stride]."""
        if self._op is None:
            raise NativeError(f"{self._what}: operator used after close()")
        if x.ndim != 2 or x.shape[1] != self.k or x.dtype != self.dtype:
            raise ValueError(f"{self._what}: input {x.dtype}{list(x.shape)}, expected {self.dtype}[M, {self.k}]")
        shape = (x.shape[0], self.y_stride)
        if y is None:
            y = np.empty(shape, self.dtype)
        elif y.shape != shape or y.dtype != self.dtype:
            raise ValueError(f"{self._what}: output {y.dtype}{list(y.shape)}, expected {self.dtype}{list(shape)}")
        if not 0 <= y_col_offset <= self.y_stride - self.n_count:
            raise ValueError(f"{self._what}: column offset {y_col_offset} + block {self.n_count} exceeds {self.y_stride}")
        if y.size == 0:
            return y
        x = xnn_readable(x)
        _check(lib.osn_fc_run(self._op, ffi.NULL if pool is None else pool.handle, out_ptr(y), ptr(x),
                              x.shape[0], y_col_offset), f"{self._what} input {list(x.shape)}")
        return y

    def _free(self, handle) -> None:
        lib.osn_fc_delete(handle)


# ---- own kernels ----
# Wrappers of native/osn_k_{convert,math,norm}.h. Each takes an optional ``out`` (allocated
# when None) and ``pool`` (a ThreadPool; None runs on the calling thread) and returns out.

def _pool_ptr(pool: ThreadPool | None):
    return ffi.NULL if pool is None else pool.handle


def _need(what: str, a: np.ndarray, name: str, dtypes) -> None:
    if not isinstance(a, np.ndarray) or a.dtype not in dtypes or not a.flags.c_contiguous:
        desc = f"{a.dtype} {a.shape} contiguous={a.flags.c_contiguous}" if isinstance(a, np.ndarray) else type(a)
        raise ValueError(f"{what}: {name} must be a C-contiguous {'/'.join(str(np.dtype(d)) for d in dtypes)} "
                         f"array, got {desc}")


def _out_like(what: str, out: np.ndarray | None, shape, dtype, src: np.ndarray, may_alias: bool) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=dtype)
    _need(what, out, "out", (dtype,))
    if out.shape != tuple(shape) or not out.flags.writeable:
        raise ValueError(f"{what}: out must be a writeable {np.dtype(dtype)} array of shape {tuple(shape)}, "
                         f"got {out.shape} writeable={out.flags.writeable}")
    if np.may_share_memory(out, src) and not (may_alias and out.__array_interface__["data"][0]
                                              == src.__array_interface__["data"][0]):
        raise ValueError(f"{what}: out {out.shape} overlaps the input {src.shape}")
    return out


def f16_to_f32(src: np.ndarray, out: np.ndarray | None = None, *, pool: ThreadPool | None = None) -> np.ndarray:
    """out = float32(src) for a float16 (or uint16 bit-pattern) array, in plain C."""
    what = f"f16_to_f32 {getattr(src, 'shape', '?')}"
    _need(what, src, "src", (np.float16, np.uint16))
    out = _out_like(what, out, src.shape, np.float32, src, may_alias=False)
    _check(lib.osn_f16_to_f32(_pool_ptr(pool), out_ptr(out, "float *"), ptr(src, "uint16_t *"), src.size), what)
    return out


def f32_to_f16(src: np.ndarray, out: np.ndarray | None = None, *, pool: ThreadPool | None = None) -> np.ndarray:
    """out = float16(src), round to nearest even (as numpy's astype), in plain C."""
    what = f"f32_to_f16 {getattr(src, 'shape', '?')}"
    _need(what, src, "src", (np.float32,))
    out = _out_like(what, out, src.shape, np.float16, src, may_alias=False)
    _check(lib.osn_f32_to_f16(_pool_ptr(pool), out_ptr(out, "uint16_t *"), ptr(src, "float *"), src.size), what)
    return out


def erf_f32(x: np.ndarray, out: np.ndarray | None = None, *, pool: ThreadPool | None = None) -> np.ndarray:
    """out = erf(x) for float32 x; out may be x itself."""
    what = f"Erf {getattr(x, 'shape', '?')}"
    _need(what, x, "X", (np.float32,))
    out = _out_like(what, out, x.shape, np.float32, x, may_alias=True)
    _check(lib.osn_erf_f32(_pool_ptr(pool), out_ptr(out, "float *"), ptr(x, "float *"), x.size), what)
    return out


def gelu_f32(x: np.ndarray, approximate: bool = False, out: np.ndarray | None = None, *,
             pool: ThreadPool | None = None) -> np.ndarray:
    """out = Gelu(x) (erf form, or tanh form when ``approximate``); out may be x itself."""
    what = f"Gelu {getattr(x, 'shape', '?')}"
    _need(what, x, "X", (np.float32,))
    out = _out_like(what, out, x.shape, np.float32, x, may_alias=True)
    _check(lib.osn_gelu_f32(_pool_ptr(pool), out_ptr(out, "float *"), ptr(x, "float *"), x.size,
                            1 if approximate else 0), what)
    return out


def softmax_f32(x: np.ndarray, out: np.ndarray | None = None, *, pool: ThreadPool | None = None) -> np.ndarray:
    """Softmax over the last axis of a float32 array (rank >= 1); out may be x itself."""
    what = f"Softmax {getattr(x, 'shape', '?')}"
    _need(what, x, "X", (np.float32,))
    if x.ndim < 1:
        raise ValueError(f"{what}: X must have rank >= 1")
    out = _out_like(what, out, x.shape, np.float32, x, may_alias=True)
    cols = x.shape[-1]
    rows = x.size // cols if cols else 0
    _check(lib.osn_softmax_f32(_pool_ptr(pool), out_ptr(out, "float *"), ptr(x, "float *"), rows, cols), what)
    return out


def group_norm_f32(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, groups: int, epsilon: float,
                   out: np.ndarray | None = None, *, pool: ThreadPool | None = None) -> np.ndarray:
    """Group normalisation of float32 x [N, C, *spatial] with statistics per (n, group of C/groups
    channels) and per-channel scale/bias [C] (InstanceNormalization: groups = C)."""
    what = f"GroupNorm X {getattr(x, 'shape', '?')} groups={groups}"
    _need(what, x, "X", (np.float32,))
    if x.ndim < 2 or groups < 1 or x.shape[1] % groups:
        raise ValueError(f"{what}: X must be [N, C, ...] with C divisible by groups")
    c = x.shape[1]
    for name, v in (("scale", scale), ("bias", bias)):
        _need(what, v, name, (np.float32,))
        if v.shape != (c,):
            raise ValueError(f"{what}: {name} must have shape ({c},), got {v.shape}")
    out = _out_like(what, out, x.shape, np.float32, x, may_alias=False)
    spatial = x.size // (x.shape[0] * c) if x.size else 0
    _check(lib.osn_group_norm_f32(_pool_ptr(pool), out_ptr(out, "float *"), ptr(x, "float *"),
                                  ptr(scale, "float *"), ptr(bias, "float *"), x.shape[0], groups,
                                  c // groups, spatial, float(epsilon)), what)
    return out


def layer_norm_f32(x: np.ndarray, scale: np.ndarray, bias: np.ndarray | None, epsilon: float,
                   out: np.ndarray | None = None, mean: np.ndarray | None = None,
                   invstd: np.ndarray | None = None, *, pool: ThreadPool | None = None) -> np.ndarray:
    """Layer normalisation of the rows of float32 x [rows, cols] with scale/bias [cols];
    optionally also writes the row means and 1/sqrt(var + eps) into ``mean``/``invstd`` [rows]."""
    what = f"LayerNormalization X {getattr(x, 'shape', '?')}"
    _need(what, x, "X", (np.float32,))
    if x.ndim != 2:
        raise ValueError(f"{what}: X must be a [rows, cols] matrix")
    rows, cols = x.shape
    for name, v in (("scale", scale), ("bias", bias)):
        if v is None and name == "bias":
            continue
        _need(what, v, name, (np.float32,))
        if v.shape != (cols,):
            raise ValueError(f"{what}: {name} must have shape ({cols},), got {v.shape}")
    for name, v in (("mean", mean), ("invstd", invstd)):
        if v is not None:
            _need(what, v, name, (np.float32,))
            if v.shape != (rows,) or not v.flags.writeable:
                raise ValueError(f"{what}: {name} must be a writeable float32 array of shape ({rows},), "
                                 f"got {v.shape}")
    out = _out_like(what, out, x.shape, np.float32, x, may_alias=False)
    _check(lib.osn_layer_norm_f32(_pool_ptr(pool), out_ptr(out, "float *"),
                                  ffi.NULL if mean is None else out_ptr(mean, "float *"),
                                  ffi.NULL if invstd is None else out_ptr(invstd, "float *"),
                                  ptr(x, "float *"), ptr(scale, "float *"),
                                  ffi.NULL if bias is None else ptr(bias, "float *"),
                                  rows, cols, float(epsilon)), what)
    return out


# ---- attention ----
# Wrapper of native/osn_k_attention.h: the softmax step of SlicedAttention on a score block.

def attention_exp_f32(s: np.ndarray, row_sums: np.ndarray, scale: float = 1.0, mask: np.ndarray | None = None,
                      *, pool: ThreadPool | None = None) -> np.ndarray:
    """In place on float32 scores s [rows, cols]: s = exp(t - rowmax(t)) with t = s * scale (+ mask),
    and row_sums [rows] = the row sums, so ``s / row_sums[:, None]`` is softmax(t). ``mask`` is
    a C-contiguous float32 [rows, cols] or [1, cols] (one row for all). Returns s."""
    what = f"SlicedAttention scores {getattr(s, 'shape', '?')}"
    _need(what, s, "scores", (np.float32,))
    if s.ndim != 2 or not s.flags.writeable:
        raise ValueError(f"{what}: scores must be a writeable [rows, cols] matrix")
    rows, cols = s.shape
    _need(what, row_sums, "row_sums", (np.float32,))
    if row_sums.shape != (rows,) or not row_sums.flags.writeable or np.may_share_memory(row_sums, s):
        raise ValueError(f"{what}: row_sums must be a writeable float32 array of shape ({rows},) apart from "
                         f"the scores, got {row_sums.shape}")
    mask_ptr, stride = ffi.NULL, 0
    if mask is not None:
        _need(what, mask, "mask", (np.float32,))
        if mask.ndim != 2 or mask.shape[1] != cols or mask.shape[0] not in (1, rows):
            raise ValueError(f"{what}: mask must be [{rows} or 1, {cols}], got {mask.shape}")
        mask_ptr, stride = ptr(mask, "float *"), (cols if mask.shape[0] > 1 else 0)
    if rows and cols:
        _check(lib.osn_attention_exp_f32(_pool_ptr(pool), out_ptr(s, "float *"), out_ptr(row_sums, "float *"),
                                         mask_ptr, stride, rows, cols, float(scale)), what)
    return s


def attention_exp_t_f32(st: np.ndarray, col_sums: np.ndarray, scale: float = 1.0, *,
                        pool: ThreadPool | None = None) -> np.ndarray:
    """``attention_exp_f32`` on transposed float32 scores st [keys, queries] (softmax down each
    column), in place; col_sums [queries] receives the column sums. Returns st."""
    what = f"SlicedAttention transposed scores {getattr(st, 'shape', '?')}"
    _need(what, st, "scores", (np.float32,))
    if st.ndim != 2 or not st.flags.writeable:
        raise ValueError(f"{what}: scores must be a writeable [keys, queries] matrix")
    keys, queries = st.shape
    _need(what, col_sums, "col_sums", (np.float32,))
    if col_sums.shape != (queries,) or not col_sums.flags.writeable or np.may_share_memory(col_sums, st):
        raise ValueError(f"{what}: col_sums must be a writeable float32 array of shape ({queries},) apart "
                         f"from the scores, got {col_sums.shape}")
    if keys and queries:
        _check(lib.osn_attention_exp_t_f32(_pool_ptr(pool), out_ptr(st, "float *"), out_ptr(col_sums, "float *"),
                                           keys, queries, float(scale)), what)
    return st


# ---- fused GroupNorm (+SiLU) ----
# Wrapper of native/osn_k_norm.h osn_group_norm_act_f32: group normalisation of an NCHW or
# channels-last buffer, with an optional SiLU in the same output pass.

def group_norm_act_f32(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, groups: int, epsilon: float,
                       silu: bool = False, channels_last: bool = False, out: np.ndarray | None = None, *,
                       pool: ThreadPool | None = None) -> np.ndarray:
    """GroupNorm (+ SiLU) of a C-contiguous float32 buffer: x is [N, C, *spatial], or with
    ``channels_last`` the [N, *spatial, C] buffer of a channels-last activation; the result has
    x's shape and layout. Statistics per (n, group of C/groups consecutive channels); scale and
    bias are per channel [C]. ``out`` may be x itself (in place)."""
    what = f"GroupNorm X {getattr(x, 'shape', '?')} groups={groups} channels_last={channels_last}"
    _need(what, x, "X", (np.float32,))
    if x.ndim < 2:
        raise ValueError(f"{what}: X must have rank >= 2")
    c = x.shape[-1] if channels_last else x.shape[1]
    if groups < 1 or c % groups:
        raise ValueError(f"{what}: {c} channels are not divisible into {groups} groups")
    for name, v in (("scale", scale), ("bias", bias)):
        _need(what, v, name, (np.float32,))
        if v.shape != (c,):
            raise ValueError(f"{what}: {name} must have shape ({c},), got {v.shape}")
    out = _out_like(what, out, x.shape, np.float32, x, may_alias=True)
    n = x.shape[0]
    spatial = x.size // (n * c) if x.size else 0
    layout = lib.OSN_LAYOUT_NHWC if channels_last else lib.OSN_LAYOUT_NCHW
    _check(lib.osn_group_norm_act_f32(_pool_ptr(pool), out_ptr(out, "float *"), ptr(x, "float *"),
                                      ptr(scale, "float *"), ptr(bias, "float *"), n, groups, c // groups,
                                      spatial, layout, 1 if silu else 0, float(epsilon)), what)
    return out


# ---- XNNPACK elementwise, pooling, resize ----
# Wrappers of native/osn_xnn_eltwise.h: weightless XNNPACK operators, created, run on the pool
# and deleted in one call. Inputs are C-contiguous arrays (made XNNPACK-readable here: its SIMD
# tails read up to 16 bytes past the end); ``out`` (allocated when None) is C-contiguous and may
# be an input itself (same data, same shape) but must not overlap one otherwise. Layout
# (channels-last, broadcasting views) is the caller's business: ops/native_eltwise.py hands
# these functions the C-contiguous permuted views.
_BINARY_OPS = {"Add": lib.OSN_BINARY_ADD, "Sub": lib.OSN_BINARY_SUB, "Mul": lib.OSN_BINARY_MUL,
               "Div": lib.OSN_BINARY_DIV, "Min": lib.OSN_BINARY_MIN, "Max": lib.OSN_BINARY_MAX}
_UNARY_OPS = {"Sigmoid": lib.OSN_UNARY_SIGMOID, "Clip": lib.OSN_UNARY_CLAMP, "Abs": lib.OSN_UNARY_ABS,
              "Neg": lib.OSN_UNARY_NEG, "Sqrt": lib.OSN_UNARY_SQRT, "Square": lib.OSN_UNARY_SQUARE,
              "Floor": lib.OSN_UNARY_FLOOR, "Ceil": lib.OSN_UNARY_CEIL, "Round": lib.OSN_UNARY_ROUND}
# The float16 kernels of Debian's 2022 XNNPACK (xnnpack.h); everything else is float32 only.
BINARY_F16_OPS = frozenset({"Add", "Mul"})
UNARY_F16_OPS = frozenset({"Clip"})
XNN_MAX_DIMS = 6          # XNN_MAX_TENSOR_DIMS: binary operands of higher rank are rejected
_RESIZE_MODES = {"half_pixel": lib.OSN_RESIZE_HALF_PIXEL, "align_corners": lib.OSN_RESIZE_ALIGN_CORNERS,
                 "asymmetric": lib.OSN_RESIZE_ASYMMETRIC}
_F32 = np.dtype(np.float32)
_F16 = np.dtype(np.float16)


def _xnn_input(what: str, name: str, a, dtypes) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype not in dtypes or not a.flags.c_contiguous:
        desc = f"{a.dtype}{list(a.shape)} contiguous={a.flags.c_contiguous}" if isinstance(a, np.ndarray) else type(a)
        raise ValueError(f"{what}: {name} must be a C-contiguous {'/'.join(str(d) for d in dtypes)} array, "
                         f"got {desc}")
    return a


def _xnn_output(what: str, out, shape, dtype, inputs) -> np.ndarray:
    """``out`` checked (or allocated): exact shape and dtype, C-contiguous, writeable, and either
    disjoint from every input or that input itself."""
    shape = tuple(int(v) for v in shape)
    if out is None:
        return np.empty(shape, dtype)
    if (not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != dtype
            or not out.flags.c_contiguous or not out.flags.writeable):
        desc = f"{out.dtype}{list(out.shape)} strides={out.strides}" if isinstance(out, np.ndarray) else type(out)
        raise ValueError(f"{what}: out must be a writeable C-contiguous {dtype}{list(shape)} array, got {desc}")
    for a in inputs:
        if np.may_share_memory(out, a) and not (a.ctypes.data == out.ctypes.data and a.shape == out.shape):
            raise ValueError(f"{what}: out {list(out.shape)} overlaps input {list(a.shape)} without being it")
    return out


def xnn_binary(op: str, a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None, *,
               pool: ThreadPool | None = None) -> np.ndarray:
    """out = a (op) b with numpy broadcasting; op one of Add, Sub, Mul, Div, Min, Max.
    a and b: C-contiguous float32 (float16 for Add/Mul), rank <= 6 (0-d allowed).
    Unlike numpy, a NaN result comes out as -inf (XNNPACK clamps every output to [-inf, inf]
    with max/min) and min/max may drop a NaN operand: callers keep NaN-producing inputs away."""
    what = f"{op}(XNNPACK) {getattr(a, 'shape', '?')} {getattr(b, 'shape', '?')}"
    if op not in _BINARY_OPS:
        raise ValueError(f"{what}: unknown binary op (expected one of {sorted(_BINARY_OPS)})")
    dtypes = (_F32, _F16) if op in BINARY_F16_OPS else (_F32,)
    a, b = _xnn_input(what, "A", a, dtypes), _xnn_input(what, "B", b, dtypes)
    if a.dtype != b.dtype:
        raise ValueError(f"{what}: A is {a.dtype} and B is {b.dtype}, expected one dtype")
    if max(a.ndim, b.ndim) > XNN_MAX_DIMS:
        raise ValueError(f"{what}: rank above {XNN_MAX_DIMS} (XNN_MAX_TENSOR_DIMS)")
    try:
        shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"{what}: shapes do not broadcast") from None
    out = _xnn_output(what, out, shape, a.dtype, (a, b))
    a, b = xnn_readable(a), xnn_readable(b)   # after the overlap check: it is on the caller's arrays
    if out.size:
        _check(lib.osn_xnn_binary(_pool_ptr(pool), _BINARY_OPS[op], _LINEAR_DTYPES[a.dtype], out_ptr(out), ptr(a),
                                  ptr(b), a.ndim, ffi.new("size_t[]", a.shape) if a.ndim else ffi.NULL,
                                  b.ndim, ffi.new("size_t[]", b.shape) if b.ndim else ffi.NULL), what)
    return out


def xnn_unary(op: str, x: np.ndarray, out: np.ndarray | None = None, *, lo: float = -np.inf,
              hi: float = np.inf, pool: ThreadPool | None = None) -> np.ndarray:
    """out = f(x) elementwise for op in Sigmoid, Clip (bounds lo < hi), Abs, Neg, Sqrt, Square,
    Floor, Ceil, Round (half to even); x C-contiguous float32 (float16 for Clip); out may be x.
    Differences from numpy: denormals are flushed to zero (Ceil/Floor/Sqrt of a denormal give
    0), Clip maps NaN to a bound, Sigmoid gives NaN for 4.29e26 <= |x| <= 2.36e38."""
    what = f"{op}(XNNPACK) {getattr(x, 'shape', '?')}"
    if op not in _UNARY_OPS:
        raise ValueError(f"{what}: unknown unary op (expected one of {sorted(_UNARY_OPS)})")
    x = _xnn_input(what, "X", x, (_F32, _F16) if op in UNARY_F16_OPS else (_F32,))
    lo, hi = float(lo), float(hi)
    if op == "Clip" and not lo < hi:
        raise ValueError(f"{what}: bounds [{lo}, {hi}] must satisfy min < max (XNNPACK clamp)")
    out = _xnn_output(what, out, x.shape, x.dtype, (x,))
    x = xnn_readable(x)   # after the overlap check: it is on the caller's arrays
    if out.size:
        _check(lib.osn_xnn_unary(_pool_ptr(pool), _UNARY_OPS[op], _LINEAR_DTYPES[x.dtype], out_ptr(out), ptr(x),
                                 x.size, lo, hi), what)
    return out


def xnn_softmax_f32(x: np.ndarray, out: np.ndarray | None = None, *, pool: ThreadPool | None = None) -> np.ndarray:
    """XNNPACK's softmax over the last axis of float32 x (rank >= 1). The engine's Softmax uses
    softmax_f32 (our kernel, measured faster: scripts/bench_eltwise.py); this is for comparison."""
    what = f"Softmax(XNNPACK) {getattr(x, 'shape', '?')}"
    x = _xnn_input(what, "X", x, (_F32,))
    if x.ndim < 1:
        raise ValueError(f"{what}: X must have rank >= 1")
    out = _xnn_output(what, out, x.shape, x.dtype, (x,))
    x = xnn_readable(x)   # after the overlap check: it is on the caller's arrays
    if out.size:
        cols = x.shape[-1]
        _check(lib.osn_xnn_softmax_f32(_pool_ptr(pool), out_ptr(out, "float *"), ptr(x, "float *"),
                                       x.size // cols, cols), what)
    return out


def _pool_geometry(what, x, kernel, strides, dilations, pads):
    if x.ndim != 4:
        raise ValueError(f"{what}: X must be [N, H, W, C] NHWC")
    kernel, strides, dilations, pads = ([int(v) for v in t] for t in (kernel, strides, dilations, pads))
    if (len(kernel) != 2 or len(strides) != 2 or len(dilations) != 2 or len(pads) != 4 or min(kernel) < 1
            or min(strides) < 1 or min(dilations) < 1 or min(pads) < 0 or kernel == [1, 1]):
        raise ValueError(f"{what}: kernel {kernel}, strides {strides}, dilations {dilations}, pads {pads}: "
                         f"expected 2 positive (not 1x1), 2 positive, 2 positive, 4 non-negative ints")
    n, h, w, c = x.shape
    oh = (h + pads[0] + pads[2] - dilations[0] * (kernel[0] - 1) - 1) // strides[0] + 1
    ow = (w + pads[1] + pads[3] - dilations[1] * (kernel[1] - 1) - 1) // strides[1] + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"{what}: input {list(x.shape)} is smaller than the (dilated) window")
    return kernel, strides, dilations, pads, (n, oh, ow, c)


def xnn_max_pool2d(x: np.ndarray, kernel, strides=(1, 1), dilations=(1, 1), pads=(0, 0, 0, 0),
                   out: np.ndarray | None = None, *, pool: ThreadPool | None = None) -> np.ndarray:
    """Max pooling of NHWC x [N, H, W, C] (float32/float16); pads in ONNX order [top, left,
    bottom, right]; output [N, OH, OW, C] with floor rounding (ONNX ceil_mode=0). NaN inputs
    may be dropped (numpy's maximum propagates them)."""
    what = f"MaxPool(XNNPACK) {getattr(x, 'shape', '?')} kernel {list(kernel)}"
    x = _xnn_input(what, "X", x, (_F32, _F16))
    k, s, d, p, shape = _pool_geometry(what, x, kernel, strides, dilations, pads)
    out = _xnn_output(what, out, shape, x.dtype, (x,))
    x = xnn_readable(x)   # after the overlap check: it is on the caller's arrays
    if out.size:
        n, h, w, c = x.shape
        _check(lib.osn_xnn_max_pool2d(_pool_ptr(pool), _LINEAR_DTYPES[x.dtype], out_ptr(out), ptr(x), n, h, w, c,
                                      *k, *s, *d, *p), what)
    return out


def xnn_avg_pool2d_f32(x: np.ndarray, kernel, strides=(1, 1), pads=(0, 0, 0, 0),
                       out: np.ndarray | None = None, *, pool: ThreadPool | None = None) -> np.ndarray:
    """Average pooling of float32 NHWC x [N, H, W, C]; padding is not counted in the divisor
    (ONNX count_include_pad=0); pads [top, left, bottom, right]; floor rounding. A NaN
    average comes out as -inf (output clamp)."""
    what = f"AveragePool(XNNPACK) {getattr(x, 'shape', '?')} kernel {list(kernel)}"
    x = _xnn_input(what, "X", x, (_F32,))
    k, s, _, p, shape = _pool_geometry(what, x, kernel, strides, (1, 1), pads)
    out = _xnn_output(what, out, shape, x.dtype, (x,))
    x = xnn_readable(x)   # after the overlap check: it is on the caller's arrays
    if out.size:
        n, h, w, c = x.shape
        _check(lib.osn_xnn_avg_pool2d_f32(_pool_ptr(pool), out_ptr(out, "float *"), ptr(x, "float *"),
                                          n, h, w, c, *k, *s, *p), what)
    return out


def xnn_resize_bilinear2d(x: np.ndarray, out_hw, mode: str = "half_pixel", *, nchw: bool = False,
                          out: np.ndarray | None = None, pool: ThreadPool | None = None) -> np.ndarray:
    """Bilinear resize of the spatial dims of x: NHWC [N, H, W, C] (float32/float16) or, with
    ``nchw``, NCHW [N, C, H, W] (float32, H and W > 1). ``mode``: half_pixel (source
    (y + 0.5) * in/out - 0.5 clamped to the input), align_corners (y * (in-1)/(out-1), out > 1)
    or asymmetric (y * in/out): the ONNX coordinate modes when scale == out/in."""
    what = f"Resize(XNNPACK bilinear {mode}) {getattr(x, 'shape', '?')} -> {list(out_hw)}"
    if mode not in _RESIZE_MODES:
        raise ValueError(f"{what}: unknown mode (expected one of {sorted(_RESIZE_MODES)})")
    x = _xnn_input(what, "X", x, (_F32,) if nchw else (_F32, _F16))
    if x.ndim != 4:
        raise ValueError(f"{what}: X must be [N, C, H, W]" if nchw else f"{what}: X must be [N, H, W, C]")
    oh, ow = (int(v) for v in out_hw)
    n, c, h, w = x.shape if nchw else (x.shape[0], x.shape[3], x.shape[1], x.shape[2])
    if oh < 1 or ow < 1 or (mode == "align_corners" and min(oh, ow) < 2) or (nchw and min(h, w) < 2):
        raise ValueError(f"{what}: unsupported sizes (outputs >= 1, >= 2 for align_corners; "
                         f"NCHW inputs need H, W >= 2)")
    out = _xnn_output(what, out, (n, c, oh, ow) if nchw else (n, oh, ow, c), x.dtype, (x,))
    x = xnn_readable(x)   # after the overlap check: it is on the caller's arrays
    if out.size:
        _check(lib.osn_xnn_resize_bilinear2d(_pool_ptr(pool), _LINEAR_DTYPES[x.dtype], int(nchw),
                                             _RESIZE_MODES[mode], out_ptr(out), ptr(x), n, c, h, w, oh, ow), what)
    return out


# ---- fused activations: SiLU / QuickGELU, GEGLU ----
# Wrappers of native/osn_k_act.h. Inputs are float32 arrays viewable as [rows, cols] matrices
# with contiguous rows spaced evenly (a C-contiguous array, or a column slice of one such as
# the halves of the UNet's GEGLU projection); outputs are C-contiguous of the input's shape.

def row_matrix(what: str, name: str, a) -> tuple[np.ndarray, int, int, int]:
    """(span, rows, cols, row_stride): ``a`` as a [rows, cols] matrix whose rows are
    ``row_stride`` floats apart, and ``span`` the contiguous 1-d view of the memory from its
    first to its last element (what C receives). Raises for any other float32 layout."""
    if not isinstance(a, np.ndarray) or a.dtype != _F32 or a.ndim < 1 or a.size == 0:
        desc = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
        raise ValueError(f"{what}: {name} must be a non-empty float32 array, got {desc}")
    cols = a.shape[-1]
    rows = a.size // cols
    if a.flags.c_contiguous:
        return a.reshape(-1), rows, cols, cols
    try:
        v = np.reshape(a, (rows, cols), copy=False)
    except ValueError:
        v = None
    item = a.itemsize
    if v is not None:
        col_ok = cols == 1 or v.strides[1] == item
        rs = cols if rows == 1 else v.strides[0] // item
        if col_ok and (rows == 1 or (v.strides[0] % item == 0 and rs >= cols)):
            span = np.lib.stride_tricks.as_strided(v, shape=((rows - 1) * rs + cols,), strides=(item,))
            return span, rows, cols, rs
    raise ValueError(f"{what}: {name} {a.shape} strides {a.strides} is not a matrix of evenly spaced "
                     f"contiguous rows")


def silu_f32(x: np.ndarray, alpha: float = 1.0, out: np.ndarray | None = None, *,
             pool: ThreadPool | None = None) -> np.ndarray:
    """out = x * sigmoid(alpha * x) for float32 x (C-contiguous or evenly row-strided; see
    row_matrix); out is C-contiguous of x's shape and may be x itself when x is contiguous."""
    what = f"Silu {getattr(x, 'shape', '?')} alpha={alpha}"
    span, rows, cols, rs = row_matrix(what, "X", x)
    out = _out_like(what, out, x.shape, np.float32, x, may_alias=x.flags.c_contiguous)
    _check(lib.osn_silu_f32(_pool_ptr(pool), out_ptr(out, "float *"), ptr(span, "float *"), rows, cols, rs,
                            float(alpha)), what)
    return out


def gelu_mul_f32(x: np.ndarray, m: np.ndarray, approximate: bool = False, out: np.ndarray | None = None, *,
                 pool: ThreadPool | None = None) -> np.ndarray:
    """out = m * Gelu(x) (erf form, or tanh form when ``approximate``) for float32 x and m of one
    shape (each C-contiguous or evenly row-strided); out is C-contiguous and may be a contiguous
    x or m itself."""
    what = f"GeluMul X {getattr(x, 'shape', '?')} M {getattr(m, 'shape', '?')}"
    xs, rows, cols, xrs = row_matrix(what, "X", x)
    ms, _, _, mrs = row_matrix(what, "M", m)
    if m.shape != x.shape:
        raise ValueError(f"{what}: X and M must have the same shape")
    if out is not None and out.__array_interface__["data"][0] == m.__array_interface__["data"][0]:
        out = _out_like(what, out, x.shape, np.float32, m, may_alias=m.flags.c_contiguous)
        if np.may_share_memory(out, x):
            raise ValueError(f"{what}: out overlaps X")
    else:
        out = _out_like(what, out, x.shape, np.float32, x, may_alias=x.flags.c_contiguous)
        if np.may_share_memory(out, m):
            raise ValueError(f"{what}: out overlaps M")
    _check(lib.osn_gelu_mul_f32(_pool_ptr(pool), out_ptr(out, "float *"), ptr(xs, "float *"), ptr(ms, "float *"),
                                rows, cols, xrs, mrs, 1 if approximate else 0), what)
    return out


# ---- Winograd 3x3 convolution transforms ----
# Wrappers of native/osn_k_winograd.h (used by ops/winograd.py). Activations are float32
# [N, C, H, W]-shaped arrays, either C-contiguous or channels-last (the NCHW view of a
# C-contiguous NHWC buffer); the kernels address them by strides, so neither layout is copied.

def _winograd_tensor(what: str, name: str, a, writeable: bool):
    """(C pointer to element (0,0,0,0), element strides (n, c, h, w)) of an NCHW-shaped float32
    array that is C-contiguous or channels-last."""
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.ndim != 4:
        raise ValueError(f"{what}: {name} must be a 4-D float32 array, got "
                         f"{getattr(a, 'dtype', type(a))} {getattr(a, 'shape', '')}")
    if a.flags.c_contiguous:
        buf = a
    elif a.transpose(0, 2, 3, 1).flags.c_contiguous:
        buf = a.transpose(0, 2, 3, 1)
    else:
        raise ValueError(f"{what}: {name} {a.shape} with strides {a.strides} is neither NCHW nor channels-last")
    if writeable and not a.flags.writeable:
        raise ValueError(f"{what}: {name} is not writeable")
    p = out_ptr(buf, "float *") if writeable else ptr(buf, "float *")
    return p, [s // 4 for s in a.strides]


def winograd_weight_f32(w: np.ndarray, m: int, co_begin: int = 0, co_end: int | None = None,
                        out: np.ndarray | None = None, *, pool: ThreadPool | None = None) -> np.ndarray:
    """U [alpha^2, co_end - co_begin, Cin] = G w[co] G^T for a float32 ONNX Conv weight
    [Cout, Cin, 3, 3] (alpha = m + 2; m = 4: F(4x4,3x3), m = 2: F(2x2,3x3))."""
    what = f"Winograd weight transform F({m}x{m},3x3) {getattr(w, 'shape', '?')}"
    _need(what, w, "W", (np.float32,))
    if m not in (2, 4) or w.ndim != 4 or w.shape[2:] != (3, 3) or 0 in w.shape:
        raise ValueError(f"{what}: expected m in (2, 4) and a non-empty [Cout, Cin, 3, 3] weight")
    cout, cin = w.shape[:2]
    co_end = cout if co_end is None else int(co_end)
    if not 0 <= co_begin < co_end <= cout:
        raise ValueError(f"{what}: output channels [{co_begin}, {co_end}) outside [0, {cout})")
    shape = ((m + 2) ** 2, co_end - co_begin, cin)
    out = _out_like(what, out, shape, np.float32, w, may_alias=False)
    _check(lib.osn_winograd_weight_f32(_pool_ptr(pool), out_ptr(out, "float *"), ptr(w, "float *"), cout, cin,
                                       co_begin, co_end, m), what)
    return out


def _winograd_tiles(what, m, tiles_hw, tile_begin, tile_count, n):
    th, tw = (int(t) for t in tiles_hw)
    if m not in (2, 4) or th < 1 or tw < 1 or tile_begin < 0 or tile_count < 1 or tile_begin + tile_count > n * th * tw:
        raise ValueError(f"{what}: bad tiling m={m} tiles {th}x{tw} chunk [{tile_begin}, +{tile_count}) of "
                         f"{n * th * tw}")
    return th, tw


def winograd_input_f32(x: np.ndarray, pads_tl, tiles_hw, tile_begin: int, tile_count: int, m: int,
                       out: np.ndarray | None = None, *, pool: ThreadPool | None = None) -> np.ndarray:
    """V [alpha^2, tile_count, C] = B^T d B of the input tiles tile_begin .. +tile_count of x
    (NCHW-shaped float32, C-contiguous or channels-last); pads_tl = (top, left) zero padding;
    tiles_hw = tiles per image (ceil(OH / m), ceil(OW / m))."""
    what = f"Winograd input transform F({m}x{m},3x3) X {getattr(x, 'shape', '?')}"
    xp, (sn, sc, sh, sw) = _winograd_tensor(what, "X", x, writeable=False)
    n, c, h, wd = x.shape
    th, tw = _winograd_tiles(what, m, tiles_hw, tile_begin, tile_count, n)
    pt, pl = (int(p) for p in pads_tl)
    if c < 1 or pt < 0 or pl < 0:
        raise ValueError(f"{what}: need C >= 1 and non-negative pads, got pads {pads_tl}")
    out = _out_like(what, out, ((m + 2) ** 2, tile_count, c), np.float32, x, may_alias=False)
    _check(lib.osn_winograd_input_f32(_pool_ptr(pool), out_ptr(out, "float *"), xp, n, c, h, wd, sn, sc, sh, sw,
                                      pt, pl, th, tw, tile_begin, tile_count, m), what)
    return out


def winograd_output_f32(y: np.ndarray, mm: np.ndarray, bias: np.ndarray | None, co_offset: int, tiles_hw,
                        tile_begin: int, tile_count: int, m: int, *, pool: ThreadPool | None = None) -> np.ndarray:
    """Writes A^T mm A (+ bias) of the chunk's tiles into channels co_offset .. +cols of y
    (NCHW-shaped float32, C-contiguous or channels-last); mm [alpha^2, tile_count, cols]."""
    what = f"Winograd output transform F({m}x{m},3x3) Y {getattr(y, 'shape', '?')}"
    yp, (sn, sc, sh, sw) = _winograd_tensor(what, "Y", y, writeable=True)
    n, cout, oh, ow = y.shape
    th, tw = _winograd_tiles(what, m, tiles_hw, tile_begin, tile_count, n)
    _need(what, mm, "M", (np.float32,))
    if mm.ndim != 3 or mm.shape[:2] != ((m + 2) ** 2, tile_count) or mm.shape[2] < 1:
        raise ValueError(f"{what}: M must be [{(m + 2) ** 2}, {tile_count}, cols], got {mm.shape}")
    cols = mm.shape[2]
    if not 0 <= co_offset <= cout - cols or th * m < oh or tw * m < ow:
        raise ValueError(f"{what}: channels [{co_offset}, +{cols}) or tiles {th}x{tw} do not fit Y")
    if bias is not None:
        _need(what, bias, "bias", (np.float32,))
        if bias.shape != (cols,):
            raise ValueError(f"{what}: bias must have shape ({cols},), got {bias.shape}")
    if np.may_share_memory(y, mm):
        raise ValueError(f"{what}: Y overlaps M")
    _check(lib.osn_winograd_output_f32(_pool_ptr(pool), yp, sn, sc, sh, sw, ptr(mm, "float *"),
                                       ffi.NULL if bias is None else ptr(bias, "float *"), cols, co_offset, oh, ow,
                                       th, tw, tile_begin, tile_count, m), what)
    return y


class WinogradGemm(_OwnedOperator):
    """The alpha^2 GEMMs M[e] = V[e] @ U[e]^T of a Winograd convolution on XNNPACK
    fully-connected operators (U[e] packed at creation, the positions spread over ``pool``; u
    may be freed after), run as one parallel pass over the positions e, each GEMM
    single-threaded (osn_k_winograd.h)."""

    def __init__(self, u: np.ndarray, pool: ThreadPool | None = None):
        what = f"Winograd GEMMs (XNNPACK) U {getattr(u, 'shape', '?')}"
        _need(what, u, "U", (np.float32,))
        if u.ndim != 3 or u.shape[0] not in (16, 36) or 0 in u.shape:
            raise ValueError(f"{what}: U must be [16 or 36, Cout, Cin]")
        self.positions, self.cout, self.cin = (int(d) for d in u.shape)
        self._what = what
        h = ffi.new("osn_winograd_gemm **")
        _check(lib.osn_winograd_gemm_create(h, _pool_ptr(pool), ptr(u, "float *"), self.positions, self.cout,
                                            self.cin), what)
        self._op = h[0]

    def run(self, v: np.ndarray, mm: np.ndarray, pool: ThreadPool | None = None) -> np.ndarray:
        """mm [positions, rows, Cout] = the GEMMs of v [positions, rows, Cin]."""
        if self._op is None:
            raise NativeError(f"{self._what}: used after close()")
        _need(self._what, v, "V", (np.float32,))
        _need(self._what, mm, "M", (np.float32,))
        rows = v.shape[1] if v.ndim == 3 else 0
        if (v.shape != (self.positions, rows, self.cin) or mm.shape != (self.positions, rows, self.cout)
                or rows == 0 or not mm.flags.writeable or np.may_share_memory(v, mm)):
            raise ValueError(f"{self._what}: V {v.shape} and M {mm.shape} must be [{self.positions}, rows >= 1, "
                             f"{self.cin}] and a separate writeable [{self.positions}, rows, {self.cout}]")
        v = xnn_readable(v)
        _check(lib.osn_winograd_gemm_run(self._op, _pool_ptr(pool), out_ptr(mm, "float *"), ptr(v, "float *"), rows),
               f"{self._what} V {list(v.shape)}")
        return mm

    def _free(self, handle) -> None:
        lib.osn_winograd_gemm_delete(handle)


# ---- flash attention ----
# Wrapper of native/osn_k_flash.h: softmax(Q·Kᵀ·scale + mask)·V tiled with an online softmax
# (ops/native_attention.py, RunOptions.attention). Inputs are strided views: no copies.

def _flash_view(what: str, name: str, a: np.ndarray, batch: tuple, keep: list):
    """An osn_flash_view of ``a`` broadcast to batch + a.shape[-2:] (element strides; stride 0
    for broadcast axes). The pointer is the address of a's first element (a may be any view);
    ``keep`` holds the cdata alive for the call."""
    b = np.broadcast_to(a, batch + a.shape[-2:])
    if any(s % a.itemsize for s in b.strides):
        raise ValueError(f"{what}: {name} strides {a.strides} are not multiples of its item size")
    st = [s // a.itemsize for s in b.strides]
    offsets = np.zeros(batch, np.intp)                # ptrdiff_t
    for axis, (size, s) in enumerate(zip(batch, st)):
        shape = [1] * len(batch)
        shape[axis] = size
        offsets = offsets + np.arange(size, dtype=np.intp).reshape(shape) * s
    offsets = np.ascontiguousarray(offsets.reshape(-1))
    view = ffi.new("osn_flash_view *")
    view.data = ffi.cast("const void *", a.__array_interface__["data"][0])
    view.head_offsets = ffi.cast("const ptrdiff_t *", ffi.from_buffer(offsets))
    view.row_stride, view.col_stride = st[-2], st[-1]
    keep.extend((offsets, view))
    return view


def flash_attention(q: np.ndarray, kt: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None,
                    scale: float = 1.0, causal: bool = False, *, pool: ThreadPool | None = None) -> np.ndarray:
    """softmax(q·kt·scale + mask)·v, the softmax along the keys, for q [..., M, d], kt [..., d, N],
    v [..., N, dv] (batch dimensions broadcast as numpy matmul), all float32 or all float16
    (computed in float32), any strides; mask broadcastable to [..., M, N] (any float dtype,
    read as float32). causal: key j is seen by query i only if j <= i. Returns a new
    C-contiguous [batch..., M, dv] array of the inputs' dtype."""
    what = f"flash attention q {getattr(q, 'shape', '?')}, kᵀ {getattr(kt, 'shape', '?')}, v {getattr(v, 'shape', '?')}"
    for name, a in (("q", q), ("kᵀ", kt), ("v", v)):
        if not isinstance(a, np.ndarray) or a.dtype not in (np.float32, np.float16) or a.ndim < 2:
            raise ValueError(f"{what}: {name} must be a float32 or float16 array of rank >= 2, got "
                             f"{getattr(a, 'dtype', type(a))} {getattr(a, 'shape', '')}")
    if not q.dtype == kt.dtype == v.dtype:
        raise ValueError(f"{what}: q, kᵀ, v dtypes differ ({q.dtype}, {kt.dtype}, {v.dtype})")
    m, d, n, dv = q.shape[-2], q.shape[-1], kt.shape[-1], v.shape[-1]
    if kt.shape[-2] != d or v.shape[-2] != n:
        raise ValueError(f"{what}: shapes do not chain (q [.., M, d], kᵀ [.., d, N], v [.., N, dv])")
    try:
        batch = np.broadcast_shapes(q.shape[:-2], kt.shape[:-2], v.shape[:-2])
        if mask is not None:
            mask = np.asarray(mask)
            if mask.dtype != np.float32:
                mask = mask.astype(np.float32)
            if mask.ndim < 2:
                mask = mask.reshape((1,) * (2 - mask.ndim) + mask.shape)
            np.broadcast_shapes(mask.shape, batch + (m, n))
            mbatch = np.broadcast_shapes(batch, mask.shape[:-2])
            if mbatch != batch:
                raise ValueError("the mask adds batch dimensions")
    except ValueError as e:
        raise ValueError(f"{what}: shapes do not broadcast ({e})") from None
    out = np.empty(batch + (m, dv), q.dtype)
    heads = int(np.prod(batch, dtype=np.int64))
    if out.size == 0:
        return out
    if n == 0 or d == 0:
        raise ValueError(f"{what}: no keys or empty head size: softmax over nothing")
    keep: list = []
    views = [_flash_view(what, name, a, batch, keep) for name, a in (("q", q), ("kᵀ", kt), ("v", v))]
    mview = ffi.NULL
    if mask is not None:
        mview = _flash_view(what, "mask", np.broadcast_to(mask, mask.shape[:-2] + (m, n)), batch, keep)
    _check(lib.osn_flash_attention(_pool_ptr(pool), out_ptr(out), *views, mview, heads, m, n, d, dv,
                                   float(scale), int(bool(causal)), int(q.dtype == np.float16)), what)
    return out


# ---- int8 (W8A8): XNNPACK qc8 convolution, qs8 add/multiply, conversions, int8 GroupNorm ----
# Wrappers of native/osn_xnn_int8.h. Activations are int8 per tensor (scale, zero point),
# weights int8 per output channel with zero point 0. Every scale is checked here (finite,
# > 0, and inside the range XNNPACK's requantization accepts) so that a bad model raises a
# ValueError naming the op, never an XNNPACK status deep in a run.
_I8 = np.dtype(np.int8)
# XNNPACK refuses a qc8 requantization scale x_scale * w_scale[c] / y_scale >= 256 (and its
# float-to-fixed conversions lose everything below 2^-32); add / multiply accept
# input/output scale ratios in [2^-10, 2^8) and product ratios in [2^-16, 2^8) (measured on
# this build: outside them create returns xnn_status_unsupported_parameter).
QCONV_SCALE_RANGE = (2.0 ** -32, 256.0)
QADD_RATIO_RANGE = (2.0 ** -10, 2.0 ** 8)
QMUL_RATIO_RANGE = (2.0 ** -16, 2.0 ** 8)


def _qparams(what: str, name: str, scale, zero_point) -> tuple[float, int]:
    s = float(scale)
    z = int(zero_point)
    if not (np.isfinite(s) and s > 0):
        raise ValueError(f"{what}: {name} scale must be finite and > 0, got {s}")
    if not -128 <= z <= 127:
        raise ValueError(f"{what}: {name} zero point {z} is not an int8")
    return s, z


def _qclamp(what: str, y_min: int, y_max: int) -> tuple[int, int]:
    lo, hi = int(y_min), int(y_max)
    if not -128 <= lo < hi <= 127:
        raise ValueError(f"{what}: output clamp [{lo}, {hi}] must satisfy -128 <= min < max <= 127")
    return lo, hi


class XnnQConv2d(_OwnedOperator):
    """A created XNNPACK per-channel int8 convolution (qc8) on NHWC int8 activations.

    w: [Cout, Cin/groups, kh, kw] int8 (ONNX OIHW; relaid out here), w_scale: [Cout] float32
    (> 0, zero points 0), bias: [Cout] int32 in units of x_scale * w_scale[c], or None.
    pads: ONNX order [top, left, bottom, right]. ``y_min``/``y_max`` clamp the int8 output
    (a fused ReLU is y_min = y_zero_point). The caller's arrays may be freed after __init__."""

    def __init__(self, w, w_scale, bias=None, *, x_scale, x_zero_point, y_scale, y_zero_point, groups=1,
                 strides=(1, 1), dilations=(1, 1), pads=(0, 0, 0, 0), y_min=-128, y_max=127):
        what = f"QConv(XNNPACK qc8) weight {getattr(w, 'shape', '?')} group={groups}"
        if not isinstance(w, np.ndarray) or w.dtype != _I8 or w.ndim != 4:
            raise ValueError(f"{what}: expected an int8 weight [Cout, Cin/groups, kh, kw], got "
                             f"{getattr(w, 'dtype', type(w))}")
        cout, cig, kh, kw = (int(v) for v in w.shape)
        groups = int(groups)
        if groups < 1 or cout % groups or cout == 0 or cig == 0 or kh == 0 or kw == 0:
            raise ValueError(f"{what}: Cout must be a positive multiple of group and the kernel non-empty")
        w_scale = np.ascontiguousarray(np.broadcast_to(np.asarray(w_scale, np.float32).reshape(-1), (cout,)))
        xs, xz = _qparams(what, "input", x_scale, x_zero_point)
        ys, yz = _qparams(what, "output", y_scale, y_zero_point)
        if not (np.all(np.isfinite(w_scale)) and np.all(w_scale > 0)):
            raise ValueError(f"{what}: weight scales must be finite and > 0")
        req = np.float32(xs) * w_scale / np.float32(ys)
        if not (np.all(req >= QCONV_SCALE_RANGE[0]) and np.all(req < QCONV_SCALE_RANGE[1])):
            raise ValueError(f"{what}: requantization scales x_scale*w_scale/y_scale in [{req.min()}, {req.max()}], "
                             f"XNNPACK accepts [2^-32, 256)")
        if bias is None:
            bias = np.zeros(cout, np.int32)
        bias = np.ascontiguousarray(bias)
        if bias.dtype != np.int32 or bias.shape != (cout,):
            raise ValueError(f"{what}: bias {bias.dtype}{list(bias.shape)}, expected int32[{cout}]")
        lo, hi = _qclamp(what, y_min, y_max)
        strides, dilations, pads = [list(map(int, v)) for v in (strides, dilations, pads)]
        if len(strides) != 2 or len(dilations) != 2 or len(pads) != 4 or min(strides + dilations) < 1 or min(pads) < 0:
            raise ValueError(f"{what}: strides {strides}, dilations {dilations}, pads {pads}: "
                             f"expected 2 positive, 2 positive and 4 non-negative ints")
        ohwi = xnn_readable(np.ascontiguousarray(w.transpose(0, 2, 3, 1)))
        self.cin, self.cout, self.kernel, self.groups = cig * groups, cout, (kh, kw), groups
        self.strides, self.dilations, self.pads = strides, dilations, pads
        self.nbytes = w.nbytes + bias.nbytes + w_scale.nbytes
        self._what = what
        h = ffi.new("osn_qconv2d **")
        _check(lib.osn_qconv2d_create(h, ptr(ohwi, "int8_t *"), ptr(w_scale, "float *"), ptr(bias, "int32_t *"),
                                      groups, self.cin, cout, kh, kw, strides[0], strides[1], dilations[0],
                                      dilations[1], pads[0], pads[1], pads[2], pads[3], xz, xs, yz, ys, lo, hi), what)
        self._op = h[0]

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (dh, dw), p = self.kernel, self.strides, self.dilations, self.pads
        return ((h + p[0] + p[2] - (kh - 1) * dh - 1) // sh + 1, (w + p[1] + p[3] - (kw - 1) * dw - 1) // sw + 1)

    def run(self, x: np.ndarray, y: np.ndarray | None = None, pool=None) -> np.ndarray:
        """y = qconv(x); x: [N, H, W, Cin] int8 NHWC, y: [N, OH, OW, Cout] int8 (allocated when None)."""
        if self._op is None:
            raise NativeError(f"{self._what}: operator used after close()")
        if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[3] != self.cin or x.dtype != _I8:
            raise ValueError(f"{self._what}: input {getattr(x, 'dtype', type(x))}{list(getattr(x, 'shape', ()))}, "
                             f"expected int8[N, H, W, {self.cin}] NHWC")
        n, h, w, _ = x.shape
        oh, ow = self.output_hw(h, w)
        if oh < 1 or ow < 1:
            raise ValueError(f"{self._what}: input {list(x.shape)} is smaller than the (dilated) kernel")
        shape = (n, oh, ow, self.cout)
        if y is None:
            y = np.empty(shape, _I8)
        elif y.shape != shape or y.dtype != _I8 or not y.flags.c_contiguous:
            raise ValueError(f"{self._what}: output {y.dtype}{list(y.shape)}, expected contiguous int8{list(shape)}")
        if y.size == 0:
            return y
        x = xnn_readable(np.ascontiguousarray(x))
        _check(lib.osn_qconv2d_run(self._op, _pool_ptr(pool), out_ptr(y, "int8_t *"), ptr(x, "int8_t *"), n, h, w),
               f"{self._what} input {list(x.shape)}")
        return y

    def _free(self, handle) -> None:
        lib.osn_qconv2d_delete(handle)


_QBINARY_OPS = {"Add": lib.OSN_BINARY_ADD, "Mul": lib.OSN_BINARY_MUL}


def qbinary_supported(op: str, a_scale: float, b_scale: float, y_scale: float) -> bool:
    """Whether XNNPACK's qs8 ``op`` (Add, Mul) accepts these scales (else use the numpy twin)."""
    if op == "Add":
        lo, hi = QADD_RATIO_RANGE
        return all(lo <= s / y_scale < hi for s in (a_scale, b_scale))
    if op == "Mul":
        lo, hi = QMUL_RATIO_RANGE
        return lo <= a_scale * b_scale / y_scale < hi
    return False


def xnn_qbinary(op: str, a: np.ndarray, b: np.ndarray, a_q: tuple, b_q: tuple, y_q: tuple,
                out: np.ndarray | None = None, *, y_min: int = -128, y_max: int = 127,
                pool: ThreadPool | None = None) -> np.ndarray:
    """out = requantize(dq(a) (op) dq(b)), op Add or Mul, numpy broadcasting (rank <= 6).
    a, b: C-contiguous int8; a_q, b_q, y_q: (scale, zero_point) of each tensor. XNNPACK's
    fixed-point arithmetic: within one int8 unit of the float formula (qfused.qbinary_ref)."""
    what = f"Q{op}(XNNPACK qs8) {getattr(a, 'shape', '?')} {getattr(b, 'shape', '?')}"
    if op not in _QBINARY_OPS:
        raise ValueError(f"{what}: unknown op (expected one of {sorted(_QBINARY_OPS)})")
    a, b = _xnn_input(what, "A", a, (_I8,)), _xnn_input(what, "B", b, (_I8,))
    (as_, az), (bs, bz), (ys, yz) = (_qparams(what, n, *q) for n, q in (("A", a_q), ("B", b_q), ("output", y_q)))
    if not qbinary_supported(op, as_, bs, ys):
        raise ValueError(f"{what}: scales A {as_}, B {bs}, output {ys} outside XNNPACK's accepted ratios")
    lo, hi = _qclamp(what, y_min, y_max)
    if max(a.ndim, b.ndim) > XNN_MAX_DIMS:
        raise ValueError(f"{what}: rank above {XNN_MAX_DIMS} (XNN_MAX_TENSOR_DIMS)")
    try:
        shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"{what}: shapes do not broadcast") from None
    out = _xnn_output(what, out, shape, _I8, (a, b))
    a, b = xnn_readable(a), xnn_readable(b)   # after the overlap check: it is on the caller's arrays
    if out.size:
        _check(lib.osn_xnn_qbinary(_pool_ptr(pool), _QBINARY_OPS[op], out_ptr(out, "int8_t *"), ptr(a, "int8_t *"),
                                   ptr(b, "int8_t *"), a.ndim, ffi.new("size_t[]", a.shape) if a.ndim else ffi.NULL,
                                   b.ndim, ffi.new("size_t[]", b.shape) if b.ndim else ffi.NULL,
                                   az, as_, bz, bs, yz, ys, lo, hi), what)
    return out


def xnn_quantize_f32(x: np.ndarray, scale: float, zero_point: int, out: np.ndarray | None = None, *,
                     pool: ThreadPool | None = None) -> np.ndarray:
    """out = saturate(round(x / scale) + zero_point) as int8 (XNNPACK multiplies by 1/scale:
    within one unit of QuantizeLinear at exact ties). x: C-contiguous float32."""
    what = f"QuantizeLinear(XNNPACK) {getattr(x, 'shape', '?')}"
    x = _xnn_input(what, "x", x, (_F32,))
    s, z = _qparams(what, "output", scale, zero_point)
    out = _xnn_output(what, out, x.shape, _I8, ())
    x = xnn_readable(x)   # after the overlap check: it is on the caller's arrays
    if out.size:
        _check(lib.osn_xnn_quantize_f32(_pool_ptr(pool), out_ptr(out, "int8_t *"), ptr(x, "float *"), x.size, s, z),
               what)
    return out


def xnn_dequantize_f32(x: np.ndarray, scale: float, zero_point: int, out: np.ndarray | None = None, *,
                       pool: ThreadPool | None = None) -> np.ndarray:
    """out = (x - zero_point) * scale as float32 (exact). x: C-contiguous int8."""
    what = f"DequantizeLinear(XNNPACK) {getattr(x, 'shape', '?')}"
    x = _xnn_input(what, "x", x, (_I8,))
    s, z = _qparams(what, "input", scale, zero_point)
    out = _xnn_output(what, out, x.shape, _F32, ())
    x = xnn_readable(x)   # after the overlap check: it is on the caller's arrays
    if out.size:
        _check(lib.osn_xnn_dequantize_f32(_pool_ptr(pool), out_ptr(out, "float *"), ptr(x, "int8_t *"), x.size, s, z),
               what)
    return out


def qgroup_norm_act(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, groups: int, epsilon: float,
                    x_q: tuple, y_q: tuple, silu: bool = False, channels_last: bool = False,
                    out: np.ndarray | None = None, *, pool: ThreadPool | None = None) -> np.ndarray:
    """Int8 GroupNorm (+ SiLU) of a C-contiguous int8 buffer: x is [N, C, *spatial], or with
    ``channels_last`` the [N, *spatial, C] buffer of a channels-last activation; the result has
    x's shape and layout. gamma, beta: per channel [C] float32 (fold an InstanceNormalization's
    per-group scale/bias into them). x_q, y_q: (scale, zero_point)."""
    what = f"QGroupNorm X {getattr(x, 'shape', '?')} groups={groups} channels_last={channels_last}"
    _need(what, x, "X", (np.int8,))
    if x.ndim < 2:
        raise ValueError(f"{what}: X must have rank >= 2")
    c = x.shape[-1] if channels_last else x.shape[1]
    if groups < 1 or c % groups:
        raise ValueError(f"{what}: {c} channels are not divisible into {groups} groups")
    if c // groups > 30000:
        raise ValueError(f"{what}: {c // groups} channels per group exceed the kernel's int32 partial sums")
    for name, v in (("gamma", gamma), ("beta", beta)):
        _need(what, v, name, (np.float32,))
        if v.shape != (c,):
            raise ValueError(f"{what}: {name} must have shape ({c},), got {v.shape}")
    if not (np.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"{what}: epsilon must be finite and >= 0, got {epsilon}")
    (xs, xz), (ys, yz) = _qparams(what, "input", *x_q), _qparams(what, "output", *y_q)
    out = _out_like(what, out, x.shape, _I8, x, may_alias=True)
    n = x.shape[0]
    spatial = x.size // (n * c) if x.size else 0
    if x.size:
        _check(lib.osn_qgroup_norm_act(_pool_ptr(pool), out_ptr(out, "int8_t *"), ptr(x, "int8_t *"),
                                       ptr(gamma, "float *"), ptr(beta, "float *"), n, c, spatial,
                                       int(bool(channels_last)), groups, float(epsilon), int(bool(silu)),
                                       xz, xs, yz, ys), what)
    return out


# ---- dequantization (int8/uint8 -> float32, per tensor or per axis) ----
# Wrapper of native/osn_k_quant.h; the numpy twin is ops/quant.py (dequantize).
_Q8 = {np.dtype(np.int8): 0, np.dtype(np.uint8): 1}


def dequantize_8bit_f32(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None = None, axis: int = 0,
                        out: np.ndarray | None = None, *, pool: ThreadPool | None = None) -> np.ndarray:
    """out = (x - zero_point) * scale as float32, for C-contiguous int8/uint8 x; scale (float32)
    and zero_point (x's dtype, or None) are scalars/1-element (per tensor) or 1-D of x.shape[axis]."""
    what = f"DequantizeLinear(native) {getattr(x, 'shape', '?')} axis={axis}"
    _need(what, x, "x", tuple(_Q8))
    scale = np.asarray(scale)
    if scale.dtype != np.float32:
        raise ValueError(f"{what}: scale must be float32, got {scale.dtype}")
    if scale.size == 1 and scale.ndim <= 1:
        outer, channels, inner = 1, 1, x.size
    else:
        if not -x.ndim <= axis < x.ndim:
            raise ValueError(f"{what}: axis {axis} out of range for rank {x.ndim}")
        axis %= x.ndim
        if scale.ndim != 1 or scale.shape[0] != x.shape[axis]:
            raise ValueError(f"{what}: scale of shape {list(scale.shape)}, expected [{x.shape[axis]}]")
        outer = int(np.prod(x.shape[:axis], dtype=np.int64))
        channels = x.shape[axis]
        inner = int(np.prod(x.shape[axis + 1:], dtype=np.int64))
    scale = np.ascontiguousarray(scale, np.float32).reshape(-1)
    zp = ffi.NULL
    keep = None
    if zero_point is not None:
        zero_point = np.asarray(zero_point)
        if zero_point.dtype != x.dtype or zero_point.size != scale.size:
            raise ValueError(f"{what}: zero point {zero_point.dtype}{list(zero_point.shape)} does not match "
                             f"x's dtype {x.dtype} and the scale's {scale.size} element(s)")
        keep = np.ascontiguousarray(zero_point.reshape(-1), np.int32)
        zp = ptr(keep, "int32_t *")
    out = _out_like(what, out, x.shape, np.float32, x, may_alias=False)
    _check(lib.osn_dequantize_8bit_f32(_pool_ptr(pool), out_ptr(out, "float *"), ptr(x), _Q8[x.dtype],
                                       ptr(scale, "float *"), zp, outer, channels, inner), what)
    del keep
    return out


def qgroup_norm_coeffs(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, groups: int, epsilon: float,
                       x_q: tuple, channels_last: bool = False, *,
                       pool: ThreadPool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(a, b), each float32 [N, C]: the int8 GroupNorm of x (as qgroup_norm_act) as a per-channel
    affine of the int8 values, u = (x - x_zp) * a + b, to apply later with qaffine_act_nhwc."""
    what = f"QGroupNorm coefficients X {getattr(x, 'shape', '?')} groups={groups}"
    _need(what, x, "X", (np.int8,))
    if x.ndim < 2 or x.size == 0:
        raise ValueError(f"{what}: X must be a non-empty array of rank >= 2")
    c = x.shape[-1] if channels_last else x.shape[1]
    if groups < 1 or c % groups or c // groups > 30000:
        raise ValueError(f"{what}: {c} channels are not divisible into {groups} groups (of <= 30000)")
    for name, v in (("gamma", gamma), ("beta", beta)):
        _need(what, v, name, (np.float32,))
        if v.shape != (c,):
            raise ValueError(f"{what}: {name} must have shape ({c},), got {v.shape}")
    if not (np.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"{what}: epsilon must be finite and >= 0, got {epsilon}")
    xs, xz = _qparams(what, "input", *x_q)
    n = x.shape[0]
    a, b = np.empty((n, c), np.float32), np.empty((n, c), np.float32)
    _check(lib.osn_qgroup_norm_coeffs(_pool_ptr(pool), out_ptr(a, "float *"), out_ptr(b, "float *"),
                                      ptr(x, "int8_t *"), ptr(gamma, "float *"), ptr(beta, "float *"), n, c,
                                      x.size // (n * c), int(bool(channels_last)), groups, float(epsilon), xz, xs), what)
    return a, b


def qaffine_act_nhwc(x: np.ndarray, a: np.ndarray, b: np.ndarray, x_q: tuple, y_q: tuple, silu: bool = False,
                     out: np.ndarray | None = None, *, pool: ThreadPool | None = None) -> np.ndarray:
    """out[p, k] = Q(act((x[p, k] - x_zp) * a[k] + b[k])) for channels-last pixels x [..., C] int8
    (C-contiguous), a, b float32 [C]; act SiLU or identity. Bit-identical to qgroup_norm_act's
    output pass, so a row band of a GroupNorm can be made on demand."""
    what = f"QAffine X {getattr(x, 'shape', '?')}"
    _need(what, x, "X", (np.int8,))
    if x.ndim < 1 or x.size == 0:
        raise ValueError(f"{what}: X must be a non-empty array")
    c = x.shape[-1]
    for name, v in (("a", a), ("b", b)):
        _need(what, v, name, (np.float32,))
        if v.shape != (c,):
            raise ValueError(f"{what}: {name} must have shape ({c},), got {v.shape}")
    (_, xz), (ys, yz) = _qparams(what, "input", *x_q), _qparams(what, "output", *y_q)   # the input scale is folded into a
    out = _out_like(what, out, x.shape, _I8, x, may_alias=True)
    _check(lib.osn_qaffine_act_nhwc(_pool_ptr(pool), out_ptr(out, "int8_t *"), ptr(x, "int8_t *"), ptr(a, "float *"),
                                    ptr(b, "float *"), x.size // c, c, int(bool(silu)), xz, yz, ys), what)
    return out


def lut_i8(x: np.ndarray, lut: np.ndarray, out: np.ndarray | None = None, *,
           pool: ThreadPool | None = None) -> np.ndarray:
    """out = lut[x] for a C-contiguous int8 x and an int8 table of 256 entries indexed by x's
    byte (lut[v & 0xff] is the image of v). ``out`` may be x."""
    what = f"LUT int8 {getattr(x, 'shape', '?')}"
    _need(what, x, "X", (np.int8,))
    _need(what, lut, "lut", (np.int8,))
    if lut.shape != (256,):
        raise ValueError(f"{what}: lut must have shape (256,), got {lut.shape}")
    out = _out_like(what, out, x.shape, _I8, x, may_alias=True)
    if x.size:
        _check(lib.osn_lut_i8(_pool_ptr(pool), out_ptr(out, "int8_t *"), ptr(x, "int8_t *"), ptr(lut, "int8_t *"),
                              x.size), what)
    return out


# --- CRC-32 of downloaded tensors (HTTP provider; native/osn_crc32.h) -------------------------

def crc32_fast() -> bool:
    """Whether crc32 uses carry-less multiplication on this CPU (else zlib.crc32 is as fast)."""
    return bool(lib.osn_crc32_fast())


def crc32_level() -> int:
    """The widest CRC-32 path this CPU runs: 0 table, 1 PCLMULQDQ, 2 AVX-512 VPCLMULQDQ."""
    return int(lib.osn_crc32_level())


def crc32(data, crc: int = 0, level: int = 2) -> int:
    """zlib.crc32(data, crc) for any C-contiguous bytes-like object (numpy array, memoryview,
    bytes), computed in C without a copy; the numpy-free twin is zlib.crc32. ``level`` caps the
    path taken (see crc32_level; tests compare each with zlib)."""
    view = memoryview(data)
    if not view.c_contiguous:
        raise ValueError("crc32: data must be C-contiguous")
    if not 0 <= int(crc) <= 0xFFFFFFFF:
        raise ValueError(f"crc32: crc must be a 32-bit unsigned value, got {crc}")
    if view.nbytes == 0:
        return int(crc)
    return int(lib.osn_crc32_at(ffi.cast("const uint8_t *", ffi.from_buffer(view.cast("B"), require_writable=False)),
                                view.nbytes, int(crc), int(level)))
