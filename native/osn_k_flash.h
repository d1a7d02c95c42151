/* Flash attention: softmax(Q·Kᵀ·scale + mask)·V without the score matrix.
 *
 * Per (head, block of 64 query rows) one task walks the keys in blocks of 64:
 * S = Q_blk·Kᵀ_blk, an online softmax (running max and sum per query row; the
 * accumulated output is rescaled by exp(old max - new max) when the max grows), O += P·V_blk,
 * and O / sum at the end. Scratch is one tile set per thread (the packed Q, Kᵀ and V tiles,
 * the score tile and the output accumulator: ~60 KiB at d = 40), whatever the sequence
 * length. Inputs are strided views (any strides, any head offsets), float32 or float16
 * (converted while packing; arithmetic in float32). Reference: Dao et al., FlashAttention
 * (arXiv 2205.14135), Algorithm 1; ONNX MatMul, Softmax (opset 13), Add.
 * Used by onnxstream_py/ops/native_attention.py (RunOptions.attention); numpy twin:
 * onnxstream_py/ops/flash.py.
 */
#ifndef OSN_K_FLASH_H
#define OSN_K_FLASH_H
#include <stddef.h>

#include "osn_core.h"

/* CDEF BEGIN */
/* A strided [rows, cols] matrix per head: element (h, r, c) is at
 * data + head_offsets[h] + r * row_stride + c * col_stride (all in elements, may be 0 for
 * broadcast dimensions or negative). */
typedef struct {
    const void* data;                  /* first element of the underlying buffer's view */
    const ptrdiff_t* head_offsets;     /* [heads] element offset of each head's matrix */
    ptrdiff_t row_stride;              /* elements between rows */
    ptrdiff_t col_stride;              /* elements between columns */
} osn_flash_view;

/* out[h] = softmax(q[h]·kt[h]·scale + mask[h]) · v[h] for every head h, the softmax along the
 * keys; with causal, key j is seen by query i only if j <= i (top-left aligned, as ONNX
 * Attention's is_causal). A query row that sees no finite score gives NaN, as the unfused graph. */
int osn_flash_attention(
    osn_pool* pool,              /* threads to use (NULL: the calling thread) */
    void* out,                   /* [heads, m, dv] C-contiguous output, float16 if f16 else float32 */
    const osn_flash_view* q,     /* [heads] x [m, d] queries */
    const osn_flash_view* kt,    /* [heads] x [d, n] keys, transposed (the exported MatMul operand) */
    const osn_flash_view* v,     /* [heads] x [n, dv] values */
    const osn_flash_view* mask,  /* [heads] x [m, n] float32 additive mask after scaling; NULL: none */
    size_t heads,                /* batch x heads matrices */
    size_t m,                    /* queries */
    size_t n,                    /* keys */
    size_t d,                    /* query / key head size */
    size_t dv,                   /* value head size */
    float scale,                 /* score multiplier (1/divisor for a Div scale) */
    int causal,                  /* nonzero: mask keys after the query (j > i) */
    int f16);                    /* nonzero: q, kt, v and out are float16 (mask stays float32) */
/* CDEF END */

#endif
