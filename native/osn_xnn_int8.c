/* Int8 kernels behind osn_xnn_int8.h: XNNPACK qc8 convolution (create / run / delete), qs8
 * binary ops and conversions (create, run, delete in one call), and an int8 GroupNorm(+SiLU).
 *
 * The GroupNorm reads each (image, group) twice: once for integer sums (exact whatever the
 * group size, so the statistics equal those of the dequantized tensor up to the float64
 * division), once to normalize, apply SiLU and requantize each element. It never holds a
 * float copy of the tensor: the point of W8A8 on a 512 MB board.
 * Reference: xnnpack.h (Debian 0.0~git20220216); ONNX GroupNormalization / QuantizeLinear.
 */
#include <math.h>
#include <stdlib.h>

#include <xnnpack.h>

#include "osn_internal.h"
#include "osn_scalar.h"
#include "osn_xnn_eltwise.h"
#include "osn_xnn_int8.h"

struct osn_qconv2d {
    xnn_operator_t op;
};

int osn_qconv2d_create(osn_qconv2d** op_out, const int8_t* weight, const float* w_scale, const int32_t* bias,
                       size_t groups, size_t cin, size_t cout, size_t kh, size_t kw, uint32_t stride_h,
                       uint32_t stride_w, uint32_t dilation_h, uint32_t dilation_w, uint32_t pad_top,
                       uint32_t pad_left, uint32_t pad_bottom, uint32_t pad_right, int8_t x_zero_point,
                       float x_scale, int8_t y_zero_point, float y_scale, int8_t y_min, int8_t y_max) {
    if (op_out == NULL || weight == NULL || w_scale == NULL || bias == NULL || groups == 0 || cin % groups ||
        cout % groups || cout == 0 || kh == 0 || kw == 0 || y_min >= y_max)
        return OSN_E_INVALID_ARGUMENT;
    *op_out = NULL;
    xnn_operator_t op = NULL;
    enum xnn_status st = xnn_create_convolution2d_nhwc_qc8(
        pad_top, pad_right, pad_bottom, pad_left, (uint32_t)kh, (uint32_t)kw, stride_h, stride_w, dilation_h,
        dilation_w, (uint32_t)groups, cin / groups, cout / groups, cin, cout, x_zero_point, x_scale, w_scale,
        weight, bias, y_zero_point, y_scale, y_min, y_max, OSN_XNN_FLAGS, &op);
    if (st != xnn_status_success) return (int)st;
    osn_qconv2d* c = (osn_qconv2d*)malloc(sizeof(osn_qconv2d));
    if (c == NULL) {
        xnn_delete_operator(op);
        return OSN_E_OUT_OF_MEMORY;
    }
    c->op = op;
    *op_out = c;
    return 0;
}

int osn_qconv2d_run(osn_qconv2d* op, osn_pool* pool, int8_t* y, const int8_t* x, size_t n, size_t h, size_t w) {
    if (op == NULL || y == NULL || x == NULL) return OSN_E_INVALID_ARGUMENT;
    pthreadpool_t tp = osn_pool_handle(pool);
    enum xnn_status st = xnn_setup_convolution2d_nhwc_qc8(op->op, n, h, w, x, y, tp);
    if (st != xnn_status_success) return (int)st;
    return (int)xnn_run_operator(op->op, tp);
}

void osn_qconv2d_delete(osn_qconv2d* op) {
    if (op == NULL) return;
    xnn_delete_operator(op->op);
    free(op);
}

/* Run a set-up operator, then delete it whatever happened. */
static int run_and_delete(xnn_operator_t op, enum xnn_status st, pthreadpool_t tp) {
    if (st == xnn_status_success) st = xnn_run_operator(op, tp);
    xnn_delete_operator(op);
    return (int)st;
}

int osn_xnn_qbinary(osn_pool* pool, int op, int8_t* y, const int8_t* a, const int8_t* b, size_t a_ndim,
                    const size_t* a_shape, size_t b_ndim, const size_t* b_shape, int8_t a_zero_point,
                    float a_scale, int8_t b_zero_point, float b_scale, int8_t y_zero_point, float y_scale,
                    int8_t y_min, int8_t y_max) {
    if (y == NULL || a == NULL || b == NULL || (a_ndim && a_shape == NULL) || (b_ndim && b_shape == NULL) ||
        y_min >= y_max)
        return OSN_E_INVALID_ARGUMENT;
    xnn_operator_t xop = NULL;
    enum xnn_status st;
    pthreadpool_t tp = osn_pool_handle(pool);
    if (op == OSN_BINARY_ADD) {
        st = xnn_create_add_nd_qs8(a_zero_point, a_scale, b_zero_point, b_scale, y_zero_point, y_scale, y_min,
                                   y_max, OSN_XNN_FLAGS, &xop);
        if (st != xnn_status_success) return (int)st;
        return run_and_delete(xop, xnn_setup_add_nd_qs8(xop, a_ndim, a_shape, b_ndim, b_shape, a, b, y, tp), tp);
    }
    if (op == OSN_BINARY_MUL) {
        st = xnn_create_multiply_nd_qs8(a_zero_point, a_scale, b_zero_point, b_scale, y_zero_point, y_scale, y_min,
                                        y_max, OSN_XNN_FLAGS, &xop);
        if (st != xnn_status_success) return (int)st;
        return run_and_delete(xop, xnn_setup_multiply_nd_qs8(xop, a_ndim, a_shape, b_ndim, b_shape, a, b, y, tp),
                              tp);
    }
    return OSN_E_INVALID_ARGUMENT;
}

int osn_xnn_quantize_f32(osn_pool* pool, int8_t* y, const float* x, size_t count, float scale, int8_t zero_point) {
    if (y == NULL || x == NULL || count == 0) return OSN_E_INVALID_ARGUMENT;
    xnn_operator_t xop = NULL;
    enum xnn_status st = xnn_create_convert_nc_f32_qs8(1, 1, 1, scale, zero_point, INT8_MIN, INT8_MAX,
                                                       OSN_XNN_FLAGS, &xop);
    if (st != xnn_status_success) return (int)st;
    pthreadpool_t tp = osn_pool_handle(pool);
    return run_and_delete(xop, xnn_setup_convert_nc_f32_qs8(xop, count, x, y, tp), tp);
}

int osn_xnn_dequantize_f32(osn_pool* pool, float* y, const int8_t* x, size_t count, float scale,
                           int8_t zero_point) {
    if (y == NULL || x == NULL || count == 0) return OSN_E_INVALID_ARGUMENT;
    xnn_operator_t xop = NULL;
    enum xnn_status st = xnn_create_convert_nc_qs8_f32(1, 1, 1, scale, zero_point, OSN_XNN_FLAGS, &xop);
    if (st != xnn_status_success) return (int)st;
    pthreadpool_t tp = osn_pool_handle(pool);
    return run_and_delete(xop, xnn_setup_convert_nc_qs8_f32(xop, count, x, y, tp), tp);
}

/* ---------------------------------------------------------------- int8 GroupNorm (+SiLU) */

struct qgn_ctx {
    int8_t* y;
    const int8_t* x;
    const float *gamma, *beta;
    size_t c, hw, cpg;
    int nhwc, silu;
    double epsilon;
    int32_t x_zp, y_zp;
    float x_scale, y_scale;
    int status;
};

/* saturate(round_half_even(u / y_scale) + zp): t is clamped to [lo, hi] = [-128 - zp, 127 - zp]
 * first, so the magic-number add rounds it exactly (|t| < 2^22). */
static inline int32_t requantize(float u, float y_scale, float lo, float hi, int32_t zp) {
    float t = u / y_scale;                 /* a division, as QuantizeLinear specifies */
    t = t < lo ? lo : t;
    t = t > hi ? hi : t;
    const float r = (t + 0x1.8p23f) - 0x1.8p23f;
    return (int32_t)r + zp;
}

static inline float silu_q(float z) {
    return z / (1.0f + exp_f32(-z));
}

/* u = (q - zx) * a + b [u = silu(u)] requantized: the one expression both the whole-tensor and
 * the row-band paths use, so their results are identical. */
static inline int8_t qaffine_one(int8_t q, int32_t zx, float a, float b, int silu, float sy, float lo, float hi,
                                 int32_t zy) {
    float u = (float)((int32_t)q - zx) * a + b;
    if (silu) u = silu_q(u);
    return (int8_t)requantize(u, sy, lo, hi, zy);
}

/* One run of channels-last values: restrict pointers (int8 stores could otherwise alias the
 * float coefficients, which keeps the compiler from vectorising), SiLU hoisted out of the loop. */
static void qaffine_run(int8_t* restrict y, const int8_t* restrict x, const float* restrict a,
                        const float* restrict b, size_t count, int silu, int32_t zx, float sy, int32_t zy) {
    const float lo = (float)(INT8_MIN - zy), hi = (float)(INT8_MAX - zy);
    if (silu) {
        for (size_t k = 0; k < count; k++) y[k] = qaffine_one(x[k], zx, a[k], b[k], 1, sy, lo, hi, zy);
    } else {
        for (size_t k = 0; k < count; k++) y[k] = qaffine_one(x[k], zx, a[k], b[k], 0, sy, lo, hi, zy);
    }
}

/* The same with one coefficient pair for the whole run (an NCHW channel plane). */
static void qaffine_plane(int8_t* restrict y, const int8_t* restrict x, float a, float b, size_t count, int silu,
                          int32_t zx, float sy, int32_t zy) {
    const float lo = (float)(INT8_MIN - zy), hi = (float)(INT8_MAX - zy);
    if (silu) {
        for (size_t p = 0; p < count; p++) y[p] = qaffine_one(x[p], zx, a, b, 1, sy, lo, hi, zy);
    } else {
        for (size_t p = 0; p < count; p++) y[p] = qaffine_one(x[p], zx, a, b, 0, sy, lo, hi, zy);
    }
}

/* a[k], b[k] (k over the group's channels) of image img, group g: exact integer sums, float64
 * moments. */
static void qgn_coeffs(const struct qgn_ctx* t, size_t img, size_t g, float* a, float* b) {
    const size_t c = t->c, hw = t->hw, cpg = t->cpg, c0 = g * cpg;
    const int8_t* x = t->x + img * c * hw;
    const int32_t zx = t->x_zp;
    int64_t s = 0, ss = 0;
    if (t->nhwc) {
        for (size_t p = 0; p < hw; p++) {
            const int8_t* xp = x + p * c + c0;
            int32_t ps = 0, pss = 0;
            for (size_t k = 0; k < cpg; k++) {
                const int32_t v = (int32_t)xp[k] - zx;
                ps += v;
                pss += v * v;
            }
            s += ps;
            ss += pss;
        }
    } else {
        for (size_t k = 0; k < cpg; k++) {
            const int8_t* xc = x + (c0 + k) * hw;
            int64_t cs = 0, css = 0;
            for (size_t p = 0; p < hw; p++) {
                const int32_t v = (int32_t)xc[p] - zx;
                cs += v;
                css += v * v;
            }
            s += cs;
            ss += css;
        }
    }
    const double count = (double)hw * (double)cpg;
    const double mean_q = (double)s / count;
    double var_q = (double)ss / count - mean_q * mean_q;
    var_q = var_q < 0 ? 0 : var_q;
    const double sx = (double)t->x_scale;
    const double rstd = 1.0 / sqrt(var_q * sx * sx + t->epsilon);
    for (size_t k = 0; k < cpg; k++) {
        const double ak = sx * rstd * (double)t->gamma[c0 + k];
        a[k] = (float)ak;
        b[k] = (float)((double)t->beta[c0 + k] - mean_q * ak);
    }
}

static void qgn_task(void* arg, size_t img, size_t g) {
    struct qgn_ctx* t = arg;
    const size_t c = t->c, hw = t->hw, cpg = t->cpg, c0 = g * cpg;
    const int8_t* x = t->x + img * c * hw;
    int8_t* y = t->y + img * c * hw;
    float* ab = (float*)malloc(2 * cpg * sizeof(float));
    if (ab == NULL) {
        t->status = OSN_E_OUT_OF_MEMORY;
        return;
    }
    float* a = ab;
    float* b = ab + cpg;
    qgn_coeffs(t, img, g, a, b);
    const int32_t zx = t->x_zp, zy = t->y_zp;
    const float sy = t->y_scale;
    /* NCHW only: osn_qgroup_norm_act runs channels-last tensors by whole pixels */
    for (size_t k = 0; k < cpg; k++)
        qaffine_plane(y + (c0 + k) * hw, x + (c0 + k) * hw, a[k], b[k], hw, t->silu, zx, sy, zy);
    free(ab);
}

struct qcoef_ctx {
    struct qgn_ctx gn;
    float *a, *b;     /* [n, c] */
};

static void qcoef_task(void* arg, size_t img, size_t g) {
    struct qcoef_ctx* t = arg;
    const size_t off = img * t->gn.c + g * t->gn.cpg;
    qgn_coeffs(&t->gn, img, g, t->a + off, t->b + off);
}

int osn_qgroup_norm_coeffs(osn_pool* pool, float* a, float* b, const int8_t* x, const float* gamma,
                           const float* beta, size_t n, size_t c, size_t hw, int nhwc, size_t groups, float epsilon,
                           int8_t x_zero_point, float x_scale) {
    if (a == NULL || b == NULL || x == NULL || gamma == NULL || beta == NULL || groups == 0 || c % groups ||
        !(x_scale > 0) || !(epsilon >= 0) || c / groups > 30000)
        return OSN_E_INVALID_ARGUMENT;
    struct qcoef_ctx t = {{NULL, x, gamma, beta, c, hw, c / groups, nhwc != 0, 0, (double)epsilon, x_zero_point, 0,
                           x_scale, 1.0f, 0},
                          a, b};
    pthreadpool_parallelize_2d(osn_pool_handle(pool), (pthreadpool_task_2d_t)qcoef_task, &t, n, groups,
                               OSN_PARALLEL_FLAGS);
    return 0;
}

struct qaff_ctx {
    int8_t* y;
    const int8_t* x;
    const float *a, *b;
    size_t c;
    int silu;
    int32_t zx, zy;
    float sy;
};

static void qaff_task(void* arg, size_t p0, size_t np) {
    const struct qaff_ctx* t = arg;
    const size_t c = t->c;
    for (size_t p = p0; p < p0 + np; p++)
        qaffine_run(t->y + p * c, t->x + p * c, t->a, t->b, c, t->silu, t->zx, t->sy, t->zy);
}

int osn_qaffine_act_nhwc(osn_pool* pool, int8_t* y, const int8_t* x, const float* a, const float* b, size_t pixels,
                         size_t c, int silu, int8_t x_zero_point, int8_t y_zero_point, float y_scale) {
    if (y == NULL || x == NULL || a == NULL || b == NULL || c == 0 || !(y_scale > 0)) return OSN_E_INVALID_ARGUMENT;
    struct qaff_ctx t = {y, x, a, b, c, silu != 0, x_zero_point, y_zero_point, y_scale};
    size_t tile = 65536 / c;
    pthreadpool_parallelize_1d_tile_1d(osn_pool_handle(pool), qaff_task, &t, pixels, tile ? tile : 1,
                                       OSN_PARALLEL_FLAGS);
    return 0;
}


/* ---------------------------------------------------------------- int8 -> int8 lookup */

struct lut_ctx {
    int8_t* y;
    const int8_t* x;
    const int8_t* lut;
};

static void lut_task(void* arg, size_t i0, size_t n) {
    const struct lut_ctx* t = arg;
    for (size_t i = i0; i < i0 + n; i++) t->y[i] = t->lut[(uint8_t)t->x[i]];
}

int osn_lut_i8(osn_pool* pool, int8_t* y, const int8_t* x, const int8_t* lut, size_t count) {
    if (y == NULL || x == NULL || lut == NULL) return OSN_E_INVALID_ARGUMENT;
    struct lut_ctx t = {y, x, lut};
    pthreadpool_parallelize_1d_tile_1d(osn_pool_handle(pool), lut_task, &t, count, 1 << 16, OSN_PARALLEL_FLAGS);
    return 0;
}

int osn_qgroup_norm_act(osn_pool* pool, int8_t* y, const int8_t* x, const float* gamma, const float* beta,
                        size_t n, size_t c, size_t hw, int nhwc, size_t groups, float epsilon, int silu,
                        int8_t x_zero_point, float x_scale, int8_t y_zero_point, float y_scale) {
    if (y == NULL || x == NULL || gamma == NULL || beta == NULL || groups == 0 || c % groups || !(x_scale > 0) ||
        !(y_scale > 0) || !(epsilon >= 0))
        return OSN_E_INVALID_ARGUMENT;
    /* int32 per-pixel partial sums of squares: cpg * 255^2 < 2^31 */
    if (c / groups > 30000) return OSN_E_INVALID_ARGUMENT;
    if (nhwc) {
        /* channels-last: a group's channels are short runs at every pixel, so the output pass runs
         * over whole pixels (all channels, each with its own coefficients) instead of per group */
        float* ab = (float*)malloc(2 * n * c * sizeof(float));
        if (ab == NULL) return OSN_E_OUT_OF_MEMORY;
        int st = osn_qgroup_norm_coeffs(pool, ab, ab + n * c, x, gamma, beta, n, c, hw, 1, groups, epsilon,
                                        x_zero_point, x_scale);
        for (size_t i = 0; st == 0 && i < n; i++)
            st = osn_qaffine_act_nhwc(pool, y + i * hw * c, x + i * hw * c, ab + i * c, ab + n * c + i * c, hw, c,
                                      silu, x_zero_point, y_zero_point, y_scale);
        free(ab);
        return st;
    }
    struct qgn_ctx t = {y, x, gamma, beta, c, hw, c / groups, 0, silu != 0, (double)epsilon,
                        x_zero_point, y_zero_point, x_scale, y_scale, 0};
    pthreadpool_parallelize_2d(osn_pool_handle(pool), (pthreadpool_task_2d_t)qgn_task, &t, n, groups,
                               OSN_PARALLEL_FLAGS);
    return t.status;
}
