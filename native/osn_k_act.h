/* Fused activations in float32 that the plan makes from exported chains: SiLU-family
 * y = x * sigmoid(alpha x) (SiLU alpha = 1, CLIP's QuickGELU alpha = 1.702) and the GEGLU
 * product y = m * gelu(x), each one pass over memory instead of three to five.
 *
 * Inputs are [rows, cols] matrices whose rows may be strided (a row stride larger than
 * cols): the SD UNet's GEGLU halves are column slices of one projection, and reading them
 * in place saves a copy of each. Outputs are contiguous [rows, cols]. Work is split in
 * tiles of rows (or of a long row) per pthreadpool task; each chunk of an input is copied
 * to an L1 buffer first, so the output may alias a contiguous input (in place).
 */
#ifndef OSN_K_ACT_H
#define OSN_K_ACT_H
#include <stddef.h>

#include "osn_core.h"

/* CDEF BEGIN */
/* y = x * sigmoid(alpha * x) = x / (1 + exp(-alpha * x)), elementwise. y may be x itself
 * when x_row_stride == cols; it must not otherwise overlap x. */
int osn_silu_f32(
    osn_pool* pool,              /* threads to use (NULL: the calling thread) */
    float* y,                    /* [rows, cols] contiguous output */
    const float* x,              /* [rows, cols] input, rows x_row_stride floats apart */
    size_t rows,
    size_t cols,
    size_t x_row_stride,         /* >= cols */
    float alpha);                /* 1: SiLU; 1.702: QuickGELU */

/* y = m * gelu(x), elementwise, gelu as osn_gelu_f32 (approximate 0: erf form, 1: tanh
 * form). y may be x or m itself when that input's row stride is cols; it must not
 * otherwise overlap them. */
int osn_gelu_mul_f32(
    osn_pool* pool,              /* threads to use (NULL: the calling thread) */
    float* y,                    /* [rows, cols] contiguous output */
    const float* x,              /* [rows, cols] gelu's input, rows x_row_stride floats apart */
    const float* m,              /* [rows, cols] multiplier, rows m_row_stride floats apart */
    size_t rows,
    size_t cols,
    size_t x_row_stride,         /* >= cols */
    size_t m_row_stride,         /* >= cols */
    int approximate);            /* 0: erf form, 1: tanh form */
/* CDEF END */

#endif
