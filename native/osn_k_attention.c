/* Scaled, masked, unnormalised softmax of an attention score block (see osn_k_attention.h).
 *
 * Two passes per row: the maximum of t = s * scale (+ mask), then exp(t - max) with its
 * sum. A row of SD 1.5 scores (4096 floats, 16 KiB) stays in L1 between the passes, so
 * the block comes from memory once. Without a mask the maximum pass only reads s, and the
 * exp pass recomputes t = s * scale (one multiply, far cheaper than a store and a reload),
 * rounded exactly as numpy's s *= scale.
 */
#include <stdint.h>
#include <string.h>

#include "osn_k_attention.h"
#include "osn_internal.h"
#include "osn_scalar.h"

/* As in osn_k_math.c: the plain C loops are also compiled for AVX2 and AVX-512 on x86-64. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define OSN_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define OSN_SIMD_CLONES
#endif

#define LANES 16                        /* independent partial sums per row */
#define SUM_BLOCK 4096                  /* float partial sums per block, blocks summed in double */
#define ROW_ELEMS_PER_TASK ((size_t)1 << 15)   /* rows per pool task ~ 128 KiB of scores */

OSN_SIMD_CLONES static float max_scaled(const float* s, size_t n, float scale) {
    int32_t m = INT32_MIN;
    for (size_t i = 0; i < n; i++) {
        const int32_t k = order_key(s[i] * scale);
        m = k > m ? k : m;
    }
    return key_value(m);
}

/* s = s * scale + mask, in place; returns the maximum. */
OSN_SIMD_CLONES static float add_mask_max(float* s, const float* mask, size_t n, float scale) {
    int32_t m = INT32_MIN;
    for (size_t i = 0; i < n; i++) {
        const float t = s[i] * scale + mask[i];
        s[i] = t;
        const int32_t k = order_key(t);
        m = k > m ? k : m;
    }
    return key_value(m);
}

/* s = exp(s * scale - mx) in place; returns the sum (float lanes over blocks, double across). */
OSN_SIMD_CLONES static double exp_sum(float* s, size_t n, float scale, float mx) {
    double total = 0.0;
    for (size_t b = 0; b < n; b += SUM_BLOCK) {
        const size_t bn = n - b < SUM_BLOCK ? n - b : SUM_BLOCK;
        float* x = s + b;
        float acc[LANES] = {0};
        float r = 0.0f;
        size_t i = 0;
        for (; i + LANES <= bn; i += LANES)
            for (int j = 0; j < LANES; j++) {
                const float e = exp_nonpos_f32(x[i + j] * scale - mx);
                x[i + j] = e;
                acc[j] += e;
            }
        for (; i < bn; i++) {
            const float e = exp_nonpos_f32(x[i] * scale - mx);
            x[i] = e;
            r += e;
        }
        for (int j = 0; j < LANES; j++) r += acc[j];
        total += r;
    }
    return total;
}

struct attn_exp_ctx {
    float* s;
    float* sums;
    const float* mask;
    size_t mask_stride;
    size_t cols;
    float scale;
};

static void attn_exp_task(void* arg, size_t row0, size_t nrows) {
    const struct attn_exp_ctx* c = (const struct attn_exp_ctx*)arg;
    for (size_t r = row0; r < row0 + nrows; r++) {
        float* s = c->s + r * c->cols;
        float mx, scale = c->scale;
        if (c->mask != NULL) {
            mx = add_mask_max(s, c->mask + r * c->mask_stride, c->cols, scale);
            scale = 1.0f;
        } else {
            mx = max_scaled(s, c->cols, scale);
        }
        /* an all -inf row: numpy gives NaN (-inf - -inf); so does exp(NaN) here */
        c->sums[r] = (float)exp_sum(s, c->cols, scale, mx);
    }
}

int osn_attention_exp_f32(osn_pool* pool, float* s, float* row_sums, const float* mask,
                          size_t mask_row_stride, size_t rows, size_t cols, float scale) {
    if (rows == 0) return 0;
    if (s == NULL || row_sums == NULL || cols == 0) return OSN_E_INVALID_ARGUMENT;
    struct attn_exp_ctx c = {s, row_sums, mask, mask_row_stride, cols, scale};
    const size_t tile = ROW_ELEMS_PER_TASK / cols;
    pthreadpool_parallelize_1d_tile_1d(osn_pool_handle(pool), attn_exp_task, &c, rows, tile ? tile : 1,
                                       OSN_PARALLEL_FLAGS);
    return 0;
}

/* ------------------------------------------------------------------ transposed scores */
/* Columns are processed COL_TILE at a time (128 = the op's block width at 4096 keys:
 * 6.4 ms per 4096x4096 head against 7.2 ms with 64 and 10 ms with 16): the running maxima
 * and sums of a tile live in small arrays, and every inner loop runs along a row of the
 * tile (contiguous, no horizontal reduction). Sums go in float over SUM_ROWS rows, then
 * into double. */
#define COL_TILE 128
#define SUM_ROWS 256

struct attn_exp_t_ctx {
    float* st;
    float* sums;
    size_t keys;
    size_t queries;
    float scale;
};

OSN_SIMD_CLONES static void attn_exp_t_task(void* arg, size_t c0, size_t nc) {
    const struct attn_exp_t_ctx* c = (const struct attn_exp_t_ctx*)arg;
    const size_t ld = c->queries;
    const float scale = c->scale;
    int32_t mk[COL_TILE];
    float mx[COL_TILE], acc[COL_TILE];
    double total[COL_TILE];
    for (size_t i = 0; i < nc; i++) {
        mk[i] = INT32_MIN;
        total[i] = 0.0;
    }
    for (size_t j = 0; j < c->keys; j++) {
        const float* row = c->st + j * ld + c0;
        for (size_t i = 0; i < nc; i++) {
            const int32_t k = order_key(row[i] * scale);
            mk[i] = k > mk[i] ? k : mk[i];
        }
    }
    for (size_t i = 0; i < nc; i++) mx[i] = key_value(mk[i]);
    for (size_t j0 = 0; j0 < c->keys; j0 += SUM_ROWS) {
        const size_t j1 = c->keys - j0 < SUM_ROWS ? c->keys : j0 + SUM_ROWS;
        for (size_t i = 0; i < nc; i++) acc[i] = 0.0f;
        for (size_t j = j0; j < j1; j++) {
            float* row = c->st + j * ld + c0;
            for (size_t i = 0; i < nc; i++) {
                const float e = exp_nonpos_f32(row[i] * scale - mx[i]);
                row[i] = e;
                acc[i] += e;
            }
        }
        for (size_t i = 0; i < nc; i++) total[i] += acc[i];
    }
    for (size_t i = 0; i < nc; i++) c->sums[c0 + i] = (float)total[i];
}

int osn_attention_exp_t_f32(osn_pool* pool, float* st, float* col_sums, size_t keys, size_t queries,
                            float scale) {
    if (queries == 0) return 0;
    if (st == NULL || col_sums == NULL || keys == 0) return OSN_E_INVALID_ARGUMENT;
    struct attn_exp_t_ctx c = {st, col_sums, keys, queries, scale};
    pthreadpool_parallelize_1d_tile_1d(osn_pool_handle(pool), attn_exp_t_task, &c, queries, COL_TILE,
                                       OSN_PARALLEL_FLAGS);
    return 0;
}
