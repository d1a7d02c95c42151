/* SiLU-family and GEGLU activations (see osn_k_act.h). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "osn_k_act.h"
#include "osn_internal.h"
#include "osn_scalar.h"

/* See osn_k_math.c: AVX2/AVX-512 clones of the hot loops on x86-64 with GCC. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define OSN_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define OSN_SIMD_CLONES
#endif

#define TILE ((size_t)1 << 14)   /* elements per task: 64 KiB of float32 */
#define CHUNK 1024               /* elements per local buffer (4 KiB, in L1) */

/* erf and tanh come from osn_scalar.h, shared with osn_k_math.c (same fit, same rounding:
 * GeluMul equals Gelu then Mul exactly). Calling osn_gelu_f32 on L1 chunks instead measured
 * ~30 % slower single-threaded (a pool-less pthreadpool call per chunk). */

/* A task covers elements [start, start + n) of the logical [rows, cols] matrix; it walks
 * them in pieces that stay inside one row and hold at most CHUNK elements. */
struct act_ctx {
    float* y;
    const float* x;
    const float* m;
    size_t cols, x_stride, m_stride;
    float alpha;
    int approximate;
};

OSN_SIMD_CLONES static void silu_piece(float* y, const float* restrict buf, size_t n, float alpha) {
    for (size_t j = 0; j < n; j++) {
        const float v = buf[j];
        y[j] = v / (1.0f + exp_f32(-(alpha * v)));
    }
}

static void silu_task(void* arg, size_t start, size_t n) {
    const struct act_ctx* c = (const struct act_ctx*)arg;
    float buf[CHUNK];
    for (size_t i = start; i < start + n;) {
        const size_t r = i / c->cols, col = i % c->cols;
        size_t k = c->cols - col;
        if (k > start + n - i) k = start + n - i;
        if (k > CHUNK) k = CHUNK;
        memcpy(buf, c->x + r * c->x_stride + col, k * sizeof(float));
        silu_piece(c->y + i, buf, k, c->alpha);
        i += k;
    }
}

/* y = mb * gelu(xb), gelu exactly as osn_k_math.c's gelu_task */
OSN_SIMD_CLONES static void gelu_mul_piece(float* y, const float* restrict xb, const float* restrict mb, size_t n,
                                           int approximate) {
    if (approximate) {
        for (size_t j = 0; j < n; j++) {
            const float w = xb[j];
            const float inner = (w * w * 0.044715f + 1.0f) * w * 0.7978845608028654f;
            y[j] = mb[j] * ((tanh_f32(inner) + 1.0f) * w * 0.5f);
        }
    } else {
        for (size_t j = 0; j < n; j++) {
            const float w = xb[j];
            y[j] = mb[j] * ((erf_f32(w * 0.7071067811865475f) + 1.0f) * w * 0.5f);
        }
    }
}

/* x and m are each read once from memory and y written once (the chunks are L1 copies, so
 * y may alias a contiguous input). */
static void gelu_mul_task(void* arg, size_t start, size_t n) {
    const struct act_ctx* c = (const struct act_ctx*)arg;
    float xb[CHUNK], mb[CHUNK];
    for (size_t i = start; i < start + n;) {
        const size_t r = i / c->cols, col = i % c->cols;
        size_t k = c->cols - col;
        if (k > start + n - i) k = start + n - i;
        if (k > CHUNK) k = CHUNK;
        memcpy(xb, c->x + r * c->x_stride + col, k * sizeof(float));
        memcpy(mb, c->m + r * c->m_stride + col, k * sizeof(float));
        gelu_mul_piece(c->y + i, xb, mb, k, c->approximate);
        i += k;
    }
}

int osn_silu_f32(osn_pool* pool, float* y, const float* x, size_t rows, size_t cols, size_t x_row_stride,
                 float alpha) {
    if (rows == 0 || cols == 0) return 0;
    if (y == NULL || x == NULL || x_row_stride < cols) return OSN_E_INVALID_ARGUMENT;
    struct act_ctx c = {y, x, NULL, cols, x_row_stride, 0, alpha, 0};
    pthreadpool_parallelize_1d_tile_1d(osn_pool_handle(pool), silu_task, &c, rows * cols, TILE, OSN_PARALLEL_FLAGS);
    return 0;
}

int osn_gelu_mul_f32(osn_pool* pool, float* y, const float* x, const float* m, size_t rows, size_t cols,
                     size_t x_row_stride, size_t m_row_stride, int approximate) {
    if (approximate != 0 && approximate != 1) return OSN_E_INVALID_ARGUMENT;
    if (rows == 0 || cols == 0) return 0;
    if (y == NULL || x == NULL || m == NULL || x_row_stride < cols || m_row_stride < cols)
        return OSN_E_INVALID_ARGUMENT;
    struct act_ctx c = {y, x, m, cols, x_row_stride, m_row_stride, 1.0f, approximate};
    pthreadpool_parallelize_1d_tile_1d(osn_pool_handle(pool), gelu_mul_task, &c, rows * cols, TILE,
                                       OSN_PARALLEL_FLAGS);
    return 0;
}
