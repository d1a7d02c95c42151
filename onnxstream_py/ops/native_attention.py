"""Native SlicedAttention: blocks of query rows spread over the model's threads, each block
done as BLAS GEMM -> C softmax step -> BLAS GEMM -> row division by one thread.
Twin: ops/attention.py SlicedAttention.

Trade-offs, measured on SD 1.5 UNet shapes on 2 cores (scripts/bench_attention.py):
- Parallel over (head, row block) with one Python thread per pool thread, each calling a
  single-threaded BLAS (numpy releases the GIL in matmul, cffi in C calls). A multi-threaded
  BLAS per GEMM plus a pool-parallel softmax synchronises all threads three times a block;
  per-thread blocks run without any barrier. Small problems stay on the calling thread.
- The scale and the mask go into the C max/exp passes (native/osn_k_attention.c), and P
  stays unnormalised: O = (exp(S - max)·V) / rowsum, dividing R x dv outputs instead of
  R x N scores. A score block is written by the first GEMM, read twice (max, exp) and
  written once by the C kernel, and read by the second GEMM (numpy's op: 5 reads, 4 writes).
- With many keys and no mask the block is computed transposed (Sᵀ = K·Qᵀ, softmax down the
  columns, Oᵀ = Vᵀ·Sᵀ): OpenBLAS is faster on these K=d GEMMs with the long side as M.
- Blocks of ~BLOCK_BYTES of scores per thread (128 rows at N = 4096) stay in the L2/L3
  caches between the steps; all threads' blocks together stay within the slice budget
  (slice_bytes, or the explicit slice count), so memory is bounded as in the numpy op.
Numerics differ from the numpy twin only by rounding (the exp polynomial, the division after
the product, 1/divisor for a Div scale): ~1e-6 relative.
Inputs other than float32 (float16 activations) take the twin's path with the C softmax.

RunOptions.attention picks the kernel: "sliced" is the above; "flash" is the C flash kernel
(native/osn_k_flash.c, twin ops/flash.py: tiles of 64 queries x 64 keys with an online softmax,
scratch of one tile set per thread whatever the sequence length, float16 inputs converted
while packing); "auto" takes the measured choice per shape (kernel_choice.py, candidates
"flash" / "sliced") and otherwise the rule of default_attention_kernel, measured on this x86.
"""
from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import kernel_choice, native
from ..threads import blas_threads_limited
from .attention import DOMAIN, rows_per_slice, sliced_attention
from .registry import op

# Scores per thread and block. Measured on 2 threads under load, 8 heads of 4096x4096x40
# (transposed layout): 0.5 MiB 199 ms, 1 MiB 164 ms, 2 MiB 157 ms, 4 MiB 159 ms.
BLOCK_BYTES = 2 << 20
# Keys from which the scores are computed transposed, Sᵀ = K·Qᵀ [keys, rows]: OpenBLAS runs
# these K=d GEMMs faster with the long side as M (QK 15 ms instead of 22 ms per 4096x4096x40
# head on one core), and P·V reads Sᵀ as well. At 1024 keys both layouts are level, at 77
# (cross-attention) the row layout is 1.5x faster.
TRANSPOSED_MIN_KEYS = 2048
# Below this many multiply-adds (all heads, both products) the op runs on the calling thread
# with BLAS' own threads. Measured (8 heads, 2 threads, under load), helper
# threads vs calling thread: 1024x77x80 (101M) 3.2 vs 2.3 ms, 256x77x160 (50M) 1.6 vs 1.0 ms,
# 256x256x160 (168M) 2.1 vs 2.3 ms, 4096x77x40 (202M) 4.4 vs 5.1 ms.
PARALLEL_MIN_MACS = 128 << 20

# The same for the flash kernel, whose helper is the model's pool (no Python threads).
FLASH_PARALLEL_MIN_MACS = 32 << 20

_executors: dict[int, ThreadPoolExecutor] = {}
_executors_lock = threading.Lock()


def _executor(workers: int) -> ThreadPoolExecutor:
    """Process-wide helper threads (the calling thread is one more worker)."""
    with _executors_lock:
        ex = _executors.get(workers)
        if ex is None:
            ex = _executors[workers] = ThreadPoolExecutor(workers, thread_name_prefix="osn-attention")
        return ex


ATTENTION_KERNELS = ("flash", "sliced")


def default_attention_kernel(m: int, n: int, d: int, dv: int, heads: int) -> str:
    """The kernel for a shape without a measurement: flash, for every shape. Measured on the
    2-core AVX-512 EPYC, CPU time of one thread (robust to the machine's load), 8 heads,
    sliced / flash: 4096x4096x40 331/256 ms (1.29x), 4096x77x40 1.32x, 1024x1024x80 1.22x,
    1024x77x80 1.24x, 256x256x160 1.05x, 256x77x160 1.12x, 64x64x160 and 64x77x160 1.03x; the
    UNet's attentions together 1915/1493 ms (1.28x). Flash also needs no score block (its
    scratch is ~60 KiB per thread), so it wins on memory where it ties on time."""
    return "flash"


@op("SlicedAttention", domain=DOMAIN, backend="native")
def SlicedAttention(q, kt, v, scale=None, mask=None, *, scale_op="", slices=0, slice_bytes=16 << 20,
                    attention="sliced", _ctx):
    # attention: RunOptions.attention, which the plan always passes; called without it, the
    # op does what its name says (tests of the sliced paths call it so)
    if attention not in ("auto",) + ATTENTION_KERNELS:
        raise ValueError(f"SlicedAttention: attention must be 'auto', 'flash' or 'sliced', got {attention!r}")
    flash_ok = (q.dtype == kt.dtype == v.dtype and q.dtype in (np.float32, np.float16)
                and min(q.ndim, kt.ndim, v.ndim) >= 2 and 0 not in q.shape + kt.shape + v.shape)
    if attention == "sliced" or not flash_ok:
        return _sliced(q, kt, v, scale, mask, scale_op, slices, slice_bytes, _ctx)
    if attention == "flash":
        return _flash(q, kt, v, scale, mask, scale_op, _ctx)
    m, d, n, dv = q.shape[-2], q.shape[-1], kt.shape[-1], v.shape[-1]
    batch = np.broadcast_shapes(q.shape[:-2], kt.shape[:-2], v.shape[:-2])
    heads = int(np.prod(batch, dtype=np.int64))
    key = ("SlicedAttention", heads, m, n, d, dv, mask is not None, str(q.dtype), max(1, _ctx.pool.threads))
    return kernel_choice.run_chosen(key, {
        "flash": lambda: _flash(q, kt, v, scale, mask, scale_op, _ctx),
        "sliced": lambda: _sliced(q, kt, v, scale, mask, scale_op, slices, slice_bytes, _ctx),
    }, measure=_ctx.measure_kernels, default=default_attention_kernel(m, n, d, dv, heads))


def _factor(scale, scale_op: str) -> float:
    """The score multiplier: 1, the Mul scale, or 1/divisor for a Div scale (rounded in float32)."""
    if not scale_op:
        return 1.0
    factor = float(np.asarray(scale, dtype=np.float32).reshape(()))
    return float(np.float32(1) / np.float32(factor)) if scale_op == "div" else factor


def _flash(q, kt, v, scale, mask, scale_op, _ctx):
    # Small problems stay on the calling thread, as in the sliced path: waking the pool right
    # after a multi-threaded BLAS call (the UNet's MatMuls; the sliced op in a benchmark) can
    # wait for a core OpenBLAS' spinning worker holds. Measured under load, 8 heads: 64x64x160
    # 2.3 ms with the pool after a BLAS call, 0.3 ms inline.
    m, d, n, dv = q.shape[-2], q.shape[-1], kt.shape[-1], v.shape[-1]
    heads = int(np.prod(np.broadcast_shapes(q.shape[:-2], kt.shape[:-2], v.shape[:-2]), dtype=np.int64))
    pool = _ctx.pool if m * n * (d + dv) * heads >= FLASH_PARALLEL_MIN_MACS else None
    return native.flash_attention(q, kt, v, mask, _factor(scale, scale_op), pool=pool)


def _sliced(q, kt, v, scale, mask, scale_op, slices, slice_bytes, _ctx):
    pool = _ctx.pool
    if not (q.dtype == kt.dtype == v.dtype == np.float32) or min(q.ndim, kt.ndim, v.ndim) < 2 \
            or 0 in q.shape or 0 in kt.shape or 0 in v.shape:
        return sliced_attention(q, kt, v, scale, mask, scale_op, slices, slice_bytes, _softmax_on(pool))
    m, n = q.shape[-2], kt.shape[-1]
    if kt.shape[-2] != q.shape[-1] or v.shape[-2] != n:
        raise ValueError(f"SlicedAttention: shapes q {q.shape}, kᵀ {kt.shape}, v {v.shape} do not chain")
    batch = np.broadcast_shapes(q.shape[:-2], kt.shape[:-2], v.shape[:-2])
    qb = np.broadcast_to(q, batch + q.shape[-2:])
    kb = np.broadcast_to(kt, batch + kt.shape[-2:])
    vb = np.broadcast_to(v, batch + v.shape[-2:])
    mb = None
    if mask is not None:
        mb = np.broadcast_to(mask, batch + np.broadcast_shapes(mask.shape[-2:], (m, n)))
    factor = _factor(scale, scale_op)
    out = np.empty(batch + (m, v.shape[-1]), dtype=np.float32)

    heads = list(np.ndindex(*batch))
    threads = max(1, pool.threads)
    rows = block_rows(m, n, threads, slices, slice_bytes)
    blocks = [(h, r0) for h in heads for r0 in range(0, m, rows)]
    workers = min(threads, len(blocks))
    if m * n * (q.shape[-1] + v.shape[-1]) * len(heads) < PARALLEL_MIN_MACS:
        workers = 1
    # The C step runs on the calling thread even without helpers: its share of a small problem
    # is tiny, and waking the pool right after a multi-threaded BLAS call can wait for a core
    # that OpenBLAS' spinning worker holds (seen under load: 1 ms calls taking 128 ms).
    transposed = mb is None and n >= TRANSPOSED_MIN_KEYS
    dv = v.shape[-1]
    nxt = itertools.count()

    def work() -> None:
        s = np.empty((n, rows) if transposed else (rows, n), np.float32)
        sums = np.empty(rows, np.float32)
        ot = np.empty((dv, rows), np.float32) if transposed else None
        while True:
            i = next(nxt)   # atomic under the GIL: each block goes to one worker
            if i >= len(blocks):
                return
            idx, r0 = blocks[i]
            r1 = min(m, r0 + rows)
            sm, ob = sums[:r1 - r0], out[idx][r0:r1]
            if transposed:
                # Sᵀ = K·Qᵀ [n, rows]: OpenBLAS runs K=d GEMMs faster with the long side as M
                sb = s[:, :r1 - r0] if r1 - r0 == rows else np.empty((n, r1 - r0), np.float32)
                np.matmul(kb[idx].T, qb[idx][r0:r1].T, out=sb)
                native.attention_exp_t_f32(sb, sm, factor)
                otb = ot[:, :r1 - r0] if r1 - r0 == rows else np.empty((dv, r1 - r0), np.float32)
                np.matmul(vb[idx].T, sb, out=otb)
                np.divide(otb.T, sm[:, None], out=ob)
            else:
                sb = s[:r1 - r0]
                np.matmul(qb[idx][r0:r1], kb[idx], out=sb)
                native.attention_exp_f32(sb, sm, factor, None if mb is None else _mask_block(mb[idx], r0, r1))
                np.matmul(sb, vb[idx], out=ob)
                ob /= sm[:, None]

    if workers == 1:
        work()
        return out
    with blas_threads_limited(1):
        helpers = [_executor(threads - 1).submit(work) for _ in range(workers - 1)]
        try:
            work()
        finally:
            for f in helpers:
                f.result()
    return out


def block_rows(m: int, n: int, threads: int, slices: int, slice_bytes: int) -> int:
    """Query rows per block: all threads' blocks together within the numpy op's slice (of
    ``slices`` or the ``slice_bytes`` budget), each at most BLOCK_BYTES of scores, spread
    evenly (ceil(m / rows) blocks of nearly equal size)."""
    if slices > 0:
        budget_rows = rows_per_slice(1, m, n, 4, slices, slice_bytes) // threads
    else:
        budget_rows = slice_bytes // (threads * n * 4)
    rows = min(m, max(1, min(budget_rows, BLOCK_BYTES // (n * 4))))
    return -(-m // -(-m // rows))


def _mask_block(mi: np.ndarray, r0: int, r1: int) -> np.ndarray:
    """The mask rows of a block as the C kernel takes them: one shared row when the mask
    is broadcast over rows, else a C-contiguous float32 [r1 - r0, n] (a copy if needed)."""
    if mi.strides[0] == 0:
        mi = mi[:1]
    else:
        mi = mi[r0:r1]
    if mi.dtype != np.float32 or not mi.flags.c_contiguous:
        mi = np.ascontiguousarray(mi, dtype=np.float32)
    return mi


def _softmax_on(pool):
    def softmax_inplace(s: np.ndarray) -> None:
        if s.dtype == np.float32 and s.flags.c_contiguous and s.size:
            native.softmax_f32(s, out=s, pool=pool)
        else:
            from .attention import _softmax_last_inplace
            _softmax_last_inplace(s)
    return softmax_inplace
