/* Int8 (W8A8) kernels: XNNPACK's per-channel qc8 convolution (also the fully-connected path:
 * a 1x1 convolution over [M, K] rows, since this XNNPACK's fully_connected_nc_qs8 has only a
 * per-tensor weight scale), qs8 add / multiply, f32 <-> qs8 conversion, and our own int8
 * GroupNorm(+SiLU) that dequantizes, normalizes and requantizes in one pass.
 *
 * Quantization is ONNX's: real = (q - zero_point) * scale, q = saturate(round(real / scale)
 * + zero_point), int8 activations per tensor, int8 weights per output channel with zero point 0.
 * XNNPACK's qc8 requantization (this version's "fp32" scheme): acc (int32, bias included) is
 * converted to float, multiplied by x_scale * w_scale[c] / y_scale (computed in float), clamped,
 * rounded to nearest even, and offset by y_zero_point. The add / multiply kernels use fixed-point
 * multipliers instead, so their results may differ from the float formula by one unit.
 * XNNPACK may read up to XNN_EXTRA_BYTES (16) past the end of an input: the Python wrapper
 * guarantees that these bytes are mapped.
 * Reference: xnnpack.h (Debian 0.0~git20220216) xnn_create_convolution2d_nhwc_qc8,
 *            xnn_create_{add,multiply}_nd_qs8, xnn_create_convert_nc_{f32_qs8,qs8_f32};
 *            onnx/docs/Operators.md QuantizeLinear / DequantizeLinear.
 */
#ifndef OSN_XNN_INT8_H
#define OSN_XNN_INT8_H
#include <stddef.h>
#include <stdint.h>

#include "osn_core.h"

/* CDEF BEGIN */
typedef struct osn_qconv2d osn_qconv2d;   /* a created qc8 convolution (packed int8 weights) */

/* Create a per-channel int8 convolution (groups allowed; a 1x1 one is the FC path). */
int osn_qconv2d_create(
    osn_qconv2d** op_out,   /* the operator; free with osn_qconv2d_delete */
    const int8_t* weight,   /* [cout, kh, kw, cin/groups] OHWI (XNNPACK's per-group order) */
    const float* w_scale,   /* [cout] per output channel (> 0) */
    const int32_t* bias,    /* [cout] in units of x_scale * w_scale[c] (not NULL) */
    size_t groups, size_t cin, size_t cout, size_t kh, size_t kw,
    uint32_t stride_h, uint32_t stride_w, uint32_t dilation_h, uint32_t dilation_w,
    uint32_t pad_top, uint32_t pad_left, uint32_t pad_bottom, uint32_t pad_right,
    int8_t x_zero_point, float x_scale,
    int8_t y_zero_point, float y_scale,
    int8_t y_min, int8_t y_max);   /* output clamp (y_min < y_max) */

/* y = requantize(conv(x - x_zp, w) + bias). */
int osn_qconv2d_run(
    osn_qconv2d* op,
    osn_pool* pool,         /* the model's thread pool (NULL: calling thread only) */
    int8_t* y,              /* [n, oh, ow, cout] NHWC */
    const int8_t* x,        /* [n, h, w, cin] NHWC */
    size_t n, size_t h, size_t w);

void osn_qconv2d_delete(osn_qconv2d* op);

/* y = requantize(dq(a) (op) dq(b)) with numpy broadcasting (rank <= 6), op OSN_BINARY_ADD or
 * OSN_BINARY_MUL (codes of osn_xnn_eltwise.h). */
int osn_xnn_qbinary(
    osn_pool* pool,         /* the model's thread pool (NULL: calling thread only) */
    int op,                 /* OSN_BINARY_ADD / OSN_BINARY_MUL */
    int8_t* y,              /* broadcast(a_shape, b_shape), C order */
    const int8_t* a,        /* a_shape, C order */
    const int8_t* b,        /* b_shape, C order */
    size_t a_ndim, const size_t* a_shape,
    size_t b_ndim, const size_t* b_shape,
    int8_t a_zero_point, float a_scale,
    int8_t b_zero_point, float b_scale,
    int8_t y_zero_point, float y_scale,
    int8_t y_min, int8_t y_max);

/* y = saturate(round(x / scale) + zero_point) (XNNPACK multiplies by 1/scale). */
int osn_xnn_quantize_f32(
    osn_pool* pool,         /* the model's thread pool (NULL: calling thread only) */
    int8_t* y,              /* [count] */
    const float* x,         /* [count] */
    size_t count, float scale, int8_t zero_point);

/* y = (x - zero_point) * scale. */
int osn_xnn_dequantize_f32(
    osn_pool* pool,         /* the model's thread pool (NULL: calling thread only) */
    float* y,               /* [count] */
    const int8_t* x,        /* [count] */
    size_t count, float scale, int8_t zero_point);

/* Int8 GroupNorm (+ SiLU): the statistics of each (image, group) come exactly from the int8
 * values (integer sums), then v = dq(x); u = (v - mean) / sqrt(var + eps) * gamma[c] + beta[c];
 * [u = u * sigmoid(u)]; y = saturate(round_half_even(u / y_scale) + y_zp). No float copy of x. */
int osn_qgroup_norm_act(
    osn_pool* pool,         /* the model's thread pool (NULL: calling thread only) */
    int8_t* y,              /* same shape and layout as x */
    const int8_t* x,        /* [n, c, hw] NCHW, or [n, hw, c] when nhwc */
    const float* gamma,     /* [c] */
    const float* beta,      /* [c] */
    size_t n, size_t c, size_t hw, int nhwc,
    size_t groups,          /* divides c */
    float epsilon, int silu,
    int8_t x_zero_point, float x_scale,
    int8_t y_zero_point, float y_scale);
/* The per-channel coefficients of the int8 GroupNorm above, for applying it later to any range
 * of pixels (a row band feeding a convolution): u = (x - x_zp) * a[i, c] + b[i, c]. */
int osn_qgroup_norm_coeffs(
    osn_pool* pool,         /* the model's thread pool (NULL: calling thread only) */
    float* a,               /* [n, c] */
    float* b,               /* [n, c] */
    const int8_t* x,        /* [n, c, hw] NCHW, or [n, hw, c] when nhwc */
    const float* gamma,     /* [c] */
    const float* beta,      /* [c] */
    size_t n, size_t c, size_t hw, int nhwc,
    size_t groups,          /* divides c */
    float epsilon,
    int8_t x_zero_point, float x_scale);

/* y[p, k] = saturate(round_half_even(act((x[p, k] - x_zp) * a[k] + b[k]) / y_scale) + y_zp), act
 * SiLU or identity: the second half of osn_qgroup_norm_act on channels-last pixels of one image
 * (bit-identical to it). */
int osn_qaffine_act_nhwc(
    osn_pool* pool,         /* the model's thread pool (NULL: calling thread only) */
    int8_t* y,              /* [pixels, c] */
    const int8_t* x,        /* [pixels, c] */
    const float* a,         /* [c] */
    const float* b,         /* [c] */
    size_t pixels, size_t c, int silu,
    int8_t x_zero_point, int8_t y_zero_point, float y_scale);
/* y[i] = lut[(uint8_t)x[i]]: any function of one int8 tensor with a per-tensor scale (a unary
 * op, or a binary op with a scalar constant, then requantized) is a 256-entry table. */
int osn_lut_i8(
    osn_pool* pool,         /* the model's thread pool (NULL: calling thread only) */
    int8_t* y,              /* [count] (may be x) */
    const int8_t* x,        /* [count] */
    const int8_t* lut,      /* [256], indexed by the byte of x (x & 0xff) */
    size_t count);
/* CDEF END */

#endif
