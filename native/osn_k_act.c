/* SiLU-family and GEGLU activations (see osn_k_act.h). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "osn_k_act.h"
#include "osn_internal.h"

/* See osn_k_math.c: AVX2/AVX-512 clones of the hot loops on x86-64 with GCC. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define OSN_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define OSN_SIMD_CLONES
#endif

#define TILE ((size_t)1 << 14)   /* elements per task: 64 KiB of float32 */
#define CHUNK 1024               /* elements per local buffer (4 KiB, in L1) */

/* cond ? a : b as bit masks, so loops calling it vectorise (see osn_k_math.c). */
static inline float select_f32(int cond, float a, float b) {
    uint32_t ua, ub;
    memcpy(&ua, &a, sizeof ua);
    memcpy(&ub, &b, sizeof ub);
    const uint32_t m = 0u - (uint32_t)(cond != 0);
    const uint32_t r = (ua & m) | (ub & ~m);
    float f;
    memcpy(&f, &r, sizeof f);
    return f;
}

/* e^x, a copy of osn_k_math.c's exp_f32 (Cody-Waite reduction, degree-7 Estrin polynomial,
 * < 1e-7 relative; 0 below -87.33, clamped above 88). Copied, as osn_k_norm.c does, because
 * every public header is cffi input and cannot carry static inline bodies; keep the copies
 * in step. */
static inline float exp_f32(float x) {
    const float magic = 0x1.8p23f;
    float xc = select_f32(x < -87.33f, -87.33f, x);
    xc = select_f32(xc > 88.0f, 88.0f, xc);
    const float t = xc * 1.44269504088896341f + magic;
    const float n = t - magic;
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440054690583e-4f;
    const float r2 = r * r;
    const float r4 = r2 * r2;
    const float q01 = 1.0f + r;
    const float q23 = 0.5f + r * (1.0f / 6.0f);
    const float q45 = 1.0f / 24.0f + r * (1.0f / 120.0f);
    const float q67 = 1.0f / 720.0f + r * (1.0f / 5040.0f);
    const float p = (q01 + r2 * q23) + r4 * (q45 + r2 * q67);
    uint32_t tb;
    memcpy(&tb, &t, sizeof tb);
    const uint32_t sb = (tb + 127u) << 23;
    float scale;
    memcpy(&scale, &sb, sizeof scale);
    return select_f32(x < -87.33f, 0.0f, p * scale);
}

/* erf and tanh, copies of osn_k_math.c's (same fit, same rounding: GeluMul equals Gelu
 * then Mul exactly); keep them in step. Calling osn_gelu_f32 on L1 chunks instead measured
 * ~30 % slower single-threaded (a pool-less pthreadpool call per chunk). */
static const float ERFC_TAIL[9] = {
    -0.671794111718008f, 0.6726429061444504f, 0.04734583856146775f,
    -0.046883172294521575f, -0.009908356948552348f, 0.008696997858583674f,
    0.001921008849658318f, -0.0018571417522183068f, -0.00039865113954513475f,
};

static inline float erf_f32(float x) {
    const float z = fabsf(x);
    const float t = 1.0f / (1.0f + 0.5f * z);
    const float u = 2.0f * t - 1.0f;
    const float u2 = u * u;
    const float u4 = u2 * u2;
    const float* c = ERFC_TAIL;
    const float g = ((c[0] + c[1] * u) + u2 * (c[2] + c[3] * u))
                  + u4 * (((c[4] + c[5] * u) + u2 * (c[6] + c[7] * u)) + u4 * c[8]);
    const float tail = 1.0f - t * exp_f32(g - z * z);
    const float w = z * z;
    const float w2 = w * w;
    const float w4 = w2 * w2;
    const float s = ((1.1283791670955126f - 0.37612638903183754f * w)
                     + w2 * (0.11283791670955126f - 0.026866170645131252f * w))
                  + w4 * ((0.005223977625442188f - 0.0008548327023450852f * w) + w2 * 0.00012055332981789664f);
    const float series = s * z;
    return copysignf(select_f32(z < 0.5f, series, tail), x);
}

static inline float tanh_f32(float v) {
    const float e = exp_f32(-2.0f * fabsf(v));
    return copysignf((1.0f - e) / (1.0f + e), v);
}

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
