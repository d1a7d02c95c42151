"""Convolution ops (Conv, ConvTranspose), N-D, on numpy + BLAS matmul.

Trade-off: speed comes from one BLAS matmul per tile of output rows (im2col); memory stays
bounded because the im2col matrix is built one tile at a time in a reused scratch of about
``CHUNK_BYTES`` and the matmul writes straight into the preallocated output (one output
allocation, no concatenation). Padding is applied per tile to just the input rows that tile
reads, never to a padded copy of the whole input. 1x1 stride-1 convs skip im2col (a single
matmul on views); depthwise convs skip it too and accumulate shifted slices times
per-channel weights into the output in place. float16 activations and/or weights are
computed in float32 tile by tile and written back in the activation's dtype.

Tiles run along the first spatial axis only (whole rows for 2-D, whole planes for 3-D):
for 2-D one output row of im2col (Cin*kh*kw*OW values) must fit the budget, which holds for
every Stable Diffusion UNet/VAE conv (the largest, 256 channels at 512x512, is 4.7 MB).

Reference: https://onnx.ai/onnx/operators/onnx__Conv.html
           https://onnx.ai/onnx/operators/onnx__ConvTranspose.html
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from .registry import op

# Upper bound, in bytes, of each scratch buffer (im2col tile, padded input rows, fp32 output
# tile). Tuned with scripts/bench_ops.py on 2 cores: OpenBLAS pays a per-call threading cost,
# so 8 MiB tiles (matmul N ~ 700 columns for 320-channel 3x3 convs) ran 1.5-3x slower than
# 16 MiB ones; 32 MiB gains a little more but doubles the scratch.
CHUNK_BYTES = 16 << 20
# Upper bound of the float32 copy of a block of output channels of a weight stored in another
# dtype (fp16 weights, fp32 activations). Larger than CHUNK_BYTES because OpenBLAS is slow on
# short, wide blocks (a [182, 23040] @ [23040, 64] block runs at half the speed of the whole).
WEIGHT_BLOCK_BYTES = 32 << 20


# ---------------------------------------------------------------- geometry helpers

def _ints(v, n: int, default: int, what: str, op_name: str) -> list[int]:
    if v is None or len(v) == 0:
        return [default] * n
    v = [int(a) for a in v]
    if len(v) != n:
        raise ValueError(f"{op_name}: {what} has {len(v)} values, expected {n}")
    return v


def resolve_pads(op_name: str, in_spatial, kernel, strides, dilations, pads, auto_pad) -> list[int]:
    """Explicit ONNX pads [begin..., end...] for a sliding window, honouring auto_pad.

    SAME_*: output = ceil(in / stride); the odd padding unit goes at the end (UPPER) or the
    beginning (LOWER). VALID: no padding. Reference: Conv/MaxPool attribute `auto_pad`.
    """
    r = len(in_spatial)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(in_spatial, kernel, strides, dilations):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small = total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else total - small)
            end.append(total - begin[-1])
        return begin + end
    if auto_pad == "VALID":
        return [0] * (2 * r)
    if auto_pad not in ("NOTSET", "", None):
        raise ValueError(f"{op_name}: auto_pad {auto_pad!r} is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID")
    return _ints(pads, 2 * r, 0, "pads", op_name)


def window_output_shape(in_spatial, kernel, strides, pads, dilations, ceil_mode=False) -> list[int]:
    """Output extent of a sliding window per spatial axis (floor, or ceil for pooling's ceil_mode)."""
    r = len(in_spatial)
    out = []
    for i, (size, k, s, d) in enumerate(zip(in_spatial, kernel, strides, dilations)):
        span = size + pads[i] + pads[r + i] - ((k - 1) * d + 1)
        n = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (n - 1) * s >= size + pads[i]:
            n -= 1  # the last window must start inside the input or the begin padding
        out.append(max(n, 0))
    return out


def tap_range(k: int, stride: int, pad: int, dil: int, n_iter: int, n_target: int, lo: int = 0, hi=None):
    """For kernel tap ``k``: the positions i in [lo, hi) of the iterated axis whose target
    position ``i*stride - pad + k*dil`` falls in [0, n_target).

    Returns (iter_slice, target_slice) or None. For Conv/pooling the iterated axis is the
    output and the target the input (a gather); for ConvTranspose it is the reverse (a scatter).
    """
    hi = n_iter if hi is None else hi
    off = k * dil - pad
    i0 = max(lo, -(off // stride))
    i1 = min(hi, (n_target - 1 - off) // stride + 1)
    if i1 <= i0:
        return None
    return slice(i0, i1), slice(i0 * stride + off, (i1 - 1) * stride + off + 1, stride)


def compute_dtype(*dtypes) -> np.dtype:
    """float64 if any operand is float64, else float32 (float16 is computed in float32)."""
    return np.dtype(np.float64) if any(np.dtype(d) == np.float64 for d in dtypes) else np.dtype(np.float32)


class _Scratch:
    """Reusable flat buffers by name, handed out as views of the requested shape."""

    def __init__(self):
        self._bufs: dict[str, np.ndarray] = {}

    def get(self, name: str, shape, dtype) -> np.ndarray:
        n = math.prod(shape)
        dtype = np.dtype(dtype)
        buf = self._bufs.get(name)
        if buf is None or buf.dtype != dtype or buf.size < n:
            buf = self._bufs[name] = np.empty(n, dtype)
        return buf[:n].reshape(shape)


def _flat2(a: np.ndarray) -> np.ndarray:
    """[C, *spatial] -> [C, prod(spatial)] as a view (raises if that would need a copy)."""
    return a.reshape((a.shape[0], -1), copy=False)


# ---------------------------------------------------------------- matmul into the output

def _matmul_into(w2d: np.ndarray, cols: np.ndarray, bias, dst: np.ndarray, scratch: _Scratch):
    """dst[Co, P] = w2d[Co, K] @ cols[K, P] (+ bias[Co, None]) computed in cols' dtype.

    dst may be a strided view of the output; when its dtype differs (fp16 output) each
    block goes through an fp32 scratch. A weight in another dtype is cast block by block.
    """
    cdt = cols.dtype
    co, kdim = w2d.shape
    p = cols.shape[1]
    step = cdt.itemsize
    block = co
    if w2d.dtype != cdt:
        block = min(block, max(1, WEIGHT_BLOCK_BYTES // (kdim * step)))
    if dst.dtype != cdt:
        block = min(block, max(1, CHUNK_BYTES // (p * step)))
    for c0 in range(0, co, block):
        c1 = min(co, c0 + block)
        wb = w2d[c0:c1]
        if wb.dtype != cdt:
            wbuf = scratch.get("w", wb.shape, cdt)
            np.copyto(wbuf, wb)
            wb = wbuf
        direct = dst.dtype == cdt
        d = dst[c0:c1] if direct else scratch.get("y", (c1 - c0, p), cdt)
        np.matmul(wb, cols, out=d)
        if bias is not None:
            d += bias[c0:c1, None]
        if not direct:
            np.copyto(dst[c0:c1], d, casting="unsafe")


# ---------------------------------------------------------------- conv kernels

def _im2col_tile(xg, r0, r1, kernel, strides, pads, dilations, out_sp, cdt, scratch):
    """im2col of output rows [r0, r1) (first spatial axis): [Cin*prod(K), (r1-r0)*prod(O[1:])].

    Only the input rows the tile reads are padded (into a small slab), never the whole input.
    """
    c = xg.shape[0]
    in_sp = xg.shape[1:]
    r = len(in_sp)
    tile_out = (r1 - r0, *out_sp[1:])
    lo = [r0 * strides[0] - pads[0]] + [-pads[i] for i in range(1, r)]
    hi = [lo[i] + (tile_out[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 for i in range(r)]
    if all(a >= 0 for a in lo) and all(b <= n for b, n in zip(hi, in_sp)):
        slab = xg[(slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))]
    else:
        slab = scratch.get("slab", (c, *(b - a for a, b in zip(lo, hi))), cdt)
        slab.fill(0)
        src = tuple(slice(max(a, 0), min(b, n)) for a, b, n in zip(lo, hi, in_sp))
        dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, lo))
        slab[(slice(None),) + dst] = xg[(slice(None),) + src]
    cols = scratch.get("cols", (c, *kernel, *tile_out), cdt)
    for k in itertools.product(*(range(n) for n in kernel)):
        sl = tuple(slice(k[i] * dilations[i], k[i] * dilations[i] + (tile_out[i] - 1) * strides[i] + 1, strides[i])
                   for i in range(r))
        cols[(slice(None),) + k] = slab[(slice(None),) + sl]
    return cols.reshape(c * math.prod(kernel), -1)


def _conv_gemm(x, w, b, strides, pads, dilations, groups, out, cdt, scratch):
    """Grouped conv as, per image and group, tiles of im2col @ weight into the output."""
    n_img, cin = x.shape[:2]
    cout = w.shape[0]
    kernel = w.shape[2:]
    out_sp = out.shape[2:]
    cig, cog = cin // groups, cout // groups
    kdim = cig * math.prod(kernel)
    row_cols = kdim * math.prod(out_sp[1:])
    pointwise = (all(k == 1 for k in kernel) and all(s == 1 for s in strides) and not any(pads)
                 and x.dtype == cdt and x.flags.c_contiguous)
    if pointwise:
        rows = out_sp[0]  # x itself is the im2col matrix: one matmul, no copy
    else:
        rows = max(1, CHUNK_BYTES // (row_cols * cdt.itemsize))
    for n in range(n_img):
        for g in range(groups):
            xg = x[n, g * cig:(g + 1) * cig]
            w2d = w[g * cog:(g + 1) * cog].reshape(cog, kdim)
            bg = None if b is None else b[g * cog:(g + 1) * cog]
            yg = out[n, g * cog:(g + 1) * cog]
            for r0 in range(0, out_sp[0], rows):
                r1 = min(out_sp[0], r0 + rows)
                if pointwise:
                    cols = _flat2(xg[:, r0:r1])
                else:
                    cols = _im2col_tile(xg, r0, r1, kernel, strides, pads, dilations, out_sp, cdt, scratch)
                _matmul_into(w2d, cols, bg, _flat2(yg[:, r0:r1]), scratch)


def _conv_depthwise(x, w, b, strides, pads, dilations, out, cdt, scratch):
    """groups == Cin == Cout: accumulate prod(K) shifted input slices times per-channel
    weights into the output, in channel chunks (no im2col, no padded copy)."""
    n_img, ch = x.shape[:2]
    kernel = w.shape[2:]
    in_sp, out_sp = x.shape[2:], out.shape[2:]
    r = len(in_sp)
    wk = w.reshape(ch, -1).astype(cdt)  # [C, prod(K)]: small
    bias = None if b is None else b.astype(cdt)
    per_ch = math.prod(out_sp)
    cc = max(1, CHUNK_BYTES // (per_ch * cdt.itemsize))
    taps = list(itertools.product(*(range(n) for n in kernel)))
    bshape = (-1,) + (1,) * r
    for n in range(n_img):
        for c0 in range(0, ch, cc):
            c1 = min(ch, c0 + cc)
            dst = out[n, c0:c1]
            acc = dst if dst.dtype == cdt else scratch.get("acc", dst.shape, cdt)
            acc[...] = 0 if bias is None else bias[c0:c1].reshape(bshape)
            for t, k in enumerate(taps):
                ranges = [tap_range(k[i], strides[i], pads[i], dilations[i], out_sp[i], in_sp[i]) for i in range(r)]
                if any(rg is None for rg in ranges):
                    continue
                osl = (slice(None),) + tuple(rg[0] for rg in ranges)
                isl = (slice(c0, c1),) + tuple(rg[1] for rg in ranges)
                src = x[n][isl]
                tmp = scratch.get("tmp", src.shape, cdt)
                np.multiply(src, wk[c0:c1, t].reshape(bshape), out=tmp, dtype=cdt)
                acc[osl] += tmp
            if acc is not dst:
                np.copyto(dst, acc, casting="unsafe")


def conv_nd(x, w, b=None, strides=None, pads=None, dilations=None, groups=1, out=None):
    """Y = conv(x, w) + b for any spatial rank r >= 1: the engine's conv kernel.

    x:  [N, Cin, *S]            activation, float16/32/64; Y has x's dtype
    w:  [Cout, Cin/groups, *K]  weight, any float dtype (cast per block to the compute dtype)
    b:  [Cout] or None
    strides, dilations: r ints (None = 1); pads: 2r ints [begin..., end...] (None = 0)
    out: optional preallocated [N, Cout, *O] array of x's dtype, written and returned; it may
         be a view, e.g. ``y[:, c0:c1]`` of a bigger C-contiguous output (each channel's
         spatial block must be contiguous).
    Weight slicing: ``conv_nd(x, w[c0:c1], b[c0:c1], ..., out=y[:, c0:c1])`` computes output
    channels c0:c1 (groups == 1); with groups > 1 pass whole groups of w, the matching input
    channels of x and the reduced group count.
    """
    r = x.ndim - 2
    if r < 1 or w.ndim != x.ndim:
        raise ValueError(f"Conv: input {x.shape} and weight {w.shape} must both be [N, C, *spatial] of the same rank >= 3")
    strides = _ints(strides, r, 1, "strides", "Conv")
    dilations = _ints(dilations, r, 1, "dilations", "Conv")
    pads = _ints(pads, 2 * r, 0, "pads", "Conv")
    cin, cout = x.shape[1], w.shape[0]
    if groups < 1 or cin % groups or cout % groups or w.shape[1] * groups != cin:
        raise ValueError(f"Conv: input {x.shape}, weight {w.shape}, group={groups}: "
                         f"expected weight [Cout, Cin/group, *K] with Cin, Cout divisible by group")
    if b is not None and b.shape != (cout,):
        raise ValueError(f"Conv: bias {b.shape}, expected ({cout},)")
    out_sp = window_output_shape(x.shape[2:], w.shape[2:], strides, pads, dilations)
    shape = (x.shape[0], cout, *out_sp)
    if out is None:
        out = np.empty(shape, dtype=x.dtype)
    elif out.shape != shape:
        raise ValueError(f"Conv: out {out.shape}, expected {shape}")
    if out.size == 0:
        return out
    cdt = compute_dtype(x.dtype, w.dtype)
    bias = None if b is None else b.astype(cdt, copy=False)
    scratch = _Scratch()
    if groups == cin == cout and groups > 1:
        _conv_depthwise(x, w, bias, strides, pads, dilations, out, cdt, scratch)
    else:
        _conv_gemm(x, w, bias, strides, pads, dilations, groups, out, cdt, scratch)
    return out


@op("Conv", since=1)
def Conv(x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
    if kernel_shape is not None and list(kernel_shape) != list(w.shape[2:]):
        raise ValueError(f"Conv: kernel_shape {list(kernel_shape)} does not match weight {w.shape}")
    r = x.ndim - 2
    strides = _ints(strides, r, 1, "strides", "Conv")
    dilations = _ints(dilations, r, 1, "dilations", "Conv")
    pads = resolve_pads("Conv", x.shape[2:], w.shape[2:], strides, dilations, pads, auto_pad)
    return conv_nd(x, w, b, strides, pads, dilations, int(group))


# ---------------------------------------------------------------- ConvTranspose

def conv_transpose_nd(x, w, b, strides, pads, dilations, groups, out_sp, out=None):
    """Y = conv_transpose(x, w) + b: per image, group and tile of input rows, a matmul
    w^T[Cout_g*prod(K), Cin_g] @ x[Cin_g, P] followed by a strided scatter-add (col2im).

    x: [N, Cin, *S]; w: [Cin, Cout/groups, *K]; b: [Cout] or None; pads 2r ints; out_sp: O.
    fp16 output is accumulated in a float32 buffer of one group's output (a full-size
    temporary for that group: ConvTranspose is absent from the SD graphs, so kept simple).
    """
    n_img, cin = x.shape[:2]
    kernel = w.shape[2:]
    cog = w.shape[1]
    cig = cin // groups
    cout = cog * groups
    in_sp = x.shape[2:]
    r = len(in_sp)
    shape = (n_img, cout, *out_sp)
    if out is None:
        out = np.empty(shape, dtype=x.dtype)
    cdt = compute_dtype(x.dtype, w.dtype)
    scratch = _Scratch()
    nk = math.prod(kernel)
    row_elems = cog * nk * math.prod(in_sp[1:])
    rows = max(1, CHUNK_BYTES // (row_elems * cdt.itemsize))
    taps = list(itertools.product(*(range(n) for n in kernel)))
    for g in range(groups):
        wt = w[g * cig:(g + 1) * cig].reshape(cig, cog * nk).T.astype(cdt, copy=False)  # [Cout_g*K, Cin_g]
        for n in range(n_img):
            dst = out[n, g * cog:(g + 1) * cog]
            acc = dst if dst.dtype == cdt else scratch.get("acc", dst.shape, cdt)
            acc[...] = 0 if b is None else b[g * cog:(g + 1) * cog].astype(cdt).reshape((-1,) + (1,) * r)
            xg = x[n, g * cig:(g + 1) * cig]
            for r0 in range(0, in_sp[0], rows):
                r1 = min(in_sp[0], r0 + rows)
                xt = xg[:, r0:r1]
                if xt.dtype != cdt:
                    xt = xt.astype(cdt)
                cols = scratch.get("cols", (cog * nk, xt[0].size), cdt)
                np.matmul(wt, _flat2(xt), out=cols)
                cols = cols.reshape(cog, nk, r1 - r0, *in_sp[1:])
                for t, k in enumerate(taps):
                    ranges = [tap_range(k[0], strides[0], pads[0], dilations[0], in_sp[0], out_sp[0], r0, r1)]
                    ranges += [tap_range(k[i], strides[i], pads[i], dilations[i], in_sp[i], out_sp[i]) for i in range(1, r)]
                    if any(rg is None for rg in ranges):
                        continue
                    isl = (slice(None), t, slice(ranges[0][0].start - r0, ranges[0][0].stop - r0))
                    isl += tuple(rg[0] for rg in ranges[1:])
                    acc[(slice(None),) + tuple(rg[1] for rg in ranges)] += cols[isl]
            if acc is not dst:
                np.copyto(dst, acc, casting="unsafe")
    return out


@op("ConvTranspose", since=1)
def ConvTranspose(x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
                  output_padding=None, output_shape=None, pads=None, strides=None):
    r = x.ndim - 2
    group = int(group)
    if w.ndim != x.ndim or x.shape[1] != w.shape[0] or x.shape[1] % group:
        raise ValueError(f"ConvTranspose: input {x.shape}, weight {w.shape}, group={group}: "
                         f"expected weight [Cin, Cout/group, *K]")
    if kernel_shape is not None and list(kernel_shape) != list(w.shape[2:]):
        raise ValueError(f"ConvTranspose: kernel_shape {list(kernel_shape)} does not match weight {w.shape}")
    kernel = w.shape[2:]
    in_sp = x.shape[2:]
    strides = _ints(strides, r, 1, "strides", "ConvTranspose")
    dilations = _ints(dilations, r, 1, "dilations", "ConvTranspose")
    opad = _ints(output_padding, r, 0, "output_padding", "ConvTranspose")
    full = [s * (n - 1) + op_ + (k - 1) * d + 1 for s, n, op_, k, d in zip(strides, in_sp, opad, kernel, dilations)]
    if output_shape is not None and len(output_shape) > 0 or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        # Reference: ConvTranspose spec, "total_padding" formula.
        if output_shape is not None and len(output_shape) > 0:
            target = [int(v) for v in output_shape][-r:]
        else:
            target = [n * s for n, s in zip(in_sp, strides)]
        total = [f - t for f, t in zip(full, target)]
        if auto_pad == "SAME_UPPER":
            begin = [t // 2 for t in total]
        else:
            begin = [t - t // 2 for t in total]
        pads = begin + [t - bg for t, bg in zip(total, begin)]
    else:
        pads = resolve_pads("ConvTranspose", in_sp, kernel, strides, dilations, pads,
                            "NOTSET" if auto_pad == "VALID" else auto_pad)
    out_sp = [f - pads[i] - pads[r + i] for i, f in enumerate(full)]
    if b is not None and b.shape != (w.shape[1] * group,):
        raise ValueError(f"ConvTranspose: bias {b.shape}, expected ({w.shape[1] * group},)")
    return conv_transpose_nd(x, w, b, strides, pads, dilations, group, out_sp)
