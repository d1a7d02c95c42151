/* Group/instance and layer normalisation (see osn_k_norm.h). */
#include <math.h>
#include <stdlib.h>

#include "osn_k_norm.h"
#include "osn_internal.h"

/* The hot loops are plain C; on x86-64 GCC also compiles them for AVX2 and AVX-512 and the
 * loader picks the CPU's best (the baseline build targets SSE2 only). Without FP
 * contraction (-std=c11) every clone rounds identically. Elsewhere (the Pi's AArch64
 * baseline has NEON) this is empty. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define OSN_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define OSN_SIMD_CLONES
#endif

#define LANES 16                              /* independent float32 partial sums */
#define BLOCK 4096                            /* elements per two-pass statistics block (16 KiB) */
#define CHUNK ((size_t)1 << 16)               /* elements per parallel task of a long row (256 KiB) */
#define LAYER_NORM_TILE_ELEMS ((size_t)1 << 14)  /* rows per layer-norm task ~ 64 KiB */

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

OSN_SIMD_CLONES static float sum_sq_dev_f32(const float* restrict x, size_t n, float c) {
    float s[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) {
            const float d = x[i + j] - c;
            s[j] += d * d;
        }
    float r = 0.0f;
    for (; i < n; i++) {
        const float d = x[i] - c;
        r += d * d;
    }
    for (int j = 0; j < LANES; j++) r += s[j];
    return r;
}

/* Moments of x[0:n], two passes per BLOCK (the second from cache). */
static struct moments span_moments(const float* x, size_t n) {
    struct moments acc = {0, 0, 0};
    for (size_t b = 0; b < n; b += BLOCK) {
        const size_t bn = n - b < BLOCK ? n - b : BLOCK;
        const double mean = (double)sum_f32(x + b, bn) / (double)bn;
        const float c = (float)mean;
        /* deviations are taken about c = float(mean): sum (x - c)^2 = M2 + n (mean - c)^2 */
        double m2 = (double)sum_sq_dev_f32(x + b, bn, c) - (double)bn * (mean - c) * (mean - c);
        struct moments blk = {(double)bn, mean, m2 > 0 ? m2 : 0};
        moments_merge(&acc, blk);
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
        const float* restrict xs = x + p;
        float* restrict ys = y + p;
        for (size_t i = 0; i < end - p; i++) ys[i] = (xs[i] - mean) * a + b;
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

int osn_group_norm_f32(osn_pool* pool, float* y, const float* x, const float* scale, const float* bias,
                       size_t batch, size_t groups, size_t channels_per_group, size_t spatial,
                       float epsilon) {
    if (groups == 0 || channels_per_group == 0) return OSN_E_INVALID_ARGUMENT;
    const size_t rows = batch * groups;
    const size_t row_len = channels_per_group * spatial;
    if (rows == 0 || row_len == 0) return 0;
    if (y == NULL || x == NULL || scale == NULL || bias == NULL) return OSN_E_INVALID_ARGUMENT;
    pthreadpool_t tp = osn_pool_handle(pool);
    struct group_norm_ctx c = {y, x, scale, bias, groups, channels_per_group, spatial, row_len,
                               (row_len + CHUNK - 1) / CHUNK, (double)epsilon, NULL, NULL, NULL};
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
