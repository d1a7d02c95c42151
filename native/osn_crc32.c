/* CRC-32 with PCLMULQDQ folding (128-bit, or 512-bit VPCLMULQDQ); see osn_crc32.h for the why. */
#include "osn_crc32.h"

static uint32_t table[256];
static int table_ready;

static void make_table(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        table[n] = c;
    }
    table_ready = 1;
}

/* The bytewise reflected CRC on the raw (inverted) state: tails and the portable fallback. */
static uint32_t crc_bytes(uint32_t c, const uint8_t* p, size_t n) {
    if (!table_ready) make_table();   /* idempotent: a race writes the same values */
    while (n--) c = table[(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

/* Fold constants: for a distance of D bits, x^(D+32) and x^(D-32) mod P, bit-reflected and
 * shifted left by one (low half multiplies the low 64 bits). Then x^64 and Barrett's mu, P. */
#define K_512 _mm_set_epi64x(0x01c6e41596LL, 0x0154442bd4LL)     /* D = 512: x^480, x^544 */
#define K_128 _mm_set_epi64x(0x00ccaa009eLL, 0x01751997d0LL)     /* D = 128: x^96, x^160 */
#define K_2048 _mm_set_epi64x(0x01322d1430LL, 0x011542778aLL)    /* D = 2048: x^2016, x^2080 */

/* The last 16-byte blocks of len (a multiple of 16) folded into the 128-bit state x1, then
 * 128 -> 32 bits: the raw CRC state. */
__attribute__((target("pclmul,sse4.1")))
static uint32_t finish_clmul(__m128i x1, const uint8_t* buf, size_t len) {
    static const uint64_t __attribute__((aligned(16))) k5k0[] = {0x0163cd6124, 0x0000000000};
    static const uint64_t __attribute__((aligned(16))) poly[] = {0x01db710641, 0x01f7011641};
    __m128i x0 = K_128, x2, x3, x5;
    while (len >= 16) {   /* single 128-bit folds */
        x2 = _mm_loadu_si128((const __m128i*)buf);
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
        x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
        buf += 16;
        len -= 16;
    }
    /* 128 -> 64 bits */
    x2 = _mm_clmulepi64_si128(x1, x0, 0x10);
    x3 = _mm_setr_epi32(~0, 0, ~0, 0);
    x1 = _mm_srli_si128(x1, 8);
    x1 = _mm_xor_si128(x1, x2);
    x0 = _mm_loadl_epi64((const __m128i*)k5k0);
    x2 = _mm_srli_si128(x1, 4);
    x1 = _mm_and_si128(x1, x3);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    /* Barrett reduction to 32 bits */
    x0 = _mm_load_si128((const __m128i*)poly);
    x2 = _mm_and_si128(x1, x3);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x10);
    x2 = _mm_and_si128(x2, x3);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    return (uint32_t)_mm_extract_epi32(x1, 1);
}

/* x folded forward onto y: x.lo * k.lo + x.hi * k.hi + y, per 128-bit lane. */
__attribute__((target("pclmul,sse4.1")))
static inline __m128i fold128(__m128i x, __m128i k, __m128i y) {
    return _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11)), y);
}

/* Folds len bytes (len >= 64, a multiple of 16) into the raw state crc: four 128-bit lanes
 * folded by 512 bits, then into one by 128. */
__attribute__((target("pclmul,sse4.1")))
static uint32_t crc_clmul(const uint8_t* buf, size_t len, uint32_t crc) {
    __m128i x1 = _mm_loadu_si128((const __m128i*)(buf + 0x00));
    __m128i x2 = _mm_loadu_si128((const __m128i*)(buf + 0x10));
    __m128i x3 = _mm_loadu_si128((const __m128i*)(buf + 0x20));
    __m128i x4 = _mm_loadu_si128((const __m128i*)(buf + 0x30));
    __m128i k = K_512;
    x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)crc));
    buf += 64;
    len -= 64;
    while (len >= 64) {   /* fold four 128-bit lanes by 512 bits */
        x1 = fold128(x1, k, _mm_loadu_si128((const __m128i*)(buf + 0x00)));
        x2 = fold128(x2, k, _mm_loadu_si128((const __m128i*)(buf + 0x10)));
        x3 = fold128(x3, k, _mm_loadu_si128((const __m128i*)(buf + 0x20)));
        x4 = fold128(x4, k, _mm_loadu_si128((const __m128i*)(buf + 0x30)));
        buf += 64;
        len -= 64;
    }
    k = K_128;   /* the four lanes into one */
    x1 = fold128(fold128(fold128(x1, k, x2), k, x3), k, x4);
    return finish_clmul(x1, buf, len);
}

/* The same with 512-bit carry-less multiplies (AVX-512 VPCLMULQDQ: Ice Lake, Zen 4 and
 * later): four registers of four 128-bit lanes, 256 bytes per step, folded by 2048 bits, then
 * the registers into one by 512 bits, its lanes into one by 128 bits. len >= 256, a multiple
 * of 16. */
__attribute__((target("avx512f,avx512vl,vpclmulqdq,pclmul,sse4.1")))
static inline __m512i fold512(__m512i x, __m512i k, __m512i y) {
    return _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(x, k, 0x00), _mm512_clmulepi64_epi128(x, k, 0x11),
                                     y, 0x96);   /* a ^ b ^ c */
}

__attribute__((target("avx512f,avx512vl,vpclmulqdq,pclmul,sse4.1")))
static uint32_t crc_vclmul(const uint8_t* buf, size_t len, uint32_t crc) {
    __m512i x0 = _mm512_loadu_si512(buf), x1 = _mm512_loadu_si512(buf + 64);
    __m512i x2 = _mm512_loadu_si512(buf + 128), x3 = _mm512_loadu_si512(buf + 192);
    __m512i k = _mm512_broadcast_i32x4(K_2048);
    x0 = _mm512_xor_si512(x0, _mm512_zextsi128_si512(_mm_cvtsi32_si128((int)crc)));
    buf += 256;
    len -= 256;
    while (len >= 256) {
        x0 = fold512(x0, k, _mm512_loadu_si512(buf));
        x1 = fold512(x1, k, _mm512_loadu_si512(buf + 64));
        x2 = fold512(x2, k, _mm512_loadu_si512(buf + 128));
        x3 = fold512(x3, k, _mm512_loadu_si512(buf + 192));
        buf += 256;
        len -= 256;
    }
    k = _mm512_broadcast_i32x4(K_512);
    x3 = fold512(fold512(fold512(x0, k, x1), k, x2), k, x3);
    while (len >= 64) {
        x3 = fold512(x3, k, _mm512_loadu_si512(buf));
        buf += 64;
        len -= 64;
    }
    __m128i k34 = K_128;
    __m128i a = fold128(_mm512_extracti32x4_epi32(x3, 0), k34, _mm512_extracti32x4_epi32(x3, 1));
    a = fold128(a, k34, _mm512_extracti32x4_epi32(x3, 2));
    a = fold128(a, k34, _mm512_extracti32x4_epi32(x3, 3));
    return finish_clmul(a, buf, len);
}

int osn_crc32_level(void) {
    static int level = -1;
    if (level < 0) {
        __builtin_cpu_init();
        level = 0;
        if (__builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1")) level = 1;
        if (level == 1 && __builtin_cpu_supports("vpclmulqdq") && __builtin_cpu_supports("avx512f")
            && __builtin_cpu_supports("avx512vl")) level = 2;
    }
    return level;
}

int osn_crc32_fast(void) { return osn_crc32_level() > 0; }

uint32_t osn_crc32_at(const uint8_t* data, size_t nbytes, uint32_t crc, int level) {
    if (level > osn_crc32_level()) level = osn_crc32_level();
    uint32_t c = ~crc;
    if (level >= 1 && nbytes >= 64) {
        size_t chunk = nbytes & ~(size_t)15;
        c = level >= 2 && chunk >= 256 ? crc_vclmul(data, chunk, c) : crc_clmul(data, chunk, c);
        data += chunk;
        nbytes -= chunk;
    }
    return ~crc_bytes(c, data, nbytes);
}

#else

int osn_crc32_level(void) { return 0; }

int osn_crc32_fast(void) { return 0; }

uint32_t osn_crc32_at(const uint8_t* data, size_t nbytes, uint32_t crc, int level) {
    (void)level;
    return ~crc_bytes(~crc, data, nbytes);
}

#endif

uint32_t osn_crc32(const uint8_t* data, size_t nbytes, uint32_t crc) {
    return osn_crc32_at(data, nbytes, crc, 2);
}
