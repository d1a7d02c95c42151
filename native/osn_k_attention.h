/* The softmax step of sliced attention, fused with the score scale and the mask.
 *
 * SlicedAttention (onnxstream_py/ops/native_attention.py) computes one block of query rows
 * at a time: S = Q·Kᵀ by BLAS, then this kernel, then O = P·V by BLAS, then O's rows are
 * divided by the row sums this kernel returns. Leaving P unnormalised saves a pass over the
 * score block (R x N) for one over the output (R x dv, dv = 40..160 << N), and scaling and
 * masking inside the max and exp passes saves two more: the block is read twice and written
 * once instead of numpy's five reads and four writes.
 */
#ifndef OSN_K_ATTENTION_H
#define OSN_K_ATTENTION_H
#include <stddef.h>

#include "osn_core.h"

/* CDEF BEGIN */
/* In place, per row r: t = s[r, :] * scale (+ mask[r, :]); s[r, :] = exp(t - max(t));
 * row_sums[r] = sum of the new s[r, :] (so s[r, :] / row_sums[r] is softmax(t)). */
int osn_attention_exp_f32(
    osn_pool* pool,          /* threads to use (NULL: the calling thread) */
    float* s,                /* [rows, cols] row-major: raw scores in, unnormalised exp out */
    float* row_sums,         /* [rows] output: the row sums of the exps */
    const float* mask,       /* [rows, cols] added after scaling, rows mask_row_stride apart; NULL: none */
    size_t mask_row_stride,  /* elements between mask rows (0: one mask row for every score row) */
    size_t rows,             /* query rows of the block */
    size_t cols,             /* key columns (the softmax axis) */
    float scale);            /* score multiplier (1/divisor for a Div scale) */

/* The same on transposed scores (keys as rows, one query per column), in place, per column c:
 * t = st[:, c] * scale; st[:, c] = exp(t - max(t)); col_sums[c] = sum of the new st[:, c]. */
int osn_attention_exp_t_f32(
    osn_pool* pool,          /* threads to use (NULL: the calling thread) */
    float* st,               /* [keys, queries] row-major: raw scores Kᵀ-major in, unnormalised exp out */
    float* col_sums,         /* [queries] output: the column sums of the exps */
    size_t keys,             /* rows (the softmax axis) */
    size_t queries,          /* columns */
    float scale);            /* score multiplier (1/divisor for a Div scale) */
/* CDEF END */

#endif
