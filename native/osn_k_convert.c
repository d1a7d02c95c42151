/* float16 <-> float32 conversion (see osn_k_convert.h). Each element goes through a
 * branchless formula (all cases computed, one selected) so the loops vectorise.
 * Reference: IEEE 754-2008 binary16 / binary32 formats. */
#include <string.h>

#include "osn_k_convert.h"
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

/* Elements per parallel task: 256 KiB of float32 output, enough to hide task overhead. */
#define CONVERT_TILE ((size_t)1 << 16)

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
