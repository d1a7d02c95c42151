"""Sliced attention: softmax(Q·Kᵀ·scale + mask)·V computed a block of query rows at a time.

The plan replaces the exported pattern MatMul -> [Mul|Div scale] -> [Add mask] ->
Softmax(last axis) -> MatMul with this op, so the full scores tensor (8 heads x 4096 x
4096 floats = 512 MiB in an SD 1.5 UNet at 512x512) never exists: one slice of rows does.
Per row the arithmetic is the unfused graph's, so results match it to rounding.
"""
from __future__ import annotations

import numpy as np

from .registry import op

DOMAIN = "onnxstream"


def rows_per_slice(batch_elems: int, q_rows: int, k_cols: int, itemsize: int, slices: int,
                   slice_bytes: int) -> int:
    """Query rows per slice: from an explicit slice count, or from a byte budget per slice
    (the scores of ``batch_elems`` matrices of ``k_cols`` columns per row)."""
    if slices > 0:
        return max(1, -(-q_rows // slices))
    per_row = max(1, batch_elems * k_cols * itemsize)
    return int(max(1, min(q_rows, slice_bytes // per_row)))


def _softmax_last_inplace(s: np.ndarray) -> None:
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)


@op("SlicedAttention", domain=DOMAIN)
def SlicedAttention(q, kt, v, scale=None, mask=None, *, scale_op="", slices=0, slice_bytes=16 << 20,
                    attention="sliced"):
    """q [..., M, d], kt [..., d, N], v [..., N, dv] -> [..., M, dv] (numpy matmul broadcasting).

    scale: scalar applied to the scores by ``scale_op`` ("mul" or "div"); mask: broadcastable
    to [..., M, N], added after scaling. Reference: ONNX MatMul, Softmax (opset 13), Add.
    Works one (batch, head) matrix and one block of query rows at a time, so every product
    is a plain 2-D GEMM writing a contiguous block of the output. ``attention`` (RunOptions.attention)
    picks the native kernel; this numpy op is always sliced (the flash twin, ops/flash.py, is a
    test reference: its Python loop over 64x64 tiles is far slower than BLAS on row blocks).
    """
    return sliced_attention(q, kt, v, scale, mask, scale_op, slices, slice_bytes, _softmax_last_inplace)


def sliced_attention(q, kt, v, scale, mask, scale_op, slices, slice_bytes, softmax_inplace):
    """The body of SlicedAttention; ``softmax_inplace(s)`` normalises a score block's rows
    in place (numpy here, a C kernel on the native backend)."""
    if q.ndim < 2 or kt.ndim < 2 or v.ndim < 2:
        raise ValueError(f"SlicedAttention: q, kᵀ, v must have rank >= 2, got {q.shape}, {kt.shape}, {v.shape}")
    m, n = q.shape[-2], kt.shape[-1]
    if kt.shape[-2] != q.shape[-1] or v.shape[-2] != n:
        raise ValueError(f"SlicedAttention: shapes q {q.shape}, kᵀ {kt.shape}, v {v.shape} do not chain")
    batch = np.broadcast_shapes(q.shape[:-2], kt.shape[:-2], v.shape[:-2])
    score_dtype = np.result_type(q.dtype, kt.dtype)
    work_dtype = np.dtype(np.float32) if score_dtype == np.float16 else score_dtype
    out = np.empty(batch + (m, v.shape[-1]), dtype=np.result_type(score_dtype, v.dtype))
    step = rows_per_slice(1, m, n, work_dtype.itemsize, slices, slice_bytes)
    qb = np.broadcast_to(q, batch + q.shape[-2:])
    kb = np.broadcast_to(kt, batch + kt.shape[-2:])
    vb = np.broadcast_to(v, batch + v.shape[-2:])
    mb = None if mask is None else np.broadcast_to(mask, batch + np.broadcast_shapes(mask.shape[-2:], (m, n)))
    factor = None
    if scale_op:
        factor = np.asarray(scale, dtype=work_dtype).reshape(())
        if scale_op == "div":
            factor = None if factor == 1 else factor
    for idx in np.ndindex(*batch):
        qi, ki, vi, oi = qb[idx], kb[idx], vb[idx], out[idx]
        mi = None if mb is None else mb[idx]
        for r0 in range(0, m, step):
            r1 = min(m, r0 + step)
            s = np.matmul(qi[r0:r1], ki)
            if s.dtype != work_dtype:
                s = s.astype(work_dtype)
            if scale_op == "mul":
                s *= factor
            elif scale_op == "div" and factor is not None:
                s /= factor
            if mi is not None:
                s += mi[r0:r1] if mi.shape[0] == m else mi
            softmax_inplace(s)
            if s.dtype != score_dtype:
                s = s.astype(score_dtype)
            np.matmul(s, vi, out=oi[r0:r1])
    return out
