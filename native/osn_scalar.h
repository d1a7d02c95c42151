/* Scalar float helpers shared by the C kernels (never given to cffi: static inline bodies).
 * Branchless, written so the compiler vectorises the loops that call them (AVX-512/AVX2/NEON):
 * bit casts, selects, e^x, erf, tanh, e^x for x <= 0, an order-preserving float key, and
 * IEEE half <-> float. One copy here; every kernel includes it. */
#ifndef OSN_SCALAR_H
#define OSN_SCALAR_H
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline uint32_t select_u32(int cond, uint32_t a, uint32_t b) {
    const uint32_t m = 0u - (uint32_t)(cond != 0);
    return (a & m) | (b & ~m);
}

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

/* erf, same method as the numpy reference (ops/elementwise.py, _erf_block): for |z| >= 0.5,
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

static inline float tanh_f32(float v) {
    const float e = exp_f32(-2.0f * fabsf(v));
    return copysignf((1.0f - e) / (1.0f + e), v);
}

static inline float exp_nonpos_f32(float x) {
    const float magic = 0x1.8000FEp23f;
    float n = x * 0x1.715476p+0f + magic;
    const float s = bits_f32(f32_bits(n) << 23);
    n -= magic;
    float t = n * -0x1.62E400p-1f + x;
    t = n * -0x1.7F7D1Cp-20f + t;
    float p = 0x1.0F9F9Cp-7f * t + 0x1.573A1Ap-5f;
    p = p * t + 0x1.555A80p-3f;
    p = p * t + 0x1.FFFDC6p-2f;
    p = p * t + 0x1.FFFFF6p-1f;
    t *= s;
    const float e = t * p + s;
    /* branchless select (a ?: on floats becomes a branch under -ftrapping-math) */
    const uint32_t flush = 0u - (uint32_t)(x < -0x1.5D589Ep6f);   /* NaN is kept: it propagates */
    return bits_f32(f32_bits(e) & ~flush);
}

static inline int32_t order_key(float v) {
    int32_t k;
    memcpy(&k, &v, sizeof k);
    return k ^ ((k >> 31) & 0x7fffffff);
}

static inline float key_value(int32_t k) {
    const int32_t bits = k ^ ((k >> 31) & 0x7fffffff);
    float r;
    memcpy(&r, &bits, sizeof r);
    return r;
}

static inline float half_to_float(uint16_t h) {
    const uint32_t sign = ((uint32_t)h & 0x8000u) << 16;
    const uint32_t exp = ((uint32_t)h >> 10) & 0x1fu;
    const uint32_t man = (uint32_t)h & 0x3ffu;
    /* normal: rebias the exponent from 15 to 127 (add 112) */
    const uint32_t normal = ((exp + 112u) << 23) | (man << 13);
    /* inf / NaN: all-ones exponent, payload kept */
    const uint32_t special = 0x7f800000u | (man << 13);
    /* zero / subnormal: man * 2^-24, exact in float32 */
    const uint32_t subnormal = f32_bits((float)(int32_t)man * 0x1p-24f);
    const uint32_t mag = select_u32(exp == 0, subnormal, select_u32(exp == 31, special, normal));
    return bits_f32(sign | mag);
}

static inline uint16_t float_to_half(float f) {
    const uint32_t u = f32_bits(f);
    const uint32_t sign = (u >> 16) & 0x8000u;
    const uint32_t a = u & 0x7fffffffu;
    /* normal half: rebias (subtract 112 << 23), then round the 13 dropped bits to nearest even */
    const uint32_t normal = (a - 0x38000000u + 0xfffu + ((a >> 13) & 1u)) >> 13;
    /* |f| < 2^-14: adding 0.5 puts the half-subnormal ulp (2^-24) at float's last bit, so
     * the float adder rounds to nearest even; the mantissa bits are then the half value */
    const uint32_t subnormal = f32_bits(bits_f32(a) + 0.5f) - 0x3f000000u;
    /* >= 65520 rounds past the largest half (65504): infinity */
    const uint32_t nan = 0x7e00u | ((a >> 13) & 0x3ffu);
    const uint32_t mag = select_u32(a > 0x7f800000u, nan,
                                    select_u32(a >= 0x477ff000u, 0x7c00u,
                                               select_u32(a < 0x38800000u, subnormal, normal)));
    return (uint16_t)(sign | mag);
}

#endif
