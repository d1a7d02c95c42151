"""Flash attention, the readable numpy twin of native/osn_k_flash.c.

softmax(Q·Kᵀ·scale + mask)·V computed block by block with an online softmax: per block of
query rows, the keys are visited in blocks; each key block's scores update a running max m
and a running sum l per query row, and the output accumulator is rescaled by exp(m_old -
m_new) whenever the max grows. Only one block of scores exists at a time, whatever the
sequence length (the sliced op, ops/attention.py, holds a block of rows x ALL keys).
Arithmetic in float32 (float16 inputs are widened); the result has the inputs' dtype.
Reference: Dao et al., FlashAttention (arXiv 2205.14135), Algorithm 1; Milakov & Gimelshein,
Online normalizer calculation for softmax (arXiv 1805.02867).
"""
from __future__ import annotations

import numpy as np

BLOCK_Q = 64    # query rows per block (the C kernel's BR)
BLOCK_K = 64    # keys per block (the C kernel's BC)


def flash_attention(q, kt, v, mask=None, scale: float = 1.0, causal: bool = False,
                    block_q: int = BLOCK_Q, block_k: int = BLOCK_K) -> np.ndarray:
    """q [..., M, d], kt [..., d, N], v [..., N, dv] (batch dimensions broadcast as numpy matmul);
    mask broadcastable to [..., M, N], added after scaling; causal: query i sees keys j <= i
    (top-left aligned). A query row with no finite score gives NaN (as softmax of all -inf)."""
    m, d, n, dv = q.shape[-2], q.shape[-1], kt.shape[-1], v.shape[-1]
    if kt.shape[-2] != d or v.shape[-2] != n:
        raise ValueError(f"flash attention: shapes q {q.shape}, kᵀ {kt.shape}, v {v.shape} do not chain")
    batch = np.broadcast_shapes(q.shape[:-2], kt.shape[:-2], v.shape[:-2])
    out_dtype = np.result_type(q.dtype, kt.dtype, v.dtype)
    out = np.empty(batch + (m, dv), out_dtype)
    qb = np.broadcast_to(q, batch + q.shape[-2:])
    kb = np.broadcast_to(kt, batch + kt.shape[-2:])
    vb = np.broadcast_to(v, batch + v.shape[-2:])
    mb = None if mask is None else np.broadcast_to(mask, batch + (m, n))
    f32 = np.float32
    for h in np.ndindex(*batch):
        for r0 in range(0, m, block_q):
            r1 = min(m, r0 + block_q)
            qi = qb[h][r0:r1].astype(f32)
            run_max = np.full(r1 - r0, -np.inf, f32)
            run_sum = np.zeros(r1 - r0, f32)
            acc = np.zeros((r1 - r0, dv), f32)
            kend = min(n, r1) if causal else n
            for c0 in range(0, kend, block_k):
                c1 = min(kend, c0 + block_k)
                s = (qi @ kb[h][:, c0:c1].astype(f32)) * f32(scale)
                if mb is not None:
                    s += mb[h][r0:r1, c0:c1].astype(f32)
                if causal:
                    s[np.arange(c0, c1)[None, :] > np.arange(r0, r1)[:, None]] = -np.inf
                new_max = np.maximum(run_max, s.max(axis=1))
                # rows with nothing finite yet: subtract 0, so their exps and alpha are 0, not NaN
                used = np.where(new_max == -np.inf, f32(0), new_max)
                p = np.exp(s - used[:, None])
                alpha = np.exp(run_max - used)
                run_sum = run_sum * alpha + p.sum(axis=1)
                acc = acc * alpha[:, None] + p @ vb[h][c0:c1].astype(f32)
                run_max = new_max
            with np.errstate(invalid="ignore", divide="ignore"):
                out[h][r0:r1] = acc / run_sum[:, None]
    return out
