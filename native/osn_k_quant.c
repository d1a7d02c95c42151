/* 8-bit -> float32 dequantization (see osn_k_quant.h). Two loop shapes: rows of one scale
 * (inner >= QUANT_ROW_MIN, e.g. a Conv weight [Cout, Cin*kh*kw] per output channel) and a
 * scale per element of the last axis (inner == 1, e.g. a MatMul weight [K, N] per column);
 * anything else (a short inner run) walks [channels, inner] blocks per outer index. */
#include "osn_k_quant.h"
#include "osn_internal.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define OSN_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define OSN_SIMD_CLONES
#endif

/* Elements per parallel task: 64 KiB of int8 input / 256 KiB of float32 output. */
#define QUANT_TILE ((size_t)1 << 16)
/* A row shorter than this is poor parallel grain: walk blocks instead. */
#define QUANT_ROW_MIN 64

struct dequant_ctx {
    float* y;
    const int8_t* x;        /* bytes read as int8; uint8 via flip/offset below */
    int8_t flip;            /* 0 (int8) or 0x80 (uint8): (int8)(b ^ 0x80) + 128 == b as uint8 */
    int32_t offset;         /* 0 (int8) or 128 (uint8) */
    const float* scale;
    const int32_t* zero_point;
    size_t channels, inner;
};

static inline int32_t zp_at(const struct dequant_ctx* c, size_t ch) {
    return c->zero_point ? c->zero_point[ch] : 0;
}

/* rows [start, start + n) of length inner; row r belongs to channel r % channels */
OSN_SIMD_CLONES static void dequant_rows_task(void* arg, size_t start, size_t n) {
    const struct dequant_ctx* c = (const struct dequant_ctx*)arg;
    for (size_t r = start; r < start + n; r++) {
        size_t ch = r % c->channels;
        const float s = c->scale[ch];
        const int32_t base = c->offset - zp_at(c, ch);
        const int8_t flip = c->flip;
        const int8_t* restrict x = c->x + r * c->inner;
        float* restrict y = c->y + r * c->inner;
        for (size_t i = 0; i < c->inner; i++)
            y[i] = (float)((int32_t)(int8_t)(x[i] ^ flip) + base) * s;
    }
}

/* outer indices [start, start + n), each a [channels, inner] block */
OSN_SIMD_CLONES static void dequant_blocks_task(void* arg, size_t start, size_t n) {
    const struct dequant_ctx* c = (const struct dequant_ctx*)arg;
    const size_t block = c->channels * c->inner;
    const int8_t flip = c->flip;
    for (size_t o = start; o < start + n; o++) {
        const int8_t* restrict x = c->x + o * block;
        float* restrict y = c->y + o * block;
        if (c->inner == 1) {
            const float* restrict s = c->scale;
            if (c->zero_point) {
                const int32_t* restrict z = c->zero_point;
                for (size_t ch = 0; ch < c->channels; ch++)
                    y[ch] = (float)((int32_t)(int8_t)(x[ch] ^ flip) + c->offset - z[ch]) * s[ch];
            } else {
                for (size_t ch = 0; ch < c->channels; ch++)
                    y[ch] = (float)((int32_t)(int8_t)(x[ch] ^ flip) + c->offset) * s[ch];
            }
            continue;
        }
        for (size_t ch = 0; ch < c->channels; ch++) {
            const float s = c->scale[ch];
            const int32_t base = c->offset - zp_at(c, ch);
            for (size_t i = 0; i < c->inner; i++)
                y[ch * c->inner + i] = (float)((int32_t)(int8_t)(x[ch * c->inner + i] ^ flip) + base) * s;
        }
    }
}

int osn_dequantize_8bit_f32(osn_pool* pool, float* y, const void* x, int x_unsigned, const float* scale,
                            const int32_t* zero_point, size_t outer, size_t channels, size_t inner) {
    const size_t count = outer * channels * inner;
    if (count == 0) return 0;
    if (y == NULL || x == NULL || scale == NULL || channels == 0) return OSN_E_INVALID_ARGUMENT;
    struct dequant_ctx c = {y, (const int8_t*)x, (int8_t)(x_unsigned ? 0x80 : 0), x_unsigned ? 128 : 0,
                            scale, zero_point, channels, inner};
    if (inner >= QUANT_ROW_MIN) {
        size_t rows = outer * channels;
        size_t tile = QUANT_TILE / inner;
        pthreadpool_parallelize_1d_tile_1d(osn_pool_handle(pool), dequant_rows_task, &c, rows,
                                           tile ? tile : 1, OSN_PARALLEL_FLAGS);
    } else {
        size_t tile = QUANT_TILE / (channels * inner);
        pthreadpool_parallelize_1d_tile_1d(osn_pool_handle(pool), dequant_blocks_task, &c, outer,
                                           tile ? tile : 1, OSN_PARALLEL_FLAGS);
    }
    return 0;
}
