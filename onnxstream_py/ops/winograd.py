"""Winograd convolution F(4x4,3x3) and F(2x2,3x3) for 3x3 stride-1 ungrouped float32 Conv.

Trade-off: F(4x4,3x3) does 36 multiplies per 4x4 output tile and channel pair instead of 144
(F(2x2,3x3): 16 per 2x2 tile instead of 36), paid for with transforms and with accuracy: the
transform matrices amplify rounding (B^T has entries up to 5, A^T up to 8), so F(4x4) loses
about one more decimal digit than a direct convolution (tests/test_winograd.py states the
measured errors; the SD VAE decoder with its 3x3 convolutions on F(4x4) stays at 2.9e-5
max|err|/max|ref| of onnxruntime's output, 2.5e-5 all-direct, bar 1e-3). The transformed weight is (m+2)^2/9 times the ONNX weight (4x for F(4x4),
1.8x for F(2x2)), which the operator cache keeps (PreparedWinograd); without one, the weight
is transformed per block of output channels of at most WEIGHT_BLOCK_BYTES, so a large weight
never exists in full in transformed form (each block re-transforms the input, a few percent).

Per chunk of tiles (scratch bounded by CHUNK_BYTES): the C kernels transform the input tiles
to V [alpha^2, tiles, Cin] (native/osn_k_winograd.c, reading NCHW or channels-last in place),
the alpha^2 GEMMs V[e] @ U[e]^T run into M [alpha^2, tiles, Cout] as one stacked np.matmul
(numpy's BLAS, gemm="blas") or as alpha^2 XNNPACK fully-connected operators, each
single-threaded, spread over the engine's pool in one pass (gemm="xnnpack", the default: one
hand-off per chunk instead of one per GEMM, and no second thread pool; measured 1.3-1.9x
faster than the same operators each parallelised, and far steadier than OpenBLAS under
load), and the output transform writes A^T M A + bias into the output, in the
input's layout. The numpy twin (``*_ref``) spells the same transforms in a few lines.
Reference: Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", arXiv 1509.09308.
"""
from __future__ import annotations

import numpy as np

from .. import native
from ..layout import is_nhwc
from ..weight_ref import WeightRef

VARIANTS = {"f4": 4, "f2": 2}   # variant name -> output tile size m
# Scratch per chunk of tiles (V and M together). 512-channel layers at F(4x4) fit ~56 tiles
# per 8 MiB; BLAS wants a few hundred rows per GEMM (scripts/bench_winograd.py).
CHUNK_BYTES = 16 << 20
# Largest transformed weight block when no PreparedWinograd is given (streamed weights).
WEIGHT_BLOCK_BYTES = 16 << 20


def winograd_matrices(m: int):
    """(B^T [alpha, alpha], G [alpha, 3], A^T [m, alpha]) in float64 for F(m x m, 3 x 3)."""
    if m == 4:
        bt = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
              [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
        g = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
             [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
        at = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
    elif m == 2:
        bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
        g = [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]
        at = [[1, 1, 1, 0], [0, 1, -1, -1]]
    else:
        raise ValueError(f"Winograd: output tile size m must be 4 or 2, got {m}")
    return np.array(bt, np.float64), np.array(g, np.float64), np.array(at, np.float64)


def _variant(variant: str) -> int:
    if variant not in VARIANTS:
        raise ValueError(f"Winograd: variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    return VARIANTS[variant]


def _geometry(x_shape, pads, m):
    """Output size and tiles per image; pads are ONNX 2-D pads [top, left, bottom, right]."""
    n, _, h, w = x_shape
    oh, ow = h + pads[0] + pads[2] - 2, w + pads[1] + pads[3] - 2
    return oh, ow, -(-oh // m), -(-ow // m)


# ---------------------------------------------------------------- numpy twin

def weight_transform_ref(w: np.ndarray, m: int) -> np.ndarray:
    """U [alpha^2, Cout, Cin] = G w G^T (float64 arithmetic, float32 result)."""
    _, g, _ = winograd_matrices(m)
    u = np.einsum("ia,ocab,jb->ijoc", g, w.astype(np.float64), g)
    return u.reshape(-1, *w.shape[:2]).astype(np.float32)


def conv2d_winograd_ref(x: np.ndarray, w: np.ndarray, b, pads, variant: str = "f4") -> np.ndarray:
    """Readable float32 Winograd convolution of NCHW x with [Cout, Cin, 3, 3] w: the same
    transforms and rounding points as the native path (V, U, M in float32)."""
    m = _variant(variant)
    alpha = m + 2
    bt, _, at = winograd_matrices(m)
    bt, at = bt.astype(np.float32), at.astype(np.float32)
    n, cin, h, wd = x.shape
    oh, ow, th, tw = _geometry(x.shape, pads, m)
    # zero-padded input covering every tile's alpha x alpha window
    xp = np.zeros((n, cin, th * m + 2, tw * m + 2), np.float32)
    xp[:, :, pads[0]:pads[0] + h, pads[1]:pads[1] + wd] = x[:, :, :th * m + 2 - pads[0], :tw * m + 2 - pads[1]]
    # d[n, ty, tx, c, a, b]: the input tile of each output tile
    idx_y = (np.arange(th) * m)[:, None] + np.arange(alpha)
    idx_x = (np.arange(tw) * m)[:, None] + np.arange(alpha)
    d = xp[:, :, idx_y[:, :, None, None], idx_x[None, None, :, :]]   # [n, c, ty, a, tx, b]
    d = d.transpose(0, 2, 4, 1, 3, 5)
    v = np.einsum("ia,ntxcab,jb->ijntxc", bt, d, bt).reshape(alpha * alpha, n * th * tw, cin)
    u = weight_transform_ref(w, m)
    mm = np.matmul(v, u.transpose(0, 2, 1))                        # [alpha^2, tiles, Cout]
    mm = mm.reshape(alpha, alpha, n, th, tw, -1)
    y = np.einsum("ia,abntxo,jb->notixj", at, mm, at).reshape(n, -1, th * m, tw * m)[:, :, :oh, :ow]
    if b is not None:
        y = y + b.astype(np.float32)[None, :, None, None]
    return np.ascontiguousarray(y, dtype=np.float32)


# ---------------------------------------------------------------- native path

GEMMS = ("blas", "xnnpack")


class PreparedWinograd:
    """The transformed weight U [alpha^2, Cout, Cin] (and bias) of one Conv: what the operator
    cache keeps across runs. With gemm="xnnpack" it holds XNNPACK's packed copies of U (one
    fully-connected operator per transform position: native.WinogradGemm) instead of U. ``nbytes`` counts the
    weight (U or its packed copies, about the same size) and the bias."""

    def __init__(self, w: np.ndarray, b: np.ndarray | None, variant: str = "f4", pool=None, gemm: str = "xnnpack"):
        if gemm not in GEMMS:
            raise ValueError(f"Winograd: gemm must be one of {GEMMS}, got {gemm!r}")
        self.variant, self.m, self.gemm = variant, _variant(variant), gemm
        w = np.ascontiguousarray(w, dtype=np.float32)
        self.cout, self.cin = w.shape[:2]
        self.dtype = np.dtype(np.float32)
        u = native.winograd_weight_f32(w, self.m, pool=pool)
        self.nbytes = u.nbytes
        self.u = u if gemm == "blas" else None
        self.xnn = native.WinogradGemm(u, pool) if gemm == "xnnpack" else None
        self.bias = None if b is None else np.ascontiguousarray(b, dtype=np.float32)
        self.nbytes += 0 if self.bias is None else self.bias.nbytes
        self.closed = False

    def close(self) -> None:
        if self.xnn is not None:
            self.xnn.close()
        self.u = self.xnn = self.bias = None
        self.closed = True


def _check_args(x, w, b, pads, prepared):
    what = f"Conv(Winograd) X {getattr(x, 'shape', '?')}"
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.dtype != np.float32:
        raise ValueError(f"{what}: X must be a float32 [N, C, H, W] array, got {getattr(x, 'dtype', type(x))}")
    if len(pads) != 4 or any(int(p) < 0 for p in pads):
        raise ValueError(f"{what}: pads must be 4 non-negative ints [top, left, bottom, right], got {pads}")
    if prepared is not None:
        cin, cout = prepared.cin, prepared.cout
        if prepared.closed:
            raise ValueError(f"{what}: the prepared weight was closed")
    else:
        if (not isinstance(w, (np.ndarray, WeightRef)) or len(w.shape) != 4 or tuple(w.shape[2:]) != (3, 3)
                or w.dtype != np.float32):
            raise ValueError(f"{what}: W must be a float32 [Cout, Cin, 3, 3] array, got "
                             f"{getattr(w, 'dtype', type(w))} {getattr(w, 'shape', '')}")
        cout, cin = w.shape[:2]
        if b is not None and (not isinstance(b, np.ndarray) or b.shape != (cout,) or b.dtype != np.float32):
            raise ValueError(f"{what}: B must be float32 [{cout}], got {getattr(b, 'dtype', type(b))} "
                             f"{getattr(b, 'shape', '')}")
    if x.shape[1] != cin or 0 in x.shape or cout == 0:
        raise ValueError(f"{what}: X has {x.shape[1]} channels, the weight expects {cin} (and nothing may be empty)")
    oh, ow = x.shape[2] + pads[0] + pads[2] - 2, x.shape[3] + pads[1] + pads[3] - 2
    if oh < 1 or ow < 1:
        raise ValueError(f"{what}: pads {list(pads)} leave no output for a 3x3 window")
    return cout, cin


def conv2d_winograd(x, w, b, pads, pool=None, variant: str = "f4", prepared: PreparedWinograd | None = None,
                    gemm: str = "xnnpack", chunk_bytes: int = CHUNK_BYTES,
                    weight_block_bytes: int = WEIGHT_BLOCK_BYTES) -> np.ndarray:
    """ONNX Conv with a 3x3 kernel, stride 1, dilation 1, group 1, float32, by Winograd.

    x: [N, Cin, H, W], C-contiguous or channels-last (other strides are copied to NCHW);
    w: [Cout, Cin, 3, 3] (an array, or a WeightRef: streamed, each block of output channels
    read when it is transformed, blocks of at most its max_chunk_bytes transformed), b: [Cout]
    or None (both ignored when ``prepared`` is given: the cached transformed weight, whose
    variant and gemm then apply); pads: [top, left, bottom, right]; gemm: "blas" (numpy's
    stacked matmul) or "xnnpack" (fully-connected operators on ``pool``). Returns [N, Cout,
    OH, OW] in x's layout (channels-last output is the NCHW view of an XNNPACK-readable NHWC
    buffer).
    """
    if prepared is not None:
        m, gemm = prepared.m, prepared.gemm
    else:
        m = _variant(variant)
        if gemm not in GEMMS:
            raise ValueError(f"Winograd: gemm must be one of {GEMMS}, got {gemm!r}")
    pads = [int(p) for p in pads]
    cout, cin = _check_args(x, w, b, pads, prepared)
    if not (x.flags.c_contiguous or is_nhwc(x)):
        x = np.ascontiguousarray(x)
    alpha2 = (m + 2) ** 2
    n = x.shape[0]
    oh, ow, th, tw = _geometry(x.shape, pads, m)
    if is_nhwc(x):
        y = native.xnn_empty((n, oh, ow, cout), np.float32).transpose(0, 3, 1, 2)
    else:
        y = np.empty((n, cout, oh, ow), np.float32)
    # output-channel blocks: the whole prepared weight, or blocks transformed on the fly
    if prepared is not None:
        blocks = [(0, cout)]
    else:
        if isinstance(w, WeightRef):   # raw + transformed + packed block within ~2.25 chunks
            weight_block_bytes = min(weight_block_bytes, w.max_chunk_bytes)
        step = max(1, min(cout, weight_block_bytes // (alpha2 * cin * 4)))
        blocks = [(c0, min(cout, c0 + step)) for c0 in range(0, cout, step)]
    cols_max = max(c1 - c0 for c0, c1 in blocks)
    total = n * th * tw
    chunk = max(1, min(total, chunk_bytes // (alpha2 * (cin + cols_max) * 4)))
    chunk = -(-total // -(-total // chunk))   # equal chunks: no short last one re-reading all of U
    v_buf = native.xnn_empty((alpha2 * chunk * cin,), np.float32)   # XNNPACK may read past a GEMM's rows
    m_buf = np.empty(alpha2 * chunk * cols_max, np.float32)
    for c0, c1 in blocks:
        xnn = None
        if prepared is not None:
            u, bias, xnn = prepared.u, prepared.bias, prepared.xnn
        else:
            if isinstance(w, WeightRef):
                u = native.winograd_weight_f32(np.ascontiguousarray(w.rows(c0, c1)), m, pool=pool)
            else:
                u = native.winograd_weight_f32(np.ascontiguousarray(w), m, c0, c1, pool=pool)
            bias = None if b is None else np.ascontiguousarray(b[c0:c1])
            if gemm == "xnnpack":
                xnn, u = native.WinogradGemm(u, pool), None
        try:
            ut = None if u is None else u.transpose(0, 2, 1)      # [alpha^2, Cin, cols]
            for t0 in range(0, total, chunk):
                tc = min(chunk, total - t0)
                v = native.winograd_input_f32(x, (pads[0], pads[1]), (th, tw), t0, tc, m,
                                              out=v_buf[:alpha2 * tc * cin].reshape(alpha2, tc, cin), pool=pool)
                mm = m_buf[:alpha2 * tc * (c1 - c0)].reshape(alpha2, tc, c1 - c0)
                if xnn is not None:
                    xnn.run(v, mm, pool)
                else:
                    np.matmul(v, ut, out=mm)
                native.winograd_output_f32(y, mm, bias, c0, (th, tw), t0, tc, m, pool=pool)
        finally:
            if prepared is None and xnn is not None:
                xnn.close()
        del u, ut
    return y
