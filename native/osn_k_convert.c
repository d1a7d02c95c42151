/* float16 <-> float32 conversion (see osn_k_convert.h). Each element goes through a
 * branchless formula (all cases computed, one selected) so the loops vectorise.
 * Reference: IEEE 754-2008 binary16 / binary32 formats. */
#include <string.h>

#include "osn_k_convert.h"
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

/* Elements per parallel task: 256 KiB of float32 output, enough to hide task overhead. */
#define CONVERT_TILE ((size_t)1 << 16)

static inline float bits_to_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t f32_to_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* cond ? a : b as bit masks: with a plain ?: GCC moves the float arithmetic of an arm
 * under a branch (it may raise a floating-point flag), which stops vectorisation. */
static inline uint32_t select_u32(int cond, uint32_t a, uint32_t b) {
    const uint32_t m = 0u - (uint32_t)(cond != 0);
    return (a & m) | (b & ~m);
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
    const uint32_t subnormal = f32_to_bits((float)(int32_t)man * 0x1p-24f);
    const uint32_t mag = select_u32(exp == 0, subnormal, select_u32(exp == 31, special, normal));
    return bits_to_f32(sign | mag);
}

static inline uint16_t float_to_half(float f) {
    const uint32_t u = f32_to_bits(f);
    const uint32_t sign = (u >> 16) & 0x8000u;
    const uint32_t a = u & 0x7fffffffu;
    /* normal half: rebias (subtract 112 << 23), then round the 13 dropped bits to nearest even */
    const uint32_t normal = (a - 0x38000000u + 0xfffu + ((a >> 13) & 1u)) >> 13;
    /* |f| < 2^-14: adding 0.5 puts the half-subnormal ulp (2^-24) at float's last bit, so
     * the float adder rounds to nearest even; the mantissa bits are then the half value */
    const uint32_t subnormal = f32_to_bits(bits_to_f32(a) + 0.5f) - 0x3f000000u;
    /* >= 65520 rounds past the largest half (65504): infinity */
    const uint32_t nan = 0x7e00u | ((a >> 13) & 0x3ffu);
    const uint32_t mag = select_u32(a > 0x7f800000u, nan,
                                    select_u32(a >= 0x477ff000u, 0x7c00u,
                                               select_u32(a < 0x38800000u, subnormal, normal)));
    return (uint16_t)(sign | mag);
}

struct convert_ctx {
    void* y;
    const void* x;
    size_t count;
};

OSN_SIMD_CLONES static void f16_to_f32_task(void* arg, size_t start, size_t n) {
    const struct convert_ctx* c = (const struct convert_ctx*)arg;
    float* restrict y = (float*)c->y + start;
    const uint16_t* restrict x = (const uint16_t*)c->x + start;
    for (size_t i = 0; i < n; i++) y[i] = half_to_float(x[i]);
}

OSN_SIMD_CLONES static void f32_to_f16_task(void* arg, size_t start, size_t n) {
    const struct convert_ctx* c = (const struct convert_ctx*)arg;
    uint16_t* restrict y = (uint16_t*)c->y + start;
    const float* restrict x = (const float*)c->x + start;
    for (size_t i = 0; i < n; i++) y[i] = float_to_half(x[i]);
}

int osn_f16_to_f32(osn_pool* pool, float* y, const uint16_t* x, size_t count) {
    if ((y == NULL || x == NULL) && count != 0) return OSN_E_INVALID_ARGUMENT;
    struct convert_ctx c = {y, x, count};
    pthreadpool_parallelize_1d_tile_1d(osn_pool_handle(pool), f16_to_f32_task, &c, count, CONVERT_TILE, OSN_PARALLEL_FLAGS);
    return 0;
}

int osn_f32_to_f16(osn_pool* pool, uint16_t* y, const float* x, size_t count) {
    if ((y == NULL || x == NULL) && count != 0) return OSN_E_INVALID_ARGUMENT;
    struct convert_ctx c = {y, x, count};
    pthreadpool_parallelize_1d_tile_1d(osn_pool_handle(pool), f32_to_f16_task, &c, count, CONVERT_TILE, OSN_PARALLEL_FLAGS);
    return 0;
}
