/* float16 <-> float32 conversion in plain C (bit manipulation), parallel over blocks.
 *
 * The Raspberry Pi target has no FP16 arithmetic and x86 builds must not require F16C, so
 * both directions are integer/float bit tricks that compilers vectorise. f32 -> f16 rounds
 * to nearest, ties to even; subnormals, infinities and NaNs are converted exactly as
 * IEEE 754 binary16 defines them (NaNs stay NaN, made quiet).
 */
#ifndef OSN_K_CONVERT_H
#define OSN_K_CONVERT_H
#include <stddef.h>
#include <stdint.h>

#include "osn_core.h"

/* CDEF BEGIN */
/* y = float32(x), elementwise. */
int osn_f16_to_f32(
    osn_pool* pool,       /* threads to use (NULL: the calling thread) */
    float* y,             /* [count] float32 output */
    const uint16_t* x,    /* [count] IEEE binary16 bit patterns */
    size_t count);        /* elements */

/* y = float16(x), round to nearest even; overflow gives +-inf. */
int osn_f32_to_f16(
    osn_pool* pool,       /* threads to use (NULL: the calling thread) */
    uint16_t* y,          /* [count] IEEE binary16 bit patterns */
    const float* x,       /* [count] float32 input */
    size_t count);        /* elements */
/* CDEF END */

#endif
