/* Erf, Gelu and Softmax in float32 (see osn_k_math.h).
 *
 * Elementwise kernels copy each small chunk of x into a local buffer first, so y may alias
 * x while the compiler still sees two distinct arrays and vectorises without run-time
 * overlap checks. Work is split into tiles of a few tens of KiB per pthreadpool task.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "osn_k_math.h"
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

#define ELEMENTWISE_TILE ((size_t)1 << 14)   /* elements per task: 64 KiB of float32 */
#define CHUNK 256                            /* elements per local buffer (1 KiB, in L1) */
#define LANES 16                             /* independent partial sums/maxima per row */
#define SOFTMAX_ROW_ELEMS ((size_t)1 << 14)  /* rows per softmax task ~ 64 KiB of input */

/* ------------------------------------------------------------------ elementwise driver */
struct unary_ctx {
    float* y;
    const float* x;
    int approximate;
};

OSN_SIMD_CLONES static void erf_task(void* arg, size_t start, size_t n) {
    const struct unary_ctx* c = (const struct unary_ctx*)arg;
    float buf[CHUNK];
    for (size_t i = start; i < start + n; i += CHUNK) {
        const size_t m = start + n - i < CHUNK ? start + n - i : CHUNK;
        memcpy(buf, c->x + i, m * sizeof(float));
        float* y = c->y + i;
        for (size_t j = 0; j < m; j++) y[j] = erf_f32(buf[j]);
    }
}

OSN_SIMD_CLONES static void gelu_task(void* arg, size_t start, size_t n) {
    const struct unary_ctx* c = (const struct unary_ctx*)arg;
    float buf[CHUNK];
    for (size_t i = start; i < start + n; i += CHUNK) {
        const size_t m = start + n - i < CHUNK ? start + n - i : CHUNK;
        memcpy(buf, c->x + i, m * sizeof(float));
        float* y = c->y + i;
        if (c->approximate) {
            for (size_t j = 0; j < m; j++) {
                const float w = buf[j];
                const float inner = (w * w * 0.044715f + 1.0f) * w * 0.7978845608028654f;
                y[j] = (tanh_f32(inner) + 1.0f) * w * 0.5f;
            }
        } else {
            for (size_t j = 0; j < m; j++) {
                const float w = buf[j];
                y[j] = (erf_f32(w * 0.7071067811865475f) + 1.0f) * w * 0.5f;
            }
        }
    }
}

int osn_erf_f32(osn_pool* pool, float* y, const float* x, size_t count) {
    if ((y == NULL || x == NULL) && count != 0) return OSN_E_INVALID_ARGUMENT;
    struct unary_ctx c = {y, x, 0};
    pthreadpool_parallelize_1d_tile_1d(osn_pool_handle(pool), erf_task, &c, count, ELEMENTWISE_TILE, OSN_PARALLEL_FLAGS);
    return 0;
}

int osn_gelu_f32(osn_pool* pool, float* y, const float* x, size_t count, int approximate) {
    if ((y == NULL || x == NULL) && count != 0) return OSN_E_INVALID_ARGUMENT;
    if (approximate != 0 && approximate != 1) return OSN_E_INVALID_ARGUMENT;
    struct unary_ctx c = {y, x, approximate};
    pthreadpool_parallelize_1d_tile_1d(osn_pool_handle(pool), gelu_task, &c, count, ELEMENTWISE_TILE, OSN_PARALLEL_FLAGS);
    return 0;
}

/* ------------------------------------------------------------------ softmax */

OSN_SIMD_CLONES static float row_max(const float* x, size_t n) {
    int32_t m = INT32_MIN;
    for (size_t i = 0; i < n; i++) {
        const int32_t k = order_key(x[i]);
        m = k > m ? k : m;
    }
    const int32_t bits = m ^ ((m >> 31) & 0x7fffffff);
    float r;
    memcpy(&r, &bits, sizeof r);
    return r;
}

/* y = exp(x - mx); returns sum(y). Partial sums of <= 4096 elements go in float lanes and
 * are accumulated across those blocks in double. y may alias x: each CHUNK of x is copied
 * to a local buffer first. */
OSN_SIMD_CLONES static double row_exp_sum(float* y, const float* x, size_t n, float mx) {
    double total = 0.0;
    float buf[CHUNK];
    for (size_t b = 0; b < n; b += 4096) {
        const size_t bn = n - b < 4096 ? n - b : 4096;
        float s[LANES] = {0};
        float r = 0.0f;
        for (size_t c = 0; c < bn; c += CHUNK) {
            const size_t m = bn - c < CHUNK ? bn - c : CHUNK;
            memcpy(buf, x + b + c, m * sizeof(float));
            float* yc = y + b + c;
            size_t i = 0;
            for (; i + LANES <= m; i += LANES)
                for (int j = 0; j < LANES; j++) {
                    const float e = exp_f32(buf[i + j] - mx);
                    yc[i + j] = e;
                    s[j] += e;
                }
            for (; i < m; i++) {
                const float e = exp_f32(buf[i] - mx);
                yc[i] = e;
                r += e;
            }
        }
        for (int j = 0; j < LANES; j++) r += s[j];
        total += r;
    }
    return total;
}

struct softmax_ctx {
    float* y;
    const float* x;
    size_t cols;
};

OSN_SIMD_CLONES static void softmax_task(void* arg, size_t row0, size_t nrows) {
    const struct softmax_ctx* c = (const struct softmax_ctx*)arg;
    for (size_t r = row0; r < row0 + nrows; r++) {
        const float* x = c->x + r * c->cols;
        float* y = c->y + r * c->cols;
        const float mx = row_max(x, c->cols);
        const float inv = (float)(1.0 / row_exp_sum(y, x, c->cols, mx));
        for (size_t i = 0; i < c->cols; i++) y[i] *= inv;
    }
}

int osn_softmax_f32(osn_pool* pool, float* y, const float* x, size_t rows, size_t cols) {
    if ((y == NULL || x == NULL) && rows * cols != 0) return OSN_E_INVALID_ARGUMENT;
    if (cols == 0) return 0;
    struct softmax_ctx c = {y, x, cols};
    size_t tile = SOFTMAX_ROW_ELEMS / cols;
    pthreadpool_parallelize_1d_tile_1d(osn_pool_handle(pool), softmax_task, &c, rows, tile ? tile : 1, OSN_PARALLEL_FLAGS);
    return 0;
}
