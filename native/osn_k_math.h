/* Our own float32 elementwise and row kernels that XNNPACK lacks: Erf, Gelu, Softmax.
 *
 * Plain C loops over contiguous floats with branchless formulas (every case computed, one
 * selected) so the compiler vectorises them; exp is our own polynomial since libm's expf
 * does not vectorise without -ffast-math. Accuracy: erf within ~2e-7 absolute (the same
 * fit as the numpy reference in onnxstream_py/ops/elementwise.py), exp within ~2 ulp.
 */
#ifndef OSN_K_MATH_H
#define OSN_K_MATH_H
#include <stddef.h>

#include "osn_core.h"

/* CDEF BEGIN */
/* y = erf(x), elementwise (y may alias x). */
int osn_erf_f32(
    osn_pool* pool,       /* threads to use (NULL: the calling thread) */
    float* y,             /* [count] output */
    const float* x,       /* [count] input */
    size_t count);        /* elements */

/* y = x * Phi(x): approximate 0 is 0.5 x (1 + erf(x / sqrt 2)), approximate 1 is
 * 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (ONNX Gelu-20). y may alias x. */
int osn_gelu_f32(
    osn_pool* pool,       /* threads to use (NULL: the calling thread) */
    float* y,             /* [count] output */
    const float* x,       /* [count] input */
    size_t count,         /* elements */
    int approximate);     /* 0: erf form, 1: tanh form */

/* y[r, :] = exp(x[r, :] - max_r) / sum(exp(x[r, :] - max_r)) for each row (y may alias x). */
int osn_softmax_f32(
    osn_pool* pool,       /* threads to use (NULL: the calling thread) */
    float* y,             /* [rows, cols] row-major output */
    const float* x,       /* [rows, cols] row-major input */
    size_t rows,          /* independent rows */
    size_t cols);         /* elements per row (the softmax axis) */
/* CDEF END */

#endif
