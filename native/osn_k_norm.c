/* Group/instance and layer normalisation (see osn_k_norm.h). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "osn_k_norm.h"
#include "osn_internal.h"
#include "osn_scalar.h"

/* The hot loops are plain C; on x86-64 GCC also compiles them for AVX2 and AVX-512 and the
 * loader picks the CPU's best (the baseline build targets SSE2 only). Without FP
 * contraction (-std=c11) every clone rounds identically. Elsewhere (the Pi's AArch64
 * baseline has NEON) this is empty. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define OSN_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define OSN_SIMD_CLONES
#endif

#define LANES 64                              /* independent float32 partial sums (4 AVX-512 vectors: adds overlap) */
#define BLOCK 4096                            /* elements per two-pass statistics block (16 KiB) */
#define CHUNK ((size_t)1 << 16)               /* elements per parallel task of a long row (256 KiB) */
#define NHWC_BLOCK 32768                      /* elements per channels-last statistics block (128 KiB, in L2) */
#define LAYER_NORM_TILE_ELEMS ((size_t)1 << 14)  /* rows per layer-norm task ~ 64 KiB */

/* z * sigmoid(z) = z / (1 + e^-z): e^-z is 0 for large z (y = z) and clamps at e^88 for very
 * negative z, where y is ~0 either way. */
static inline float silu_f32(float z) {
    return z / (1.0f + exp_f32(-z));
}

/* count, mean and sum of squared deviations (M2) of a set of values */
struct moments {
    double n, mean, m2;
};

/* Merge b into a (Chan, Golub & LeVeque's pairwise update). */
static void moments_merge(struct moments* a, struct moments b) {
    if (b.n == 0) return;
    if (a->n == 0) {
        *a = b;
        return;
    }
    const double n = a->n + b.n;
    const double d = b.mean - a->mean;
    a->mean += d * (b.n / n);
    a->m2 += b.m2 + d * d * (a->n * b.n / n);
    a->n = n;
}

OSN_SIMD_CLONES static float sum_f32(const float* restrict x, size_t n) {
    float s[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) s[j] += x[i + j];
    float r = 0.0f;
    for (; i < n; i++) r += x[i];
    for (int j = 0; j < LANES; j++) r += s[j];
    return r;
}

/* *sd = sum (x - c), *ss = sum (x - c)^2 */
OSN_SIMD_CLONES static void sum_dev_f32(const float* restrict x, size_t n, float c, float* sd, float* ss) {
    float s1[LANES] = {0}, s2[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) {
            const float d = x[i + j] - c;
            s1[j] += d;
            s2[j] += d * d;
        }
    float r1 = 0.0f, r2 = 0.0f;
    for (; i < n; i++) {
        const float d = x[i] - c;
        r1 += d;
        r2 += d * d;
    }
    for (int j = 0; j < LANES; j++) {
        r1 += s1[j];
        r2 += s2[j];
    }
    *sd = r1;
    *ss = r2;
}

/* Moments of n values from their sums of deviations about a shift c close to their mean:
 * sd = sum (x - c), ss = sum (x - c)^2. The deviations are small, so their sums are accurate
 * even when the first pass's float32 mean (c) is off by a few ulps of a large mean. */
static struct moments shifted_moments(double n, float c, double sd, double ss) {
    const double m2 = ss - sd * sd / n;
    return (struct moments){n, (double)c + sd / n, m2 > 0 ? m2 : 0};
}

/* Moments of x[0:n], two passes per BLOCK (the second from cache). */
static struct moments span_moments(const float* x, size_t n) {
    struct moments acc = {0, 0, 0};
    for (size_t b = 0; b < n; b += BLOCK) {
        const size_t bn = n - b < BLOCK ? n - b : BLOCK;
        const float c = (float)((double)sum_f32(x + b, bn) / (double)bn);
        float sd, ss;
        sum_dev_f32(x + b, bn, c, &sd, &ss);
        moments_merge(&acc, shifted_moments((double)bn, c, sd, ss));
    }
    return acc;
}

/* ------------------------------------------------------------------ group norm */
struct group_norm_ctx {
    float* y;
    const float* x;
    const float* scale;
    const float* bias;
    size_t groups, cpg, spatial, row_len, nchunks;
    double epsilon;
    int silu;
    struct moments* stats;   /* [rows, nchunks] (chunked path) */
    float* row_mean;         /* [rows] (chunked path) */
    double* row_invstd;      /* [rows] (chunked path) */
};

/* y = (x - mean) * (invstd * scale[ch]) + bias[ch] over elements [p0, p1) of row r. */
OSN_SIMD_CLONES static void group_norm_output(const struct group_norm_ctx* c, size_t r, size_t p0, size_t p1,
                              float mean, double invstd) {
    const float* x = c->x + r * c->row_len;
    float* y = c->y + r * c->row_len;
    const size_t ch0 = (r % c->groups) * c->cpg;
    for (size_t p = p0; p < p1;) {
        const size_t k = p / c->spatial;
        const size_t end = (k + 1) * c->spatial < p1 ? (k + 1) * c->spatial : p1;
        const float a = (float)(invstd * (double)c->scale[ch0 + k]);
        const float b = c->bias[ch0 + k];
        /* no restrict: y may be x itself (GCC's run-time alias check lets equal pointers
         * take the vector loop) */
        const float* xs = x + p;
        float* ys = y + p;
        if (c->silu) {
            for (size_t i = 0; i < end - p; i++) ys[i] = silu_f32((xs[i] - mean) * a + b);
        } else {
            for (size_t i = 0; i < end - p; i++) ys[i] = (xs[i] - mean) * a + b;
        }
        p = end;
    }
}

static double invstd_of(struct moments m, double epsilon) {
    return 1.0 / sqrt(m.m2 / m.n + epsilon);
}

/* Short rows: statistics and output of whole rows in one task (the row stays in cache). */
static void group_norm_row_task(void* arg, size_t r) {
    const struct group_norm_ctx* c = (const struct group_norm_ctx*)arg;
    const struct moments m = span_moments(c->x + r * c->row_len, c->row_len);
    group_norm_output(c, r, 0, c->row_len, (float)m.mean, invstd_of(m, c->epsilon));
}

static void group_norm_stats_task(void* arg, size_t r, size_t k) {
    const struct group_norm_ctx* c = (const struct group_norm_ctx*)arg;
    const size_t p0 = k * CHUNK;
    const size_t p1 = p0 + CHUNK < c->row_len ? p0 + CHUNK : c->row_len;
    c->stats[r * c->nchunks + k] = span_moments(c->x + r * c->row_len + p0, p1 - p0);
}

static void group_norm_output_task(void* arg, size_t r, size_t k) {
    const struct group_norm_ctx* c = (const struct group_norm_ctx*)arg;
    const size_t p0 = k * CHUNK;
    const size_t p1 = p0 + CHUNK < c->row_len ? p0 + CHUNK : c->row_len;
    group_norm_output(c, r, p0, p1, c->row_mean[r], c->row_invstd[r]);
}

/* NCHW: a group is one contiguous row of channels_per_group * spatial values. */
static int group_norm_nchw(pthreadpool_t tp, float* y, const float* x, const float* scale, const float* bias,
                           size_t batch, size_t groups, size_t channels_per_group, size_t spatial,
                           int silu, float epsilon) {
    const size_t rows = batch * groups;
    const size_t row_len = channels_per_group * spatial;
    struct group_norm_ctx c = {y, x, scale, bias, groups, channels_per_group, spatial, row_len,
                               (row_len + CHUNK - 1) / CHUNK, (double)epsilon, silu, NULL, NULL, NULL};
    if (c.nchunks == 1) {
        pthreadpool_parallelize_1d(tp, group_norm_row_task, &c, rows, OSN_PARALLEL_FLAGS);
        return 0;
    }
    c.stats = (struct moments*)malloc(rows * c.nchunks * sizeof(struct moments));
    c.row_mean = (float*)malloc(rows * sizeof(float));
    c.row_invstd = (double*)malloc(rows * sizeof(double));
    if (c.stats == NULL || c.row_mean == NULL || c.row_invstd == NULL) {
        free(c.stats);
        free(c.row_mean);
        free(c.row_invstd);
        return OSN_E_OUT_OF_MEMORY;
    }
    pthreadpool_parallelize_2d(tp, group_norm_stats_task, &c, rows, c.nchunks, OSN_PARALLEL_FLAGS);
    for (size_t r = 0; r < rows; r++) {
        struct moments m = {0, 0, 0};
        for (size_t k = 0; k < c.nchunks; k++) moments_merge(&m, c.stats[r * c.nchunks + k]);
        c.row_mean[r] = (float)m.mean;
        c.row_invstd[r] = invstd_of(m, c.epsilon);
    }
    pthreadpool_parallelize_2d(tp, group_norm_output_task, &c, rows, c.nchunks, OSN_PARALLEL_FLAGS);
    free(c.stats);
    free(c.row_mean);
    free(c.row_invstd);
    return 0;
}

/* ------------------------------------------------------------------ group norm, channels-last */
/* x is [batch, spatial, C]: a pixel's C channels are contiguous and group g is the run of
 * channels [g * cpg, (g + 1) * cpg) of every pixel. Tasks are (batch item, tile of pixels);
 * each sums per channel over blocks of pixels (loops along the contiguous channel axis, which
 * vectorise for any group size), folds the channels of a group into that block's moments and
 * merges them; the calling thread then merges the tiles of each (n, g), and a second parallel
 * call writes the output. Measured against one parallel call whose tasks each own a slab of
 * whole groups (statistics and output, sweeping the slab's columns of every pixel): equal
 * at UNet sizes, 4x slower at the VAE's 128x128x512 and 256x256x256, whose strided sweeps
 * pull far more memory than they use. */
struct group_norm_nhwc_ctx {
    float* y;
    const float* x;
    const float* scale;
    const float* bias;
    size_t channels, groups, cpg, spatial, tile_px, ntiles;
    int silu;
    struct moments* stats;   /* [batch, ntiles, groups] */
    float* ch_mean;          /* [batch, C] mean of the channel's group */
    float* ch_mul;           /* [batch, C] invstd of the channel's group * scale[c] */
};

/* s[c] = sum over px pixels of x[p, c]. Four pixels per sweep: the running sums s are
 * loaded and stored once per four pixels, not once per pixel. */
OSN_SIMD_CLONES static void channel_sums(float* restrict s, const float* restrict x, size_t px, size_t nc) {
    for (size_t ch = 0; ch < nc; ch++) s[ch] = 0.0f;
    size_t p = 0;
    for (; p + 4 <= px; p += 4) {
        const float* restrict x0 = x + p * nc;
        for (size_t ch = 0; ch < nc; ch++)
            s[ch] += (x0[ch] + x0[nc + ch]) + (x0[2 * nc + ch] + x0[3 * nc + ch]);
    }
    for (; p < px; p++)
        for (size_t ch = 0; ch < nc; ch++) s[ch] += x[p * nc + ch];
}

/* sd[c] = sum over px pixels of (x[p, c] - m[c]), ss[c] of its square (four pixels per sweep) */
OSN_SIMD_CLONES static void channel_devs(float* restrict sd, float* restrict ss, const float* restrict x,
                                         const float* restrict m, size_t px, size_t nc) {
    for (size_t ch = 0; ch < nc; ch++) sd[ch] = ss[ch] = 0.0f;
    size_t p = 0;
    for (; p + 4 <= px; p += 4) {
        const float* restrict x0 = x + p * nc;
        for (size_t ch = 0; ch < nc; ch++) {
            const float d0 = x0[ch] - m[ch], d1 = x0[nc + ch] - m[ch];
            const float d2 = x0[2 * nc + ch] - m[ch], d3 = x0[3 * nc + ch] - m[ch];
            sd[ch] += (d0 + d1) + (d2 + d3);
            ss[ch] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
        }
    }
    for (; p < px; p++)
        for (size_t ch = 0; ch < nc; ch++) {
            const float d = x[p * nc + ch] - m[ch];
            sd[ch] += d;
            ss[ch] += d * d;
        }
}

static void group_norm_nhwc_stats_task(void* arg, size_t n, size_t t) {
    const struct group_norm_nhwc_ctx* c = (const struct group_norm_nhwc_ctx*)arg;
    const size_t nc = c->channels, cpg = c->cpg, groups = c->groups;
    const size_t p0 = t * c->tile_px;
    const size_t p1 = p0 + c->tile_px < c->spatial ? p0 + c->tile_px : c->spatial;
    const float* x = c->x + n * c->spatial * nc;
    struct moments* st = c->stats + (n * c->ntiles + t) * groups;
    for (size_t g = 0; g < groups; g++) st[g] = (struct moments){0, 0, 0};
    /* scratch: per-channel sums (2) and per-channel block means */
    float* buf = (float*)malloc(3 * nc * sizeof(float));
    if (buf == NULL) {
        st[0].n = -1;   /* out of memory: reported by the caller */
        return;
    }
    float* s1 = buf;
    float* s2 = buf + nc;
    float* m = buf + 2 * nc;
    /* Blocks of ~NHWC_BLOCK elements, so the second pass over a block comes from L1/L2, of
     * >= 4 pixels (one sweep; with C in the thousands a block of one pixel would spend as
     * long folding groups as summing), and of <= BLOCK / LANES pixels, so no float32
     * per-channel sum runs longer than the NCHW kernel's per-lane sums. */
    size_t block_px = NHWC_BLOCK / nc;
    if (block_px < 4) block_px = 4;
    if (block_px > BLOCK / LANES) block_px = BLOCK / LANES;
    for (size_t p = p0; p < p1; p += block_px) {
        const size_t np = p1 - p < block_px ? p1 - p : block_px;
        const float* xb = x + p * nc;
        const double cnt = (double)(np * cpg);
        channel_sums(s1, xb, np, nc);
        for (size_t g = 0; g < groups; g++) {
            double sum = 0;
            for (size_t k = 0; k < cpg; k++) sum += s1[g * cpg + k];
            const float c = (float)(sum / cnt);
            for (size_t k = 0; k < cpg; k++) m[g * cpg + k] = c;
        }
        channel_devs(s1, s2, xb, m, np, nc);
        for (size_t g = 0; g < groups; g++) {
            double sd = 0, ss = 0;
            for (size_t k = 0; k < cpg; k++) {
                sd += s1[g * cpg + k];
                ss += s2[g * cpg + k];
            }
            moments_merge(&st[g], shifted_moments(cnt, m[g * cpg], sd, ss));
        }
    }
    free(buf);
}

OSN_SIMD_CLONES static void group_norm_nhwc_output_task(void* arg, size_t n, size_t t) {
    const struct group_norm_nhwc_ctx* c = (const struct group_norm_nhwc_ctx*)arg;
    const size_t nc = c->channels;
    const size_t p0 = t * c->tile_px;
    const size_t p1 = p0 + c->tile_px < c->spatial ? p0 + c->tile_px : c->spatial;
    const float* restrict mean = c->ch_mean + n * nc;
    const float* restrict mul = c->ch_mul + n * nc;
    const float* restrict bias = c->bias;
    for (size_t p = p0; p < p1; p++) {
        const float* x = c->x + (n * c->spatial + p) * nc;   /* y may be x (in place) */
        float* y = c->y + (n * c->spatial + p) * nc;
        if (c->silu) {
            for (size_t ch = 0; ch < nc; ch++) y[ch] = silu_f32((x[ch] - mean[ch]) * mul[ch] + bias[ch]);
        } else {
            for (size_t ch = 0; ch < nc; ch++) y[ch] = (x[ch] - mean[ch]) * mul[ch] + bias[ch];
        }
    }
}

static int group_norm_nhwc(pthreadpool_t tp, float* y, const float* x, const float* scale, const float* bias,
                           size_t batch, size_t groups, size_t channels_per_group, size_t spatial,
                           int silu, float epsilon) {
    const size_t nc = groups * channels_per_group;
    const size_t tile_px = CHUNK / nc ? CHUNK / nc : 1;
    struct group_norm_nhwc_ctx c = {y, x, scale, bias, nc, groups, channels_per_group, spatial, tile_px,
                                    (spatial + tile_px - 1) / tile_px, silu, NULL, NULL, NULL};
    c.stats = (struct moments*)malloc(batch * c.ntiles * groups * sizeof(struct moments));
    c.ch_mean = (float*)malloc(batch * nc * sizeof(float));
    c.ch_mul = (float*)malloc(batch * nc * sizeof(float));
    int status = 0;
    if (c.stats == NULL || c.ch_mean == NULL || c.ch_mul == NULL) {
        status = OSN_E_OUT_OF_MEMORY;
        goto done;
    }
    pthreadpool_parallelize_2d(tp, group_norm_nhwc_stats_task, &c, batch, c.ntiles, OSN_PARALLEL_FLAGS);
    for (size_t n = 0; n < batch; n++) {
        for (size_t g = 0; g < groups; g++) {
            struct moments m = {0, 0, 0};
            for (size_t t = 0; t < c.ntiles; t++) {
                const struct moments* st = c.stats + (n * c.ntiles + t) * groups;
                if (st[0].n < 0) {
                    status = OSN_E_OUT_OF_MEMORY;
                    goto done;
                }
                moments_merge(&m, st[g]);
            }
            const double invstd = invstd_of(m, (double)epsilon);
            for (size_t k = 0; k < channels_per_group; k++) {
                const size_t ch = g * channels_per_group + k;
                c.ch_mean[n * nc + ch] = (float)m.mean;
                c.ch_mul[n * nc + ch] = (float)(invstd * (double)scale[ch]);
            }
        }
    }
    pthreadpool_parallelize_2d(tp, group_norm_nhwc_output_task, &c, batch, c.ntiles, OSN_PARALLEL_FLAGS);
done:
    free(c.stats);
    free(c.ch_mean);
    free(c.ch_mul);
    return status;
}

int osn_group_norm_act_f32(osn_pool* pool, float* y, const float* x, const float* scale, const float* bias,
                           size_t batch, size_t groups, size_t channels_per_group, size_t spatial,
                           int layout, int silu, float epsilon) {
    if (groups == 0 || channels_per_group == 0) return OSN_E_INVALID_ARGUMENT;
    if (layout != OSN_LAYOUT_NCHW && layout != OSN_LAYOUT_NHWC) return OSN_E_INVALID_ARGUMENT;
    if (batch == 0 || spatial == 0) return 0;
    if (y == NULL || x == NULL || scale == NULL || bias == NULL) return OSN_E_INVALID_ARGUMENT;
    pthreadpool_t tp = osn_pool_handle(pool);
    /* One pixel is the NCHW case as well, where whole rows are the cheaper split. */
    if (layout == OSN_LAYOUT_NHWC && spatial > 1)
        return group_norm_nhwc(tp, y, x, scale, bias, batch, groups, channels_per_group, spatial, silu != 0,
                               epsilon);
    return group_norm_nchw(tp, y, x, scale, bias, batch, groups, channels_per_group, spatial, silu != 0, epsilon);
}

int osn_group_norm_f32(osn_pool* pool, float* y, const float* x, const float* scale, const float* bias,
                       size_t batch, size_t groups, size_t channels_per_group, size_t spatial,
                       float epsilon) {
    return osn_group_norm_act_f32(pool, y, x, scale, bias, batch, groups, channels_per_group, spatial,
                                  OSN_LAYOUT_NCHW, 0, epsilon);
}

/* ------------------------------------------------------------------ layer norm */
struct layer_norm_ctx {
    float* y;
    float* mean;
    float* invstd;
    const float* x;
    const float* scale;
    const float* bias;
    size_t cols;
    double epsilon;
};

OSN_SIMD_CLONES static void layer_norm_task(void* arg, size_t row0, size_t nrows) {
    const struct layer_norm_ctx* c = (const struct layer_norm_ctx*)arg;
    const size_t n = c->cols;
    const float* restrict scale = c->scale;
    const float* restrict bias = c->bias;
    for (size_t r = row0; r < row0 + nrows; r++) {
        const float* restrict x = c->x + r * n;
        float* restrict y = c->y + r * n;
        const struct moments m = span_moments(x, n);
        const float mu = (float)m.mean;
        const float inv = (float)invstd_of(m, c->epsilon);
        if (c->mean) c->mean[r] = mu;
        if (c->invstd) c->invstd[r] = inv;
        if (bias) {
            for (size_t i = 0; i < n; i++) y[i] = (x[i] - mu) * inv * scale[i] + bias[i];
        } else {
            for (size_t i = 0; i < n; i++) y[i] = (x[i] - mu) * inv * scale[i];
        }
    }
}

int osn_layer_norm_f32(osn_pool* pool, float* y, float* mean, float* invstd, const float* x,
                       const float* scale, const float* bias, size_t rows, size_t cols, float epsilon) {
    if (rows == 0 || cols == 0) return 0;
    if (y == NULL || x == NULL || scale == NULL) return OSN_E_INVALID_ARGUMENT;
    struct layer_norm_ctx c = {y, mean, invstd, x, scale, bias, cols, (double)epsilon};
    const size_t tile = LAYER_NORM_TILE_ELEMS / cols;
    pthreadpool_parallelize_1d_tile_1d(osn_pool_handle(pool), layer_norm_task, &c, rows, tile ? tile : 1, OSN_PARALLEL_FLAGS);
    return 0;
}
