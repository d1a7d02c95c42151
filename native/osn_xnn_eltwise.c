/* Weightless XNNPACK operators run in one call: create, setup, run on the pool, delete.
 *
 * The operator tables below map our op codes to XNNPACK's create/setup functions, so each
 * family (binary nd, unary nc) has one body. A NULL entry is a dtype XNNPACK lacks.
 * Reference: xnnpack.h (Debian 0.0~git20220216).
 */
#include <math.h>
#include <stddef.h>

#include <xnnpack.h>

#include "osn_internal.h"
#include "osn_xnn_eltwise.h"
#include "osn_xnn_linear.h"

/* Run a set-up operator, then delete it whatever happened. */
static int run_and_delete(xnn_operator_t op, enum xnn_status st, pthreadpool_t tp) {
    if (st == xnn_status_success) st = xnn_run_operator(op, tp);
    xnn_delete_operator(op);
    return (int)st;
}

/* ---------------------------------------------------------------- binary (nd) */
typedef enum xnn_status (*binary_create_minmax)(float, float, uint32_t, xnn_operator_t*);
typedef enum xnn_status (*binary_create_plain)(uint32_t, xnn_operator_t*);
typedef enum xnn_status (*binary_setup)(xnn_operator_t, size_t, const size_t*, size_t, const size_t*,
                                        const void*, const void*, void*, pthreadpool_t);

struct binary_entry {
    binary_create_minmax create_minmax;   /* add/sub/mul/div take an output range */
    binary_create_plain create_plain;     /* min/max do not */
    binary_setup setup;
};

/* XNNPACK's f32 setups take float pointers; the casts only change the pointee type. */
#define SETUP(fn) ((binary_setup)(void (*)(void))(fn))

static const struct binary_entry BINARY_F32[] = {
    [OSN_BINARY_ADD] = {xnn_create_add_nd_f32, NULL, SETUP(xnn_setup_add_nd_f32)},
    [OSN_BINARY_SUB] = {xnn_create_subtract_nd_f32, NULL, SETUP(xnn_setup_subtract_nd_f32)},
    [OSN_BINARY_MUL] = {xnn_create_multiply_nd_f32, NULL, SETUP(xnn_setup_multiply_nd_f32)},
    [OSN_BINARY_DIV] = {xnn_create_divide_nd_f32, NULL, SETUP(xnn_setup_divide_nd_f32)},
    [OSN_BINARY_MIN] = {NULL, xnn_create_minimum_nd_f32, SETUP(xnn_setup_minimum_nd_f32)},
    [OSN_BINARY_MAX] = {NULL, xnn_create_maximum_nd_f32, SETUP(xnn_setup_maximum_nd_f32)},
};

static const struct binary_entry BINARY_F16[] = {
    [OSN_BINARY_ADD] = {xnn_create_add_nd_f16, NULL, xnn_setup_add_nd_f16},
    [OSN_BINARY_MUL] = {xnn_create_multiply_nd_f16, NULL, xnn_setup_multiply_nd_f16},
    [OSN_BINARY_MAX] = {NULL, NULL, NULL},   /* sizes the table to every op code */
};

int osn_xnn_binary(osn_pool* pool, int op, int dtype, void* y, const void* a, const void* b, size_t a_ndim,
                   const size_t* a_shape, size_t b_ndim, const size_t* b_shape) {
    if (op < 0 || op > OSN_BINARY_MAX || y == NULL || a == NULL || b == NULL ||
        (a_ndim && a_shape == NULL) || (b_ndim && b_shape == NULL))
        return OSN_E_INVALID_ARGUMENT;
    const struct binary_entry* e = dtype == OSN_LINEAR_F32 ? &BINARY_F32[op]
                                 : dtype == OSN_LINEAR_F16 ? &BINARY_F16[op] : NULL;
    if (e == NULL || e->setup == NULL) return OSN_E_INVALID_ARGUMENT;
    xnn_operator_t xop = NULL;
    enum xnn_status st = e->create_minmax ? e->create_minmax(-INFINITY, INFINITY, OSN_XNN_FLAGS, &xop)
                                          : e->create_plain(OSN_XNN_FLAGS, &xop);
    if (st != xnn_status_success) return (int)st;
    pthreadpool_t tp = osn_pool_handle(pool);
    return run_and_delete(xop, e->setup(xop, a_ndim, a_shape, b_ndim, b_shape, a, b, y, tp), tp);
}

/* ---------------------------------------------------------------- unary (nc) */
typedef enum xnn_status (*unary_create)(size_t, size_t, size_t, uint32_t, xnn_operator_t*);
typedef enum xnn_status (*unary_setup)(xnn_operator_t, size_t, const void*, void*, pthreadpool_t);
#define USETUP(fn) ((unary_setup)(void (*)(void))(fn))

struct unary_entry {
    unary_create create;
    unary_setup setup;
};

static const struct unary_entry UNARY_F32[] = {
    [OSN_UNARY_SIGMOID] = {xnn_create_sigmoid_nc_f32, USETUP(xnn_setup_sigmoid_nc_f32)},
    [OSN_UNARY_CLAMP] = {NULL, USETUP(xnn_setup_clamp_nc_f32)},   /* created with its bounds below */
    [OSN_UNARY_ABS] = {xnn_create_abs_nc_f32, USETUP(xnn_setup_abs_nc_f32)},
    [OSN_UNARY_NEG] = {xnn_create_negate_nc_f32, USETUP(xnn_setup_negate_nc_f32)},
    [OSN_UNARY_SQRT] = {xnn_create_square_root_nc_f32, USETUP(xnn_setup_square_root_nc_f32)},
    [OSN_UNARY_SQUARE] = {xnn_create_square_nc_f32, USETUP(xnn_setup_square_nc_f32)},
    [OSN_UNARY_FLOOR] = {xnn_create_floor_nc_f32, USETUP(xnn_setup_floor_nc_f32)},
    [OSN_UNARY_CEIL] = {xnn_create_ceiling_nc_f32, USETUP(xnn_setup_ceiling_nc_f32)},
    [OSN_UNARY_ROUND] = {xnn_create_bankers_rounding_nc_f32, USETUP(xnn_setup_bankers_rounding_nc_f32)},
};

int osn_xnn_unary(osn_pool* pool, int op, int dtype, void* y, const void* x, size_t count, float lo, float hi) {
    if (op < 0 || op > OSN_UNARY_ROUND || y == NULL || x == NULL || count == 0) return OSN_E_INVALID_ARGUMENT;
    if (dtype != OSN_LINEAR_F32 && !(dtype == OSN_LINEAR_F16 && op == OSN_UNARY_CLAMP))
        return OSN_E_INVALID_ARGUMENT;
    if (op == OSN_UNARY_CLAMP && !(lo < hi)) return OSN_E_INVALID_ARGUMENT;   /* also rejects NaN bounds */
    xnn_operator_t xop = NULL;
    enum xnn_status st;
    unary_setup setup;
    /* One row of `count` channels: XNNPACK runs a contiguous nc tensor as one flat range,
     * split in blocks across the pool. */
    if (op == OSN_UNARY_CLAMP && dtype == OSN_LINEAR_F16) {
        st = xnn_create_clamp_nc_f16(count, count, count, lo, hi, OSN_XNN_FLAGS, &xop);
        setup = xnn_setup_clamp_nc_f16;
    } else if (op == OSN_UNARY_CLAMP) {
        st = xnn_create_clamp_nc_f32(count, count, count, lo, hi, OSN_XNN_FLAGS, &xop);
        setup = UNARY_F32[op].setup;
    } else {
        st = UNARY_F32[op].create(count, count, count, OSN_XNN_FLAGS, &xop);
        setup = UNARY_F32[op].setup;
    }
    if (st != xnn_status_success) return (int)st;
    pthreadpool_t tp = osn_pool_handle(pool);
    return run_and_delete(xop, setup(xop, 1, x, y, tp), tp);
}

/* ---------------------------------------------------------------- softmax */
int osn_xnn_softmax_f32(osn_pool* pool, float* y, const float* x, size_t rows, size_t cols) {
    if (y == NULL || x == NULL || rows == 0 || cols == 0) return OSN_E_INVALID_ARGUMENT;
    xnn_operator_t xop = NULL;
    enum xnn_status st = xnn_create_softmax_nc_f32(cols, cols, cols, OSN_XNN_FLAGS, &xop);
    if (st != xnn_status_success) return (int)st;
    pthreadpool_t tp = osn_pool_handle(pool);
    return run_and_delete(xop, xnn_setup_softmax_nc_f32(xop, rows, x, y, tp), tp);
}

/* ---------------------------------------------------------------- pooling (nhwc) */
int osn_xnn_max_pool2d(osn_pool* pool, int dtype, void* y, const void* x, size_t n, size_t h, size_t w, size_t c,
                       uint32_t kh, uint32_t kw, uint32_t stride_h, uint32_t stride_w, uint32_t dilation_h,
                       uint32_t dilation_w, uint32_t pad_top, uint32_t pad_left, uint32_t pad_bottom,
                       uint32_t pad_right) {
    if (y == NULL || x == NULL || c == 0 || (dtype != OSN_LINEAR_F32 && dtype != OSN_LINEAR_F16))
        return OSN_E_INVALID_ARGUMENT;
    xnn_operator_t xop = NULL;
    enum xnn_status st = dtype == OSN_LINEAR_F32
        ? xnn_create_max_pooling2d_nhwc_f32(pad_top, pad_right, pad_bottom, pad_left, kh, kw, stride_h, stride_w,
                                            dilation_h, dilation_w, c, c, c, -INFINITY, INFINITY, OSN_XNN_FLAGS, &xop)
        : xnn_create_max_pooling2d_nhwc_f16(pad_top, pad_right, pad_bottom, pad_left, kh, kw, stride_h, stride_w,
                                            dilation_h, dilation_w, c, c, c, -INFINITY, INFINITY, OSN_XNN_FLAGS, &xop);
    if (st != xnn_status_success) return (int)st;
    pthreadpool_t tp = osn_pool_handle(pool);
    st = dtype == OSN_LINEAR_F32 ? xnn_setup_max_pooling2d_nhwc_f32(xop, n, h, w, x, y, tp)
                                 : xnn_setup_max_pooling2d_nhwc_f16(xop, n, h, w, x, y, tp);
    return run_and_delete(xop, st, tp);
}

int osn_xnn_avg_pool2d_f32(osn_pool* pool, float* y, const float* x, size_t n, size_t h, size_t w, size_t c,
                           uint32_t kh, uint32_t kw, uint32_t stride_h, uint32_t stride_w, uint32_t pad_top,
                           uint32_t pad_left, uint32_t pad_bottom, uint32_t pad_right) {
    if (y == NULL || x == NULL || c == 0) return OSN_E_INVALID_ARGUMENT;
    xnn_operator_t xop = NULL;
    enum xnn_status st = xnn_create_average_pooling2d_nhwc_f32(pad_top, pad_right, pad_bottom, pad_left, kh, kw,
                                                               stride_h, stride_w, c, c, c, -INFINITY, INFINITY,
                                                               OSN_XNN_FLAGS, &xop);
    if (st != xnn_status_success) return (int)st;
    pthreadpool_t tp = osn_pool_handle(pool);
    return run_and_delete(xop, xnn_setup_average_pooling2d_nhwc_f32(xop, n, h, w, x, y, tp), tp);
}

/* ---------------------------------------------------------------- bilinear resize */
int osn_xnn_resize_bilinear2d(osn_pool* pool, int dtype, int nchw, int mode, void* y, const void* x, size_t n,
                              size_t c, size_t h, size_t w, size_t oh, size_t ow) {
    if (y == NULL || x == NULL || c == 0 || h == 0 || w == 0 || oh == 0 || ow == 0)
        return OSN_E_INVALID_ARGUMENT;
    if (dtype != OSN_LINEAR_F32 && !(dtype == OSN_LINEAR_F16 && !nchw)) return OSN_E_INVALID_ARGUMENT;
    uint32_t flags = OSN_XNN_FLAGS;
    if (mode == OSN_RESIZE_ALIGN_CORNERS) {
        if (oh < 2 || ow < 2) return OSN_E_INVALID_ARGUMENT;   /* (in-1)/(out-1) is undefined */
        flags |= XNN_FLAG_ALIGN_CORNERS;
    } else if (mode == OSN_RESIZE_ASYMMETRIC) {
        flags |= XNN_FLAG_TENSORFLOW_LEGACY_MODE;
    } else if (mode != OSN_RESIZE_HALF_PIXEL) {
        return OSN_E_INVALID_ARGUMENT;
    }
    xnn_operator_t xop = NULL;
    enum xnn_status st;
    pthreadpool_t tp = osn_pool_handle(pool);
    if (nchw) {
        if (h < 2 || w < 2) return OSN_E_INVALID_ARGUMENT;
        st = xnn_create_resize_bilinear2d_nchw_f32(c, c, c, flags, &xop);
        if (st != xnn_status_success) return (int)st;
        st = xnn_setup_resize_bilinear2d_nchw_f32(xop, n, h, w, oh, ow, x, y, tp);
    } else if (dtype == OSN_LINEAR_F32) {
        st = xnn_create_resize_bilinear2d_nhwc_f32(c, c, c, flags, &xop);
        if (st != xnn_status_success) return (int)st;
        st = xnn_setup_resize_bilinear2d_nhwc_f32(xop, n, h, w, oh, ow, x, y, tp);
    } else {
        st = xnn_create_resize_bilinear2d_nhwc_f16(c, c, c, flags, &xop);
        if (st != xnn_status_success) return (int)st;
        st = xnn_setup_resize_bilinear2d_nhwc_f16(xop, n, h, w, oh, ow, x, y, tp);
    }
    return run_and_delete(xop, st, tp);
}
