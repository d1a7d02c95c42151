/* CRC-32 (the zlib/gzip polynomial, the weights file's checksum) with carry-less multiplication.
 *
 * Why: the HTTP provider checks every downloaded tensor (3.4 GB per SD 1.5 UNet run); zlib 1.2.13's
 * table CRC runs at ~1.5 GB/s here, which costs ~2 s of CPU per run beside the compute. Folding
 * 64 bytes per step with PCLMULQDQ (Intel's "Fast CRC Computation Using PCLMULQDQ" method, the
 * same constants as Chromium's zlib) is several times faster: 12-14 GB/s; with AVX-512 VPCLMULQDQ
 * (four 128-bit lanes per instruction, 256 bytes per step) 25-51 GB/s on this Zen 4, against zlib's
 * 4 (scripts/bench_crc.py). x86-64 with PCLMUL only, chosen at run time; elsewhere osn_crc32_fast reports 0 and callers
 * use zlib.crc32 (the numpy-free twin).
 */
#ifndef OSN_CRC32_H
#define OSN_CRC32_H
#include <stddef.h>
#include <stdint.h>

/* CDEF BEGIN */
/* 1 when osn_crc32 runs the carry-less multiply path on this CPU, else 0 (then use zlib). */
int osn_crc32_fast(void);

/* The widest path this CPU has: 0 table, 1 PCLMULQDQ, 2 VPCLMULQDQ (AVX-512). */
int osn_crc32_level(void);

/* osn_crc32 on the path of at most this level (tests run each path against zlib). */
uint32_t osn_crc32_at(
    const uint8_t* data,  /* [nbytes] bytes to checksum (any alignment) */
    size_t nbytes,        /* byte count */
    uint32_t crc,         /* running crc32 of the preceding bytes (0 at the start) */
    int level);           /* 0, 1 or 2; above osn_crc32_level() means that level */

/* The zlib crc32 of data continued from crc (0 to start): same value as zlib.crc32(data, crc). */
uint32_t osn_crc32(
    const uint8_t* data,  /* [nbytes] bytes to checksum (any alignment) */
    size_t nbytes,        /* byte count */
    uint32_t crc);        /* running crc32 of the preceding bytes (0 at the start) */
/* CDEF END */

#endif
