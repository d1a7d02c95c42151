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

/* cond ? a : b as bit masks. Under the default -ftrapping-math GCC compiles a plain ?:
 * whose arms or nested conditions may raise a floating-point flag (a division, a float
 * comparison) as a branch, which stops vectorisation; this form always vectorises. */
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

/* ------------------------------------------------------------------ exp */
/* e^x for x <= 88 (larger x is clamped); 0 below -87.33 (where float32 turns subnormal).
 * x = n ln2 + r with |r| <= ln2/2 (Cody-Waite split of ln2), e^r by its degree-7 Taylor
 * polynomial (truncation < 6e-9 relative), 2^n built in the exponent bits. The rounding
 * to n uses the 1.5 * 2^23 trick, whose low mantissa bits are n, so no float -> int
 * conversion (undefined for NaN) is needed; NaN propagates through r. */
static inline float exp_f32(float x) {
    const float magic = 0x1.8p23f;
    float xc = select_f32(x < -87.33f, -87.33f, x);
    xc = select_f32(xc > 88.0f, 88.0f, xc);
    const float t = xc * 1.44269504088896341f + magic;
    const float n = t - magic;
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440054690583e-4f;
    /* Estrin's scheme: short dependency chains, so several vectors overlap in flight */
    const float r2 = r * r;
    const float r4 = r2 * r2;
    const float q01 = 1.0f + r;
    const float q23 = 0.5f + r * (1.0f / 6.0f);
    const float q45 = 1.0f / 24.0f + r * (1.0f / 120.0f);
    const float q67 = 1.0f / 720.0f + r * (1.0f / 5040.0f);
    const float p = (q01 + r2 * q23) + r4 * (q45 + r2 * q67);
    uint32_t tb;
    memcpy(&tb, &t, sizeof tb);
    const uint32_t sb = (tb + 127u) << 23;   /* n + 127 in the exponent field */
    float scale;
    memcpy(&scale, &sb, sizeof scale);
    const float e = p * scale;
    return select_f32(x < -87.33f, 0.0f, e);
}

/* ------------------------------------------------------------------ erf */
/* Same method as the numpy reference (ops/elementwise.py, _erf_block): for |z| >= 0.5,
 * erfc(z) = t exp(-z^2 + g(t)) with t = 1 / (1 + z/2) and g the degree-8 Chebyshev fit in
 * u = 2t - 1 of elementwise._ERFC_TAIL_F32, here in monomial form (numpy's cheb2poly;
 * float32 evaluation within 1.5e-7 of the float64 Chebyshev sum) evaluated with Estrin's
 * scheme for short dependency chains. Below 0.5 the Maclaurin series
 * 2/sqrt(pi) sum_n (-1)^n z^(2n+1) / (n! (2n+1)), n <= 6 (next term < 1e-9). */
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

/* tanh(v) = sign(v) (1 - e) / (1 + e), e = exp(-2|v|) <= 1 (no overflow). Absolute error
 * ~1e-7 near 0, which is all Gelu's 1 + tanh needs. */
static inline float tanh_f32(float v) {
    const float e = exp_f32(-2.0f * fabsf(v));
    return copysignf((1.0f - e) / (1.0f + e), v);
}

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
/* Row maximum through order-preserving integer keys (a float compare-and-select does not
 * vectorise under -ftrapping-math, an integer max reduction does): for IEEE floats, the
 * bits with the magnitude flipped for negatives sort like the values. A NaN with a clear
 * sign bit sorts above +inf, so it becomes the maximum and the row turns NaN, as in numpy;
 * any other NaN turns the row NaN through exp(NaN - max). */
static inline int32_t order_key(float v) {
    int32_t k;
    memcpy(&k, &v, sizeof k);
    return k ^ ((k >> 31) & 0x7fffffff);
}

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
