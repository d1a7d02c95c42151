/* Linear dequantization of 8-bit integers to float32, parallel over blocks.
 *
 * y = (x - zero_point[c]) * scale[c] for x viewed as [outer, channels, inner] with c the
 * quantization axis (channels = 1: per-tensor). This is the fetch-time half of the int8
 * weight formats (w8a32: an int8 weight + DequantizeLinear per output channel) and the
 * numpy twin is onnxstream_py/ops/quant.py (dequantize). int8 and uint8 share one loop: a
 * uint8 byte b is read as the int8 (b ^ 0x80) plus 128, so the compiler sees one kernel.
 * Reference: https://onnx.ai/onnx/operators/onnx__DequantizeLinear.html
 */
#ifndef OSN_K_QUANT_H
#define OSN_K_QUANT_H
#include <stddef.h>
#include <stdint.h>

#include "osn_core.h"

/* CDEF BEGIN */
/* y[o, c, i] = (x[o, c, i] - zero_point[c]) * scale[c], rounded once (float32 product of
 * an exact float32 difference, as the numpy reference computes it). */
int osn_dequantize_8bit_f32(
    osn_pool* pool,            /* threads to use (NULL: the calling thread) */
    float* y,                  /* [outer, channels, inner] float32 output, C order */
    const void* x,             /* [outer, channels, inner] int8 or uint8 input, C order */
    int x_unsigned,            /* 0: x is int8, 1: x is uint8 */
    const float* scale,        /* [channels] scale per channel */
    const int32_t* zero_point, /* [channels] zero point per channel, or NULL for 0 */
    size_t outer,              /* product of the dimensions before the axis */
    size_t channels,           /* size of the quantization axis (1: per-tensor) */
    size_t inner);             /* product of the dimensions after the axis */
/* CDEF END */

#endif
