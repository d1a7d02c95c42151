/* XNNPACK linear operators: 2-D convolution (NHWC) and fully connected, float32 and float16.
 *
 * Each operator has three calls so that a caller can keep a created operator across runs:
 * create (relayouts and packs the ONNX weight into XNNPACK's own buffer; the caller's weight
 * may be freed afterwards), run (setup + run on the model's thread pool; any batch and
 * spatial size), delete. An operator may cover only a range of output channels
 * [co_begin, co_end) of the weight: then only that block is relayed out and packed, which
 * bounds the extra memory of a large weight (run the blocks one after another, each writing
 * its channels of one NHWC output).
 *
 * dtype is OSN_LINEAR_F32 (float) or OSN_LINEAR_F16 (IEEE half as uint16_t); weight, bias,
 * input and output all have that dtype. XNNPACK may read up to XNN_EXTRA_BYTES (16) past the
 * end of an input: the Python wrapper guarantees that these bytes are mapped.
 * float16 operators need FP16 arithmetic (ARMv8.2) or XNNPACK's x86 F16C kernels; elsewhere
 * create returns xnn_status_unsupported_hardware (5).
 */
#ifndef OSN_XNN_LINEAR_H
#define OSN_XNN_LINEAR_H
#include <stddef.h>
#include <stdint.h>

#include "osn_core.h"

/* CDEF BEGIN */
#define OSN_LINEAR_F32 0
#define OSN_LINEAR_F16 1

typedef struct osn_conv2d osn_conv2d;   /* a created XNNPACK convolution (packed weights) */
typedef struct osn_fc osn_fc;           /* a created XNNPACK fully-connected operator */

/* OIHW -> OHWI relayout of a conv weight, i.e. XNNPACK's
 * [groups, group_output_channels, kh, kw, group_input_channels] (exposed for tests/benchmarks). */
int osn_conv2d_weight_ohwi(
    void* dst,              /* [co_end-co_begin, kh, kw, cig] */
    const void* src,        /* [cout, cig, kh, kw] ONNX Conv weight */
    int dtype,              /* OSN_LINEAR_F32 / OSN_LINEAR_F16 */
    size_t cout, size_t cig, size_t kh, size_t kw,
    size_t co_begin, size_t co_end);   /* the block of output channels to copy */

/* dst[b][c][r] = src[b][r][c]: the layout change around XNNPACK convolutions, NCHW -> NHWC
 * (rows = C, cols = H*W) and NHWC -> NCHW (rows = H*W, cols = C), in tiles on the pool. */
int osn_transpose_last2(
    void* dst,              /* [batch, cols, rows] */
    const void* src,        /* [batch, rows, cols] */
    osn_pool* pool,         /* NULL: calling thread only */
    int dtype,              /* OSN_LINEAR_F32 / OSN_LINEAR_F16 (any 4- or 2-byte element) */
    size_t batch, size_t rows, size_t cols);

/* Create a convolution computing output channels [co_begin, co_end) of an ONNX Conv. */
int osn_conv2d_create(
    osn_conv2d** op_out,    /* the operator; free with osn_conv2d_delete */
    const void* weight,     /* [cout, cin/groups, kh, kw] ONNX OIHW (whole weight) */
    const void* bias,       /* [cout] or NULL */
    int dtype,              /* OSN_LINEAR_F32 / OSN_LINEAR_F16 */
    size_t groups, size_t cin, size_t cout, size_t kh, size_t kw,
    size_t co_begin, size_t co_end,    /* 0, cout unless groups == 1 */
    size_t y_channels,      /* channel stride of the NHWC output (>= co_end - co_begin) */
    uint32_t stride_h, uint32_t stride_w, uint32_t dilation_h, uint32_t dilation_w,
    uint32_t pad_top, uint32_t pad_left, uint32_t pad_bottom, uint32_t pad_right);

/* y[..., y_channel_offset : y_channel_offset + (co_end-co_begin)] = conv(x) (+ bias). */
int osn_conv2d_run(
    osn_conv2d* op,
    osn_pool* pool,         /* the model's thread pool (NULL: calling thread only) */
    void* y,                /* [n, oh, ow, y_channels] NHWC */
    const void* x,          /* [n, h, w, cin] NHWC */
    size_t n, size_t h, size_t w,
    size_t y_channel_offset);

void osn_conv2d_delete(osn_conv2d* op);

/* Create a fully-connected operator computing output columns [n_begin, n_end). */
int osn_fc_create(
    osn_fc** op_out,        /* the operator; free with osn_fc_delete */
    const void* weight,     /* [k, n] if weight_kn (MatMul B) else [n, k] (Gemm transB=1) */
    const void* bias,       /* [n] or NULL */
    int dtype,              /* OSN_LINEAR_F32 / OSN_LINEAR_F16 */
    int weight_kn,
    size_t k, size_t n,
    size_t n_begin, size_t n_end,
    size_t y_stride);       /* row stride of the output (>= n_end - n_begin) */

/* y[:, y_col_offset : y_col_offset + (n_end-n_begin)] = x @ W (+ bias). */
int osn_fc_run(
    osn_fc* op,
    osn_pool* pool,         /* the model's thread pool (NULL: calling thread only) */
    void* y,                /* [m, y_stride] */
    const void* x,          /* [m, k] */
    size_t m,
    size_t y_col_offset);

void osn_fc_delete(osn_fc* op);
/* CDEF END */

#endif
