/* Normalisation kernels in float32: group/instance normalisation over [N, C, spatial] and
 * layer normalisation over the last axis of a [rows, cols] matrix.
 *
 * Statistics are robust two-pass ones: each block of 4096 elements (in L1) is summed for
 * its mean, then summed again as squared deviations from that mean (float32 lanes); block
 * results are merged in double with the exact pairwise-update formula (Chan et al.), so a
 * large mean never cancels the variance away, yet the tensor is read from memory only once
 * for the statistics and once more for the output, which is written once. Large rows
 * (the SD VAE normalises rows of 2-4M elements) are split into chunks so that all threads
 * share even a single row.
 */
#ifndef OSN_K_NORM_H
#define OSN_K_NORM_H
#include <stddef.h>

#include "osn_core.h"

/* CDEF BEGIN */
/* y = (x - mean_g) / sqrt(var_g + epsilon) * scale[c] + bias[c], with mean_g/var_g (population
 * variance) over each group g of channels_per_group consecutive channels of one batch item.
 * InstanceNormalization is groups = C, channels_per_group = 1. y must not overlap x. */
int osn_group_norm_f32(
    osn_pool* pool,              /* threads to use (NULL: the calling thread) */
    float* y,                    /* [batch, groups * channels_per_group, spatial] output */
    const float* x,              /* [batch, groups * channels_per_group, spatial] input */
    const float* scale,          /* [groups * channels_per_group] per-channel scale */
    const float* bias,           /* [groups * channels_per_group] per-channel bias */
    size_t batch,                /* N */
    size_t groups,               /* G */
    size_t channels_per_group,   /* C / G */
    size_t spatial,              /* elements per channel (product of the spatial dims) */
    float epsilon);

/* y[r, :] = (x[r, :] - mean_r) * invstd_r * scale + bias, invstd_r = 1 / sqrt(var_r + epsilon),
 * statistics over each row. y must not overlap x. */
int osn_layer_norm_f32(
    osn_pool* pool,              /* threads to use (NULL: the calling thread) */
    float* y,                    /* [rows, cols] output */
    float* mean,                 /* [rows] row means, or NULL */
    float* invstd,               /* [rows] row 1/sqrt(var + epsilon), or NULL */
    const float* x,              /* [rows, cols] input */
    const float* scale,          /* [cols] */
    const float* bias,           /* [cols], or NULL for no bias */
    size_t rows,
    size_t cols,
    float epsilon);
/* CDEF END */

#endif
