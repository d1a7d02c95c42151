/* XNNPACK operators without weights: broadcasting binary elementwise, unary elementwise,
 * softmax, 2-D max/average pooling and 2-D bilinear resize.
 *
 * Each call creates the XNNPACK operator, sets it up, runs it on the given pool and deletes
 * it: these operators hold no packed weights, so there is nothing worth keeping between
 * calls (creation is a malloc and a few parameter checks; the resize and pooling setup builds
 * an indirection buffer that depends on the input size anyway).
 *
 * dtype is OSN_LINEAR_F32 (float) or OSN_LINEAR_F16 (IEEE half as uint16_t), the codes of
 * osn_xnn_linear.h. Debian's 2022 XNNPACK has float16 kernels only for add, multiply, clamp,
 * max pooling and NHWC bilinear resize; every other op with OSN_LINEAR_F16 returns
 * OSN_E_INVALID_ARGUMENT, and float16 returns xnn_status_unsupported_hardware (5) on a CPU
 * without FP16 arithmetic or F16C. XNNPACK may read up to XNN_EXTRA_BYTES (16) past the end
 * of an input (its SIMD tails load whole vectors): the Python wrapper guarantees that these
 * bytes are mapped. Outputs are written exactly (no bytes past the end).
 * Reference: xnnpack.h (Debian 0.0~git20220216) xnn_create_*_nd_f32, *_nc_f32,
 *            *_pooling2d_nhwc_f32, resize_bilinear2d_nhwc_f32 / _nchw_f32 and f16 twins.
 */
#ifndef OSN_XNN_ELTWISE_H
#define OSN_XNN_ELTWISE_H
#include <stddef.h>
#include <stdint.h>

#include "osn_core.h"

/* CDEF BEGIN */
#define OSN_BINARY_ADD 0
#define OSN_BINARY_SUB 1
#define OSN_BINARY_MUL 2
#define OSN_BINARY_DIV 3
#define OSN_BINARY_MIN 4
#define OSN_BINARY_MAX 5

#define OSN_UNARY_SIGMOID 0
#define OSN_UNARY_CLAMP 1      /* uses lo, hi (lo < hi) */
#define OSN_UNARY_ABS 2
#define OSN_UNARY_NEG 3
#define OSN_UNARY_SQRT 4
#define OSN_UNARY_SQUARE 5
#define OSN_UNARY_FLOOR 6
#define OSN_UNARY_CEIL 7
#define OSN_UNARY_ROUND 8      /* half to even (XNNPACK bankers_rounding) */

#define OSN_RESIZE_HALF_PIXEL 0      /* (y + 0.5) * in/out - 0.5, clamped to [0, in - 1] */
#define OSN_RESIZE_ALIGN_CORNERS 1   /* y * (in - 1)/(out - 1); out > 1 */
#define OSN_RESIZE_ASYMMETRIC 2      /* y * in/out (XNNPACK's TensorFlow legacy mode) */

/* y = a (op) b with numpy broadcasting (XNNPACK supports up to 6 dims after its own
 * merging of dims; ranks above 6 return xnn_status_unsupported_parameter). */
int osn_xnn_binary(
    osn_pool* pool,         /* the model's thread pool (NULL: calling thread only) */
    int op,                 /* OSN_BINARY_* */
    int dtype,              /* OSN_LINEAR_F32, or OSN_LINEAR_F16 for ADD and MUL */
    void* y,                /* broadcast(a_shape, b_shape), C order */
    const void* a,          /* a_shape, C order */
    const void* b,          /* b_shape, C order */
    size_t a_ndim, const size_t* a_shape,   /* a_ndim 0: a scalar */
    size_t b_ndim, const size_t* b_shape);

/* y = f(x) elementwise (y may be x itself). */
int osn_xnn_unary(
    osn_pool* pool,         /* the model's thread pool (NULL: calling thread only) */
    int op,                 /* OSN_UNARY_* */
    int dtype,              /* OSN_LINEAR_F32, or OSN_LINEAR_F16 for CLAMP */
    void* y,                /* [count] */
    const void* x,          /* [count] */
    size_t count,           /* elements (> 0) */
    float lo, float hi);    /* CLAMP bounds, ignored otherwise */

/* y[r, :] = softmax(x[r, :]) for each row, float32 (XNNPACK's own; see native.py for why the
 * engine uses osn_softmax_f32 instead). */
int osn_xnn_softmax_f32(
    osn_pool* pool,         /* the model's thread pool (NULL: calling thread only) */
    float* y,               /* [rows, cols] */
    const float* x,         /* [rows, cols] */
    size_t rows, size_t cols);

/* Max pooling over [kh, kw] windows of an NHWC tensor; padding never wins the max. */
int osn_xnn_max_pool2d(
    osn_pool* pool,         /* the model's thread pool (NULL: calling thread only) */
    int dtype,              /* OSN_LINEAR_F32 / OSN_LINEAR_F16 */
    void* y,                /* [n, oh, ow, c] NHWC, oh = (h + pt + pb - dh*(kh-1) - 1)/sh + 1 */
    const void* x,          /* [n, h, w, c] NHWC */
    size_t n, size_t h, size_t w, size_t c,
    uint32_t kh, uint32_t kw, uint32_t stride_h, uint32_t stride_w,
    uint32_t dilation_h, uint32_t dilation_w,
    uint32_t pad_top, uint32_t pad_left, uint32_t pad_bottom, uint32_t pad_right);

/* Average pooling over [kh, kw] windows of an NHWC float32 tensor; padded positions are not
 * counted in the divisor (ONNX count_include_pad=0). */
int osn_xnn_avg_pool2d_f32(
    osn_pool* pool,         /* the model's thread pool (NULL: calling thread only) */
    float* y,               /* [n, oh, ow, c] NHWC, oh = (h + pt + pb - kh)/sh + 1 */
    const float* x,         /* [n, h, w, c] NHWC */
    size_t n, size_t h, size_t w, size_t c,
    uint32_t kh, uint32_t kw, uint32_t stride_h, uint32_t stride_w,
    uint32_t pad_top, uint32_t pad_left, uint32_t pad_bottom, uint32_t pad_right);

/* Bilinear resize of the two spatial dims, NHWC (f32, f16) or NCHW (f32 only). */
int osn_xnn_resize_bilinear2d(
    osn_pool* pool,         /* the model's thread pool (NULL: calling thread only) */
    int dtype,              /* OSN_LINEAR_F32, or OSN_LINEAR_F16 when !nchw */
    int nchw,               /* 0: NHWC tensors, 1: NCHW tensors (needs h > 1 and w > 1) */
    int mode,               /* OSN_RESIZE_* */
    void* y,                /* [n, oh, ow, c] NHWC or [n, c, oh, ow] NCHW */
    const void* x,          /* [n, h, w, c] NHWC or [n, c, h, w] NCHW */
    size_t n, size_t c, size_t h, size_t w, size_t oh, size_t ow);
/* CDEF END */

#endif
