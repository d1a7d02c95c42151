/* Normalisation kernels in float32: group/instance normalisation over [N, C, spatial] and
 * layer normalisation over the last axis of a [rows, cols] matrix.
 *
 * Statistics are robust two-pass ones: each block of 4096 elements (in L1) is summed for
 * its mean, then summed again as deviations and squared deviations from that mean (float32
 * lanes; the deviations' sum corrects the first pass's rounded mean); block
 * results are merged in double with the exact pairwise-update formula (Chan et al.), so a
 * large mean never cancels the variance away, yet the tensor is read from memory only once
 * for the statistics and once more for the output, which is written once. Large rows
 * (the SD VAE normalises rows of 2-4M elements) are split into chunks so that all threads
 * share even a single row.
 *
 * Channels-last (NHWC) input keeps that layout: per-channel partial sums run along the
 * contiguous channel axis (vectorised over C) for a block of pixels at a time and are
 * folded into per-group moments, so the kernel never transposes. SiLU, when fused, is
 * applied in the same output pass (no second sweep over y).
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

/* Memory layouts of osn_group_norm_act_f32's x and y. */
#define OSN_LAYOUT_NCHW 0   /* [batch, channels, spatial]: each channel's values contiguous */
#define OSN_LAYOUT_NHWC 1   /* [batch, spatial, channels]: channels-last, a group's channels adjacent */

/* osn_group_norm_f32 in either layout, optionally followed by SiLU: z = (x - mean_g) /
 * sqrt(var_g + epsilon) * scale[c] + bias[c], y = silu ? z * sigmoid(z) : z. Statistics are
 * per (batch item, group of channels_per_group consecutive channels) over all spatial
 * positions, whatever the layout. x is read twice (statistics, then output) and y written
 * once. y may be x itself (in place: every statistic is complete before any output is
 * written); it must not otherwise overlap x. */
int osn_group_norm_act_f32(
    osn_pool* pool,              /* threads to use (NULL: the calling thread) */
    float* y,                    /* output, x's shape and layout */
    const float* x,              /* [batch, C, spatial] (NCHW) or [batch, spatial, C] (NHWC), C = groups * channels_per_group */
    const float* scale,          /* [C] per-channel scale */
    const float* bias,           /* [C] per-channel bias */
    size_t batch,                /* N */
    size_t groups,               /* G */
    size_t channels_per_group,   /* C / G */
    size_t spatial,              /* pixels per channel (product of the spatial dims) */
    int layout,                  /* OSN_LAYOUT_NCHW or OSN_LAYOUT_NHWC */
    int silu,                    /* 1: apply SiLU (x * sigmoid(x)) to the normalised output */
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
