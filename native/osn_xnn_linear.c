/* XNNPACK convolution and fully-connected operators behind a create / run / delete API.
 *
 * ONNX stores a Conv weight OIHW; XNNPACK wants [groups, group_output_channels, kh, kw,
 * group_input_channels] (OHWI per group). create relayouts just the requested block of
 * output channels into a temporary, lets XNNPACK pack it, and frees the temporary, so the
 * extra memory while creating is two copies of the block (not of the whole weight). 1x1 and
 * depthwise weights are already in XNNPACK's order and are packed straight from the caller's
 * buffer. A fully-connected weight given [K, N] (MatMul) uses XNN_FLAG_TRANSPOSE_WEIGHTS.
 * Reference: xnnpack.h (Debian 0.0~git20220216) xnn_create_convolution2d_nhwc_f32,
 *            xnn_create_fully_connected_nc_f32 and their _f16 twins.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <xnnpack.h>

#include "osn_internal.h"
#include "osn_xnn_linear.h"

struct osn_conv2d {
    xnn_operator_t op;
    int dtype;
    size_t co_count;     /* output channels this operator writes */
    size_t y_channels;   /* channel stride of the NHWC output */
};

struct osn_fc {
    xnn_operator_t op;
    int dtype;
    size_t n_count;      /* output columns this operator writes */
    size_t y_stride;     /* row stride of the output */
};

static size_t elem_size(int dtype) {
    return dtype == OSN_LINEAR_F32 ? 4 : dtype == OSN_LINEAR_F16 ? 2 : 0;
}

/* dst[o][t][i] = src[co_begin + o][i][t] for t over kh*kw. es is a literal at each call
 * site, so after inlining memcpy becomes one load/store of the element. */
static inline __attribute__((always_inline)) void relayout_ohwi(
        char* restrict dst, const char* restrict src, size_t es,
        size_t cig, size_t khw, size_t co_begin, size_t co_count) {
    for (size_t o = 0; o < co_count; o++) {
        const char* s = src + (co_begin + o) * cig * khw * es;
        char* d = dst + o * khw * cig * es;
        for (size_t i = 0; i < cig; i++)
            for (size_t t = 0; t < khw; t++)
                memcpy(d + (t * cig + i) * es, s + (i * khw + t) * es, es);
    }
}

int osn_conv2d_weight_ohwi(void* dst, const void* src, int dtype, size_t cout, size_t cig, size_t kh,
                           size_t kw, size_t co_begin, size_t co_end) {
    if (dst == NULL || src == NULL || co_begin > co_end || co_end > cout || elem_size(dtype) == 0)
        return OSN_E_INVALID_ARGUMENT;
    if (dtype == OSN_LINEAR_F32)
        relayout_ohwi(dst, src, 4, cig, kh * kw, co_begin, co_end - co_begin);
    else
        relayout_ohwi(dst, src, 2, cig, kh * kw, co_begin, co_end - co_begin);
    return 0;
}

/* Tiles of TILE x TILE elements: both the rows read and the rows written stay in L1. */
#define TILE 32

struct transpose_ctx {
    char* dst;
    const char* src;
    size_t es, rows, cols;
};

static inline __attribute__((always_inline)) void transpose_tile(
        char* restrict dst, const char* restrict src, size_t es, size_t rows, size_t cols,
        size_t r0, size_t c0, size_t nr, size_t nc) {
    for (size_t c = c0; c < c0 + nc; c++)
        for (size_t r = r0; r < r0 + nr; r++)
            memcpy(dst + (c * rows + r) * es, src + (r * cols + c) * es, es);
}

static void transpose_task(void* arg, size_t b, size_t r0, size_t c0, size_t nr, size_t nc) {
    const struct transpose_ctx* t = arg;
    size_t plane = t->rows * t->cols * t->es;
    char* dst = t->dst + b * plane;
    const char* src = t->src + b * plane;
    if (t->es == 4)
        transpose_tile(dst, src, 4, t->rows, t->cols, r0, c0, nr, nc);
    else
        transpose_tile(dst, src, 2, t->rows, t->cols, r0, c0, nr, nc);
}

int osn_transpose_last2(void* dst, const void* src, osn_pool* pool, int dtype, size_t batch, size_t rows,
                        size_t cols) {
    size_t es = elem_size(dtype);
    if (dst == NULL || src == NULL || es == 0) return OSN_E_INVALID_ARGUMENT;
    struct transpose_ctx t = {(char*)dst, (const char*)src, es, rows, cols};
    pthreadpool_parallelize_3d_tile_2d(osn_pool_handle(pool), transpose_task, &t, batch, rows, cols, TILE, TILE, OSN_PARALLEL_FLAGS);
    return 0;
}

int osn_conv2d_create(osn_conv2d** op_out, const void* weight, const void* bias, int dtype, size_t groups,
                      size_t cin, size_t cout, size_t kh, size_t kw, size_t co_begin, size_t co_end,
                      size_t y_channels, uint32_t stride_h, uint32_t stride_w, uint32_t dilation_h,
                      uint32_t dilation_w, uint32_t pad_top, uint32_t pad_left, uint32_t pad_bottom,
                      uint32_t pad_right) {
    size_t es = elem_size(dtype);
    if (op_out == NULL || weight == NULL || es == 0 || groups == 0 || cin % groups || cout % groups ||
        co_begin >= co_end || co_end > cout || kh == 0 || kw == 0)
        return OSN_E_INVALID_ARGUMENT;
    if (groups > 1 && (co_begin != 0 || co_end != cout)) return OSN_E_INVALID_ARGUMENT;
    size_t co_count = co_end - co_begin;
    if (y_channels < co_count) return OSN_E_INVALID_ARGUMENT;
    *op_out = NULL;
    size_t cig = cin / groups, khw = kh * kw;
    const char* packed_from = (const char*)weight + co_begin * cig * khw * es;
    void* tmp = NULL;
    if (cig > 1 && khw > 1) {   /* else OIHW already equals OHWI */
        tmp = malloc(co_count * khw * cig * es);
        if (tmp == NULL) return OSN_E_OUT_OF_MEMORY;
        osn_conv2d_weight_ohwi(tmp, weight, dtype, cout, cig, kh, kw, co_begin, co_end);
        packed_from = tmp;
    }
    const void* b = bias ? (const char*)bias + co_begin * es : NULL;
    size_t cog = co_count / groups;
    xnn_operator_t op = NULL;
    enum xnn_status st;
    if (dtype == OSN_LINEAR_F32)
        st = xnn_create_convolution2d_nhwc_f32(pad_top, pad_right, pad_bottom, pad_left, (uint32_t)kh, (uint32_t)kw,
                                               stride_h, stride_w, dilation_h, dilation_w, (uint32_t)groups, cig, cog,
                                               cin, y_channels, (const float*)packed_from, (const float*)b,
                                               -INFINITY, INFINITY, OSN_XNN_FLAGS, &op);
    else
        st = xnn_create_convolution2d_nhwc_f16(pad_top, pad_right, pad_bottom, pad_left, (uint32_t)kh, (uint32_t)kw,
                                               stride_h, stride_w, dilation_h, dilation_w, (uint32_t)groups, cig, cog,
                                               cin, y_channels, packed_from, b, -INFINITY, INFINITY, OSN_XNN_FLAGS, &op);
    free(tmp);
    if (st != xnn_status_success) return (int)st;
    osn_conv2d* c = (osn_conv2d*)malloc(sizeof(osn_conv2d));
    if (c == NULL) {
        xnn_delete_operator(op);
        return OSN_E_OUT_OF_MEMORY;
    }
    c->op = op;
    c->dtype = dtype;
    c->co_count = co_count;
    c->y_channels = y_channels;
    *op_out = c;
    return 0;
}

int osn_conv2d_run(osn_conv2d* op, osn_pool* pool, void* y, const void* x, size_t n, size_t h, size_t w,
                   size_t y_channel_offset) {
    if (op == NULL || y == NULL || x == NULL || y_channel_offset + op->co_count > op->y_channels)
        return OSN_E_INVALID_ARGUMENT;
    pthreadpool_t tp = osn_pool_handle(pool);
    void* yo = (char*)y + y_channel_offset * elem_size(op->dtype);
    enum xnn_status st = op->dtype == OSN_LINEAR_F32
        ? xnn_setup_convolution2d_nhwc_f32(op->op, n, h, w, (const float*)x, (float*)yo, tp)
        : xnn_setup_convolution2d_nhwc_f16(op->op, n, h, w, x, yo, tp);
    if (st != xnn_status_success) return (int)st;
    return (int)xnn_run_operator(op->op, tp);
}

void osn_conv2d_delete(osn_conv2d* op) {
    if (op == NULL) return;
    xnn_delete_operator(op->op);
    free(op);
}

int osn_fc_create(osn_fc** op_out, const void* weight, const void* bias, int dtype, int weight_kn, size_t k,
                  size_t n, size_t n_begin, size_t n_end, size_t y_stride) {
    size_t es = elem_size(dtype);
    if (op_out == NULL || weight == NULL || es == 0 || k == 0 || n_begin >= n_end || n_end > n)
        return OSN_E_INVALID_ARGUMENT;
    size_t count = n_end - n_begin;
    if (y_stride < count) return OSN_E_INVALID_ARGUMENT;
    *op_out = NULL;
    const void* kernel = (const char*)weight + n_begin * k * es;   /* [N, K]: a block is contiguous rows */
    void* tmp = NULL;
    uint32_t flags = OSN_XNN_FLAGS;
    if (weight_kn) {
        flags |= XNN_FLAG_TRANSPOSE_WEIGHTS;   /* kernel is [K, count] */
        kernel = weight;
        if (count != n) {   /* copy the block of columns: [K, count] */
            tmp = malloc(k * count * es);
            if (tmp == NULL) return OSN_E_OUT_OF_MEMORY;
            for (size_t r = 0; r < k; r++)
                memcpy((char*)tmp + r * count * es, (const char*)weight + (r * n + n_begin) * es, count * es);
            kernel = tmp;
        }
    }
    const void* b = bias ? (const char*)bias + n_begin * es : NULL;
    xnn_operator_t op = NULL;
    enum xnn_status st = dtype == OSN_LINEAR_F32
        ? xnn_create_fully_connected_nc_f32(k, count, k, y_stride, (const float*)kernel, (const float*)b,
                                            -INFINITY, INFINITY, flags, &op)
        : xnn_create_fully_connected_nc_f16(k, count, k, y_stride, kernel, b, -INFINITY, INFINITY, flags, &op);
    free(tmp);
    if (st != xnn_status_success) return (int)st;
    osn_fc* f = (osn_fc*)malloc(sizeof(osn_fc));
    if (f == NULL) {
        xnn_delete_operator(op);
        return OSN_E_OUT_OF_MEMORY;
    }
    f->op = op;
    f->dtype = dtype;
    f->n_count = count;
    f->y_stride = y_stride;
    *op_out = f;
    return 0;
}

int osn_fc_run(osn_fc* op, osn_pool* pool, void* y, const void* x, size_t m, size_t y_col_offset) {
    if (op == NULL || y == NULL || x == NULL || y_col_offset + op->n_count > op->y_stride)
        return OSN_E_INVALID_ARGUMENT;
    pthreadpool_t tp = osn_pool_handle(pool);
    void* yo = (char*)y + y_col_offset * elem_size(op->dtype);
    enum xnn_status st = op->dtype == OSN_LINEAR_F32
        ? xnn_setup_fully_connected_nc_f32(op->op, m, (const float*)x, (float*)yo, tp)
        : xnn_setup_fully_connected_nc_f16(op->op, m, x, yo, tp);
    if (st != xnn_status_success) return (int)st;
    return (int)xnn_run_operator(op->op, tp);
}

void osn_fc_delete(osn_fc* op) {
    if (op == NULL) return;
    xnn_delete_operator(op->op);
    free(op);
}
