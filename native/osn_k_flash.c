/* Flash attention (see osn_k_flash.h): tiled Q·Kᵀ, online softmax, P·V, in portable C.
 *
 * Vectorisation without intrinsics: both products are register-blocked micro-kernels over
 * fixed-size tiles whose accumulators are MR rows of 16 floats in GCC/clang generic vectors
 * (MR and the vector width by the register file, see pick_kernels), so the inner loop is a
 * row of vector loads and MR rows of broadcast-multiply-adds on every target.
 * Scores are kept transposed (keys x queries), so the online softmax is vertical: a running
 * max, sum and rescale factor per query lane, with no horizontal reduction per row.
 * Kᵀ tiles and Q are packed per thread (contiguous, zero-padded), which also absorbs any
 * strides, transposed views and float16 inputs (converted while packing); V is read in
 * place when it is float32 with contiguous rows of a multiple of 8 floats.
 *
 * Measured on the 2-core AVX-512 EPYC (CPU time of one thread, one 4096x4096x40 head):
 * 30 ms against the sliced op's 38 ms (BLAS Q·Kᵀ 15.9 + exp 6.4 + BLAS P·V 16.1); the two
 * micro-kernels run at ~100-115 GFLOP/s, near the core's FMA peak, so the gain is the
 * softmax on L1-resident tiles and never writing a score block. Tile sizes are flat near
 * the optimum (per head: 64x64 30.9 ms, 128x128 29.9, 64 queries x 128 keys 31.1, 32x64
 * 34.1, 64x32 33.8); 64x64 keeps more tasks for small M. Reading Kᵀ in place instead of
 * packing it: 2x slower at N = 4096, whose 16 KiB row stride puts a tile's d rows in one
 * L1 set.
 *
 * Numerics: q·k accumulates in float32 with fused multiply-adds (as BLAS does), then is
 * rounded * scale, then + mask (as the unfused graph's Mul and Add); the exp is
 * osn_k_attention.c's rr2-p5 polynomial (here with FMA); the differences from
 * softmax-then-matmul are the rescaling by exp(old max - new max) and the summation order:
 * ~1e-6 relative at N = 4096.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "osn_k_flash.h"
#include "osn_internal.h"
#include "osn_scalar.h"

/* As in osn_k_math.c: the plain C loops are also compiled for AVX2 and AVX-512 on x86-64. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define OSN_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define OSN_SIMD_CLONES
#endif
/* The products may use fused multiply-adds (as BLAS does); -std=c11 turns contraction off. */
#if defined(__GNUC__) && !defined(__clang__)
#define OSN_FMA __attribute__((optimize("fp-contract=fast")))
#else
#define OSN_FMA
#endif

#ifndef BR
#define BR 64        /* query rows per task (and per Q tile), a multiple of NR */
#endif
#ifndef BC
#define BC 64        /* keys per inner block (Kᵀ / V / score tile width), a multiple of 8 */
#endif
#define NR 16        /* lanes (queries of Q·Kᵀ, value columns of P·V) per micro-kernel */
#define ALIGN 64

static inline size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

/* ------------------------------------------------------------------ packing */

/* dst[r][c] (row-major, ld floats, zero beyond rows x cols up to prows x pcols) = src's
 * [rows, cols] block at element offset base, strides rs/cs. */
static void pack(float* restrict dst, size_t ld, size_t prows, size_t pcols, const void* src, int f16,
                 ptrdiff_t base, ptrdiff_t rs, ptrdiff_t cs, size_t rows, size_t cols) {
    for (size_t r = 0; r < rows; r++) {
        float* restrict d = dst + r * ld;
        const ptrdiff_t o = base + (ptrdiff_t)r * rs;
        if (f16) {
            const uint16_t* s = (const uint16_t*)src + o;
            for (size_t c = 0; c < cols; c++) d[c] = half_to_float(s[(ptrdiff_t)c * cs]);
        } else if (cs == 1) {
            memcpy(d, (const float*)src + o, cols * sizeof(float));
        } else {
            const float* s = (const float*)src + o;
            for (size_t c = 0; c < cols; c++) d[c] = s[(ptrdiff_t)c * cs];
        }
        for (size_t c = cols; c < pcols; c++) d[c] = 0.0f;
    }
    for (size_t r = rows; r < prows; r++) memset(dst + r * ld, 0, pcols * sizeof(float));
}

/* ------------------------------------------------------------------ micro-kernels */

/* Vectors are GCC/clang generic vectors (vector_size): portable C that each target lowers to
 * its own registers. Two widths: 8 floats (one ymm) for AVX2 and AVX-512, 4 floats (one xmm
 * or NEON q register) elsewhere: GCC lowers a vector wider than the target's registers
 * through the stack (64-byte vectors on AVX2: 7x slower; 32-byte on SSE2: 50x). The *u
 * types load and store at float alignment. */
typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4), may_alias));
typedef float v4 __attribute__((vector_size(16)));
typedef float v4u __attribute__((vector_size(16), aligned(4), may_alias));

/* Micro-kernels per (vector width VW, rows MRK): MRK x NR/VW accumulators must fit the vector
 * registers with room for the loads. AVX-512 (32 ymm) takes 8 rows of 2 ymm (4096x4096x40
 * head: 30.7 ms, 33.3 with 4 rows); AVX2 (16 ymm) 4 (34.0 ms, 45.3 with 8, which spills);
 * SSE (16 xmm) 2 rows of 4 xmm; NEON (32 q) 4 rows of 4 q.
 *
 * qk_tile_*: st[0 .. keys][0 .. BR] (rows BR apart) = (kp[d][keys] (rows ldk apart)ᵀ ·
 * qt[d][BR] (rows BR apart)) * scale, MRK keys x NR queries per step; keys a multiple of MRK.
 * Scaling in the store rounds as the unfused graph's Mul and saves the softmax a pass.
 * pv_tile_*: o[MRK][dvp] (rows dvp apart) = o * alpha[r] + pt[keys][MRK]ᵀ (rows BR apart) ·
 * vp[keys][dvp] (rows ldv apart); dvp a multiple of 8. */
#define OSN_FLASH_KERNELS(NAME, VT, VTU, VW, MRK)                                                   \
OSN_SIMD_CLONES OSN_FMA static void qk_tile_##NAME(float* restrict st, const float* restrict kp,    \
                                                   size_t ldk, const float* restrict qt, size_t d,  \
                                                   size_t keys, size_t queries, float scale) {      \
    for (size_t j = 0; j < keys; j += MRK)                                                           \
        for (size_t r = 0; r < queries; r += NR) {                                                   \
            VT acc[MRK][NR / VW];                                                                    \
            for (int i = 0; i < MRK; i++)                                                            \
                for (int u = 0; u < NR / VW; u++) acc[i][u] = (VT){0};                               \
            for (size_t k = 0; k < d; k++) {                                                         \
                VT qv[NR / VW];                                                                      \
                for (int u = 0; u < NR / VW; u++) qv[u] = *(const VTU*)(qt + k * BR + r + VW * u);   \
                const float* restrict kr = kp + k * ldk + j;                                         \
                for (int i = 0; i < MRK; i++)                                                        \
                    for (int u = 0; u < NR / VW; u++) acc[i][u] += kr[i] * qv[u];                    \
            }                                                                                        \
            for (int i = 0; i < MRK; i++)                                                            \
                for (int u = 0; u < NR / VW; u++)                                                    \
                    *(VTU*)(st + (j + i) * BR + r + VW * u) = acc[i][u] * scale;                     \
        }                                                                                            \
}                                                                                                    \
                                                                                                     \
OSN_SIMD_CLONES OSN_FMA static void pv_tile_##NAME(float* restrict o, const float* restrict alpha,  \
                                                   const float* restrict pt, const float* restrict vp, \
                                                   size_t ldv, size_t keys, size_t dvp) {           \
    size_t c = 0;                                                                                    \
    for (; c + NR <= dvp; c += NR) {                                                                 \
        VT acc[MRK][NR / VW];                                                                        \
        for (int r = 0; r < MRK; r++)                                                                \
            for (int u = 0; u < NR / VW; u++) acc[r][u] = *(const VTU*)(o + r * dvp + c + VW * u) * alpha[r]; \
        for (size_t j = 0; j < keys; j++) {                                                          \
            VT vv[NR / VW];                                                                          \
            for (int u = 0; u < NR / VW; u++) vv[u] = *(const VTU*)(vp + j * ldv + c + VW * u);      \
            const float* restrict pj = pt + j * BR;                                                  \
            for (int r = 0; r < MRK; r++)                                                            \
                for (int u = 0; u < NR / VW; u++) acc[r][u] += pj[r] * vv[u];                        \
        }                                                                                            \
        for (int r = 0; r < MRK; r++)                                                                \
            for (int u = 0; u < NR / VW; u++) *(VTU*)(o + r * dvp + c + VW * u) = acc[r][u];         \
    }                                                                                                \
    for (; c < dvp; c += VW) { /* the tail, one vector at a time */                                  \
        VT acc[MRK];                                                                                 \
        for (int r = 0; r < MRK; r++) acc[r] = *(const VTU*)(o + r * dvp + c) * alpha[r];            \
        for (size_t j = 0; j < keys; j++) {                                                          \
            const VT vv = *(const VTU*)(vp + j * ldv + c);                                           \
            const float* restrict pj = pt + j * BR;                                                  \
            for (int r = 0; r < MRK; r++) acc[r] += pj[r] * vv;                                      \
        }                                                                                            \
        for (int r = 0; r < MRK; r++) *(VTU*)(o + r * dvp + c) = acc[r];                             \
    }                                                                                                \
}

typedef void (*qk_fn)(float*, const float*, size_t, const float*, size_t, size_t, size_t, float);
typedef void (*pv_fn)(float*, const float*, const float*, const float*, size_t, size_t, size_t);
struct micro_kernels {
    qk_fn qk;
    pv_fn pv;
    size_t mr;   /* rows per micro-kernel: keys of qk, queries of pv */
};

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
OSN_FLASH_KERNELS(v8x8, v8, v8u, 8, 8)
OSN_FLASH_KERNELS(v8x4, v8, v8u, 8, 4)
OSN_FLASH_KERNELS(v4x2, v4, v4u, 4, 2)
#else
OSN_FLASH_KERNELS(v4x4, v4, v4u, 4, 4)
#endif

/* The micro-kernels for this CPU's registers (OSN_FLASH_MICRO_ROWS: a build-time override of
 * the x86 choice, to test or time one variant). */
static struct micro_kernels pick_kernels(void) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
    const struct micro_kernels k8 = {qk_tile_v8x8, pv_tile_v8x8, 8}, k4 = {qk_tile_v8x4, pv_tile_v8x4, 4},
                               k2 = {qk_tile_v4x2, pv_tile_v4x2, 2};
#if defined(OSN_FLASH_MICRO_ROWS)
    return OSN_FLASH_MICRO_ROWS == 8 ? k8 : OSN_FLASH_MICRO_ROWS == 4 ? k4 : k2;
#else
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") ? k8 : __builtin_cpu_supports("avx2") ? k4 : k2;
#endif
#else
    const struct micro_kernels k = {qk_tile_v4x4, pv_tile_v4x4, 4};
    return k;
#endif
}

/* The online softmax step of a key block, per query lane r < BR: t = st[j][r] (scaled
 * scores) (+ mask, for the first rows lanes) for keys j < keys (-inf where causal hides key c0 + j from query q0 + r);
 * m_new = max(m, max_j t); st = exp(t - m_new); l = l * alpha + sum_j st, alpha =
 * exp(m - m_new) (returned in alpha[r] for the output rescale). A lane that has seen no
 * finite score yet uses 0 as its max: its exps and alpha are 0, its l stays 0, and the
 * final 0/0 gives the unfused graph's NaN. */
OSN_SIMD_CLONES OSN_FMA static void softmax_tile(float* restrict st, float* restrict m, float* restrict l,
                                                 float* restrict alpha, const float* restrict mask, ptrdiff_t mrs,
                                         ptrdiff_t mcs, size_t keys, size_t rows, int causal, size_t c0,
                                         size_t q0) {
    int32_t mk[BR];
    float sum[BR];
    for (size_t r = 0; r < BR; r++) {
        mk[r] = INT32_MIN;
        sum[r] = 0.0f;
    }
    if (mask != NULL) {
        /* along the mask's rows (contiguous in memory), writing down the tile's columns: a
         * gather of the mask per tile row instead was 2x slower with a 4096x4096 mask */
        for (size_t r = 0; r < rows; r++) {
            const float* mr = mask + (ptrdiff_t)r * mrs;
            for (size_t j = 0; j < keys; j++) st[j * BR + r] += mr[(ptrdiff_t)j * mcs];
        }
    }
    for (size_t j = 0; j < keys; j++) {
        float* restrict sj = st + j * BR;
        if (causal)
            for (size_t r = 0; r < BR; r++) sj[r] = select_f32(c0 + j > q0 + r, -INFINITY, sj[r]);
        for (size_t r = 0; r < BR; r++) {
            const int32_t k = order_key(sj[r]);
            mk[r] = k > mk[r] ? k : mk[r];
        }
    }
    float mu[BR], m_new[BR];
    for (size_t r = 0; r < BR; r++) {
        const float bmax = key_value(mk[r]);
        m_new[r] = bmax > m[r] ? bmax : m[r];
        mu[r] = select_f32(m_new[r] == -INFINITY, 0.0f, m_new[r]);
    }
    for (size_t j = 0; j < keys; j++) {
        float* restrict sj = st + j * BR;
        for (size_t r = 0; r < BR; r++) {
            const float e = exp_nonpos_f32(sj[r] - mu[r]);
            sj[r] = e;
            sum[r] += e;
        }
    }
    for (size_t r = 0; r < BR; r++) {
        const float a = exp_nonpos_f32(m[r] - mu[r]);
        alpha[r] = a;
        l[r] = l[r] * a + sum[r];
        m[r] = m_new[r];
    }
}

/* ------------------------------------------------------------------ tasks */

struct flash_ctx {
    void* out;
    const osn_flash_view *q, *kt, *v, *mask;
    size_t heads, m, n, d, dv, dvp, qblocks, tasks;
    struct micro_kernels k;      /* pick_kernels() */
    float scale;
    int causal, f16;
    int k_direct, v_direct;      /* read Kᵀ / V tiles in place (float32, unit column stride) */
    unsigned char* scratch;      /* per worker: scratch_bytes */
    size_t scratch_bytes;
    atomic_size_t next;          /* next (head, query block) task */
};

/* Scratch layout per worker (floats): Qᵀ tile [d][BR], Kᵀ tile [d][BC], V tile [BC][dvp],
 * scores [BC][BR], output accumulator [BR][dvp], row max/sum/alpha [BR] each. */
static size_t tile_floats(size_t d, size_t dvp) {
    return d * BR + d * BC + BC * dvp + BC * BR + BR * dvp + 3 * BR;
}

static void flash_block(struct flash_ctx* c, float* scratch, size_t h, size_t r0) {
    const size_t d = c->d, dv = c->dv, dvp = c->dvp, n = c->n;
    const size_t rows = c->m - r0 < BR ? c->m - r0 : BR;
    float* qt = scratch;
    float* kp = qt + d * BR;
    float* vp = kp + d * BC;
    float* st = vp + BC * dvp;
    float* o = st + BC * BR;
    float* mrow = o + BR * dvp;
    float* lrow = mrow + BR;
    float* alpha = lrow + BR;
    const osn_flash_view *q = c->q, *kt = c->kt, *v = c->v, *mask = c->mask;

    /* Qᵀ [d][BR]: the transposed pack of the block's [rows, d] queries (zero lanes past rows) */
    pack(qt, BR, d, BR, q->data, c->f16, q->head_offsets[h] + (ptrdiff_t)r0 * q->row_stride,
         q->col_stride, q->row_stride, d, rows);
    memset(o, 0, BR * dvp * sizeof(float));
    for (size_t i = 0; i < BR; i++) {
        mrow[i] = -INFINITY;
        lrow[i] = 0.0f;
    }
    /* causal: the block's last query sees keys up to r0 + rows - 1 */
    const size_t kend = c->causal ? (r0 + rows < n ? r0 + rows : n) : n;
    for (size_t c0 = 0; c0 < kend; c0 += BC) {
        const size_t bc = kend - c0 < BC ? kend - c0 : BC;
        const size_t pbc = round_up(bc, c->k.mr);
        const float* kb = kp;
        size_t ldk = BC;
        const ptrdiff_t koff = kt->head_offsets[h] + (ptrdiff_t)c0 * kt->col_stride;
        if (c->k_direct && pbc == bc) {
            kb = (const float*)kt->data + koff;
            ldk = (size_t)kt->row_stride;
        } else {
            pack(kp, BC, d, pbc, kt->data, c->f16, koff, kt->row_stride, kt->col_stride, d, bc);
        }
        const float* vb = vp;
        size_t ldv = dvp;
        const ptrdiff_t voff = v->head_offsets[h] + (ptrdiff_t)c0 * v->row_stride;
        if (c->v_direct) {
            vb = (const float*)v->data + voff;
            ldv = (size_t)v->row_stride;
        } else {
            pack(vp, dvp, bc, dvp, v->data, c->f16, voff, v->row_stride, v->col_stride, bc, dv);
        }
        c->k.qk(st, kb, ldk, qt, d, pbc, round_up(rows, NR), c->scale);
        const float* mb = NULL;
        if (mask != NULL)
            mb = (const float*)mask->data + mask->head_offsets[h] + (ptrdiff_t)r0 * mask->row_stride
                 + (ptrdiff_t)c0 * mask->col_stride;
        softmax_tile(st, mrow, lrow, alpha, mb, mask ? mask->row_stride : 0, mask ? mask->col_stride : 0, bc,
                     rows, c->causal, c0, r0);
        for (size_t r = 0; r < rows; r += c->k.mr) c->k.pv(o + r * dvp, alpha + r, st + r, vb, ldv, bc, dvp);
    }
    if (c->f16) {
        uint16_t* out = (uint16_t*)c->out + (h * c->m + r0) * dv;
        for (size_t i = 0; i < rows; i++) {
            const float l = lrow[i];
            for (size_t j = 0; j < dv; j++) out[i * dv + j] = float_to_half(o[i * dvp + j] / l);
        }
    } else {
        float* out = (float*)c->out + (h * c->m + r0) * dv;
        for (size_t i = 0; i < rows; i++) {
            const float l = lrow[i];   /* divide (not * 1/l) to round as softmax's p / sum */
            for (size_t j = 0; j < dv; j++) out[i * dv + j] = o[i * dvp + j] / l;
        }
    }
}

/* One worker (pool item) per thread, pulling (head, query block) tasks from a shared counter:
 * its scratch is its own, so memory is one tile set per thread however many tasks there are. */
static void flash_worker(void* arg, size_t worker) {
    struct flash_ctx* c = (struct flash_ctx*)arg;
    float* scratch = (float*)(c->scratch + worker * c->scratch_bytes);
    for (;;) {
        const size_t t = atomic_fetch_add_explicit(&c->next, 1, memory_order_relaxed);
        if (t >= c->tasks) return;
        flash_block(c, scratch, t / c->qblocks, t % c->qblocks * BR);
    }
}

static int view_ok(const osn_flash_view* x) { return x != NULL && x->data != NULL && x->head_offsets != NULL; }

int osn_flash_attention(osn_pool* pool, void* out, const osn_flash_view* q, const osn_flash_view* kt,
                        const osn_flash_view* v, const osn_flash_view* mask, size_t heads, size_t m, size_t n,
                        size_t d, size_t dv, float scale, int causal, int f16) {
    if (heads == 0 || m == 0 || dv == 0) return 0;
    if (out == NULL || !view_ok(q) || !view_ok(kt) || !view_ok(v) || (mask != NULL && !view_ok(mask))
        || n == 0 || d == 0)
        return OSN_E_INVALID_ARGUMENT;
    struct flash_ctx c = {.out = out, .q = q, .kt = kt, .v = v, .mask = mask, .heads = heads, .m = m, .n = n,
                          .d = d, .dv = dv, .dvp = round_up(dv, 8), .scale = scale, .causal = causal != 0,
                          .f16 = f16 != 0};
    c.qblocks = (m + BR - 1) / BR;
    c.k = pick_kernels();
    /* Kᵀ is always packed: its rows are N floats apart, at N = 4096 (16 KiB) all d rows of a
     * tile fall in one L1 set and evict each other (4096x4096x40: 62 ms direct, 38 packed). */
    c.k_direct = 0;
    c.v_direct = !c.f16 && v->col_stride == 1 && v->row_stride > 0 && c.dvp == dv;
    c.tasks = heads * c.qblocks;
    atomic_init(&c.next, 0);
    size_t workers = pool ? osn_pool_threads(pool) : 1;
    if (workers > c.tasks) workers = c.tasks;
    if (workers < 1) workers = 1;
    c.scratch_bytes = round_up(tile_floats(d, c.dvp) * sizeof(float), ALIGN);
    c.scratch = aligned_alloc(ALIGN, workers * c.scratch_bytes);
    if (c.scratch == NULL) return OSN_E_OUT_OF_MEMORY;
    if (workers == 1)
        flash_worker(&c, 0);
    else
        pthreadpool_parallelize_1d(osn_pool_handle(pool), flash_worker, &c, workers, OSN_PARALLEL_FLAGS);
    free(c.scratch);
    return 0;
}
