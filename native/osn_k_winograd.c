/* Winograd F(4x4,3x3) / F(2x2,3x3) transforms (see osn_k_winograd.h). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "osn_k_winograd.h"
#include "osn_internal.h"

/* As in osn_k_norm.c: AVX-512 and AVX2 clones of the channel loops on x86-64 (baseline SSE2). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define OSN_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define OSN_SIMD_CLONES
#endif

#define CB 64        /* channels transformed together: a tile's alpha^2 x CB floats stay in L1 */
#define MAX_ALPHA 6

/* Lavin & Gray's G (alpha x 3); B^T and A^T are spelled out in bt6/bt4/at6/at4 below (the
 * matrices are in ops/winograd.py). F(4,3) uses interpolation points 0, +-1, +-2 and infinity. */
static const double G6[6][3] = {
    {1.0 / 4, 0, 0},
    {-1.0 / 6, -1.0 / 6, -1.0 / 6},
    {-1.0 / 6, 1.0 / 6, -1.0 / 6},
    {1.0 / 24, 1.0 / 12, 1.0 / 6},
    {1.0 / 24, -1.0 / 12, 1.0 / 6},
    {0, 0, 1},
};
static const double G4[4][3] = {
    {1, 0, 0},
    {0.5, 0.5, 0.5},
    {0.5, -0.5, 0.5},
    {0, 0, 1},
};

/* ---- weight transform ---- */

struct weight_ctx {
    float* u;
    const float* w;
    size_t cin, co_begin, cols;
    int alpha;
    const double (*g)[3];
};

#define WB 64   /* input channels transformed together (vectorised over ci) */

OSN_SIMD_CLONES static void weight_task(void* arg, size_t k) {   /* k: output channel co_begin + k */
    const struct weight_ctx* c = arg;
    const int alpha = c->alpha;
    const size_t plane = c->cols * c->cin;   /* stride of one (i, j) position in u */
    const float* w = c->w + (c->co_begin + k) * c->cin * 9;
    double g[9][WB], t[MAX_ALPHA][3][WB];
    for (size_t ci0 = 0; ci0 < c->cin; ci0 += WB) {
        const size_t nb = c->cin - ci0 < WB ? c->cin - ci0 : WB;
        for (size_t b = 0; b < nb; b++)
            for (int q = 0; q < 9; q++) g[q][b] = w[(ci0 + b) * 9 + q];
        for (int i = 0; i < alpha; i++)       /* t = G g: 3 columns of each kernel */
            for (int col = 0; col < 3; col++)
                for (size_t b = 0; b < nb; b++)
                    t[i][col][b] = c->g[i][0] * g[col][b] + c->g[i][1] * g[3 + col][b] + c->g[i][2] * g[6 + col][b];
        for (int i = 0; i < alpha; i++)       /* u = t G^T */
            for (int j = 0; j < alpha; j++) {
                float* dst = c->u + (size_t)(i * alpha + j) * plane + k * c->cin + ci0;
                for (size_t b = 0; b < nb; b++)
                    dst[b] = (float)(t[i][0][b] * c->g[j][0] + t[i][1][b] * c->g[j][1] + t[i][2][b] * c->g[j][2]);
            }
    }
}

int osn_winograd_weight_f32(osn_pool* pool, float* u, const float* w, size_t cout, size_t cin, size_t co_begin,
                            size_t co_end, int m) {
    if ((m != 4 && m != 2) || !u || !w || co_begin >= co_end || co_end > cout || cin == 0)
        return OSN_E_INVALID_ARGUMENT;
    struct weight_ctx c = {u, w, cin, co_begin, co_end - co_begin, m + 2, m == 4 ? G6 : G4};
    pthreadpool_parallelize_1d(osn_pool_handle(pool), weight_task, &c, c.cols, OSN_PARALLEL_FLAGS);
    return 0;
}

/* ---- the 1-D transforms, on CB channels at once ----
 * Each reads `terms` vectors src + a * ss (a < terms) and writes `rows` vectors dst + r * ds,
 * CB floats each; a 2-D transform is one pass down the columns, then one along the rows.
 * Spelled out (not a matrix product) so zero coefficients cost nothing; a fixed CB and
 * restrict let the compiler keep all of it in vector registers. */

static inline void bt6(float* restrict dst, size_t ds, const float* restrict src, size_t ss) {
    for (int k = 0; k < CB; k++) {
        const float d0 = src[k], d1 = src[ss + k], d2 = src[2 * ss + k], d3 = src[3 * ss + k],
                    d4 = src[4 * ss + k], d5 = src[5 * ss + k];
        dst[k] = 4.0f * d0 - 5.0f * d2 + d4;
        dst[ds + k] = -4.0f * (d1 + d2) + (d3 + d4);
        dst[2 * ds + k] = 4.0f * (d1 - d2) + (d4 - d3);
        dst[3 * ds + k] = 2.0f * (d3 - d1) + (d4 - d2);
        dst[4 * ds + k] = 2.0f * (d1 - d3) + (d4 - d2);
        dst[5 * ds + k] = 4.0f * d1 - 5.0f * d3 + d5;
    }
}

static inline void bt4(float* restrict dst, size_t ds, const float* restrict src, size_t ss) {
    for (int k = 0; k < CB; k++) {
        const float d0 = src[k], d1 = src[ss + k], d2 = src[2 * ss + k], d3 = src[3 * ss + k];
        dst[k] = d0 - d2;
        dst[ds + k] = d1 + d2;
        dst[2 * ds + k] = d2 - d1;
        dst[3 * ds + k] = d1 - d3;
    }
}

static inline void at6(float* restrict dst, size_t ds, const float* restrict src, size_t ss) {
    for (int k = 0; k < CB; k++) {
        const float s0 = src[k], s1 = src[ss + k], s2 = src[2 * ss + k], s3 = src[3 * ss + k],
                    s4 = src[4 * ss + k], s5 = src[5 * ss + k];
        const float p12 = s1 + s2, m12 = s1 - s2, p34 = s3 + s4, m34 = s3 - s4;
        dst[k] = s0 + p12 + p34;
        dst[ds + k] = m12 + 2.0f * m34;
        dst[2 * ds + k] = p12 + 4.0f * p34;
        dst[3 * ds + k] = m12 + 8.0f * m34 + s5;
    }
}

static inline void at4(float* restrict dst, size_t ds, const float* restrict src, size_t ss) {
    for (int k = 0; k < CB; k++) {
        const float s0 = src[k], s1 = src[ss + k], s2 = src[2 * ss + k], s3 = src[3 * ss + k];
        dst[k] = s0 + s1 + s2;
        dst[ds + k] = s1 - s2 - s3;
    }
}

/* dst[0..cb) = src[0..cb): a fixed-width vector copy for whole blocks (memcpy of 256 bytes
 * compiled to `rep movsq`, which profiled as a third of the input transform). */
static inline void copy_block(float* restrict dst, const float* restrict src, int cb) {
    if (cb == CB) {
        for (int k = 0; k < CB; k++) dst[k] = src[k];
    } else {
        for (int k = 0; k < cb; k++) dst[k] = src[k];
    }
}

/* ---- input transform ---- */

struct input_ctx {
    float* v;
    const float* x;
    size_t c, h, w;
    int64_t sn, sc, sh, sw;
    int64_t pad_top, pad_left;
    size_t tiles_h, tiles_w, tile_begin, tile_count;
    int m, alpha;
};

/* One tile; alpha is a literal at each call (input_task6/4), so every loop below has fixed
 * bounds and strides. */
static inline __attribute__((always_inline)) void input_tile(const struct input_ctx* c, size_t t, const int alpha) {
    const size_t g = c->tile_begin + t;
    const size_t per_image = c->tiles_h * c->tiles_w;
    const size_t n = g / per_image, ty = g % per_image / c->tiles_w, tx = g % c->tiles_w;
    const int64_t iy0 = (int64_t)ty * c->m - c->pad_top, ix0 = (int64_t)tx * c->m - c->pad_left;
    const size_t plane = c->tile_count * c->c;   /* stride of one (i, j) position in v */
    float d[MAX_ALPHA * MAX_ALPHA][CB], tmp[MAX_ALPHA * MAX_ALPHA][CB];
    for (size_t c0 = 0; c0 < c->c; c0 += CB) {
        const int cb = (int)(c->c - c0 < CB ? c->c - c0 : CB);
        for (int i = 0; i < alpha; i++) {
            const int64_t iy = iy0 + i;
            for (int j = 0; j < alpha; j++) {
                const int64_t ix = ix0 + j;
                float* o = d[i * alpha + j];
                if (iy < 0 || iy >= (int64_t)c->h || ix < 0 || ix >= (int64_t)c->w) {
                    for (int k = 0; k < CB; k++) o[k] = 0.0f;
                    continue;
                }
                const float* p = c->x + (int64_t)n * c->sn + iy * c->sh + ix * c->sw + (int64_t)c0 * c->sc;
                if (c->sc == 1) {
                    copy_block(o, p, cb);
                } else {
                    for (int k = 0; k < cb; k++) o[k] = p[k * c->sc];
                }
                for (int k = cb; k < CB; k++) o[k] = 0.0f;   /* tail lanes: computed, never stored */
            }
        }
        /* tmp = B^T d (down each column j), then d = tmp B (along each row i) */
        const size_t row = (size_t)alpha * CB;
        for (int j = 0; j < alpha; j++) {
            if (alpha == 6) bt6(tmp[j], row, d[j], row);
            else bt4(tmp[j], row, d[j], row);
        }
        for (int i = 0; i < alpha; i++) {
            if (alpha == 6) bt6(d[i * alpha], CB, tmp[i * alpha], CB);
            else bt4(d[i * alpha], CB, tmp[i * alpha], CB);
        }
        for (int e = 0; e < alpha * alpha; e++)
            copy_block(c->v + e * plane + t * c->c + c0, d[e], cb);
    }
}

OSN_SIMD_CLONES static void input_task6(void* arg, size_t t) { input_tile(arg, t, 6); }
OSN_SIMD_CLONES static void input_task4(void* arg, size_t t) { input_tile(arg, t, 4); }

int osn_winograd_input_f32(osn_pool* pool, float* v, const float* x, size_t n, size_t c, size_t h, size_t w,
                           int64_t sn, int64_t sc, int64_t sh, int64_t sw, size_t pad_top, size_t pad_left,
                           size_t tiles_h, size_t tiles_w, size_t tile_begin, size_t tile_count, int m) {
    if ((m != 4 && m != 2) || !v || !x || c == 0 || tiles_h == 0 || tiles_w == 0
        || tile_begin + tile_count > n * tiles_h * tiles_w)
        return OSN_E_INVALID_ARGUMENT;
    struct input_ctx ctx = {v, x, c, h, w, sn, sc, sh, sw, (int64_t)pad_top, (int64_t)pad_left,
                            tiles_h, tiles_w, tile_begin, tile_count, m, m + 2};
    pthreadpool_parallelize_1d(osn_pool_handle(pool), m == 4 ? input_task6 : input_task4, &ctx, tile_count,
                               OSN_PARALLEL_FLAGS);
    return 0;
}

/* ---- output transform ---- */

struct output_ctx {
    float* y;
    int64_t sn, sc, sh, sw;
    const float* mm;
    const float* bias;
    size_t cols, co_offset, out_h, out_w, tiles_h, tiles_w, tile_begin, tile_count;
    int m, alpha;
};

static inline __attribute__((always_inline)) void output_tile(const struct output_ctx* c, size_t t, const int m) {
    const int alpha = m + 2;
    const size_t g = c->tile_begin + t;
    const size_t per_image = c->tiles_h * c->tiles_w;
    const size_t n = g / per_image, ty = g % per_image / c->tiles_w, tx = g % c->tiles_w;
    const size_t oy0 = ty * m, ox0 = tx * m;
    const size_t plane = c->tile_count * c->cols;
    float s[MAX_ALPHA * MAX_ALPHA][CB], tmp[MAX_ALPHA * MAX_ALPHA][CB], r[MAX_ALPHA * MAX_ALPHA][CB];
    for (size_t c0 = 0; c0 < c->cols; c0 += CB) {
        const int cb = (int)(c->cols - c0 < CB ? c->cols - c0 : CB);
        for (int e = 0; e < alpha * alpha; e++) {
            copy_block(s[e], c->mm + e * plane + t * c->cols + c0, cb);
            for (int k = cb; k < CB; k++) s[e][k] = 0.0f;
        }
        /* tmp = A^T s (m x alpha, down each column b), r = tmp A (m x m, along each row i) */
        const size_t row = (size_t)alpha * CB;
        for (int b = 0; b < alpha; b++) {
            if (alpha == 6) at6(tmp[b], row, s[b], row);
            else at4(tmp[b], row, s[b], row);
        }
        for (int i = 0; i < m; i++) {
            if (alpha == 6) at6(r[i * m], CB, tmp[i * alpha], CB);
            else at4(r[i * m], CB, tmp[i * alpha], CB);
        }
        for (int i = 0; i < m; i++) {
            if (oy0 + i >= c->out_h) break;
            for (int j = 0; j < m; j++) {
                if (ox0 + j >= c->out_w) break;
                float* o = r[i * m + j];
                if (c->bias)
                    for (int k = 0; k < cb; k++) o[k] += c->bias[c0 + k];
                float* p = c->y + (int64_t)n * c->sn + (int64_t)(oy0 + i) * c->sh + (int64_t)(ox0 + j) * c->sw
                         + (int64_t)(c->co_offset + c0) * c->sc;
                if (c->sc == 1) {
                    copy_block(p, o, cb);
                } else {
                    for (int k = 0; k < cb; k++) p[k * c->sc] = o[k];
                }
            }
        }
    }
}

OSN_SIMD_CLONES static void output_task4(void* arg, size_t t) { output_tile(arg, t, 4); }
OSN_SIMD_CLONES static void output_task2(void* arg, size_t t) { output_tile(arg, t, 2); }

int osn_winograd_output_f32(osn_pool* pool, float* y, int64_t sn, int64_t sc, int64_t sh, int64_t sw,
                            const float* mm, const float* bias, size_t cols, size_t co_offset, size_t out_h,
                            size_t out_w, size_t tiles_h, size_t tiles_w, size_t tile_begin, size_t tile_count,
                            int m) {
    if ((m != 4 && m != 2) || !y || !mm || cols == 0 || tiles_h * m < out_h || tiles_w * m < out_w
        || tiles_h == 0 || tiles_w == 0)
        return OSN_E_INVALID_ARGUMENT;
    struct output_ctx ctx = {y, sn, sc, sh, sw, mm, bias, cols, co_offset, out_h, out_w, tiles_h, tiles_w,
                             tile_begin, tile_count, m, m + 2};
    pthreadpool_parallelize_1d(osn_pool_handle(pool), m == 4 ? output_task4 : output_task2, &ctx, tile_count,
                               OSN_PARALLEL_FLAGS);
    return 0;
}

/* ---- the GEMMs on XNNPACK ---- */

#define MAX_POSITIONS (MAX_ALPHA * MAX_ALPHA)

struct osn_winograd_gemm {
    xnn_operator_t ops[MAX_POSITIONS];
    size_t positions, cout, cin;
};

void osn_winograd_gemm_delete(osn_winograd_gemm* g) {
    if (g == NULL) return;
    for (size_t e = 0; e < g->positions; e++)
        if (g->ops[e] != NULL) xnn_delete_operator(g->ops[e]);
    free(g);
}

struct create_ctx {
    osn_winograd_gemm* g;
    const float* u;
    int status[MAX_POSITIONS];
};

static void create_task(void* arg, size_t e) {
    struct create_ctx* c = arg;
    osn_winograd_gemm* g = c->g;
    c->status[e] = (int)xnn_create_fully_connected_nc_f32(g->cin, g->cout, g->cin, g->cout, c->u + e * g->cout * g->cin,
                                                          NULL, -INFINITY, INFINITY, OSN_XNN_FLAGS, &g->ops[e]);
}

int osn_winograd_gemm_create(osn_winograd_gemm** out, osn_pool* pool, const float* u, size_t positions, size_t cout,
                             size_t cin) {
    if (!out || !u || positions == 0 || positions > MAX_POSITIONS || cout == 0 || cin == 0)
        return OSN_E_INVALID_ARGUMENT;
    *out = NULL;
    osn_winograd_gemm* g = calloc(1, sizeof *g);
    if (g == NULL) return OSN_E_OUT_OF_MEMORY;
    g->positions = positions;
    g->cout = cout;
    g->cin = cin;
    /* XNNPACK packs each operator's weights on the thread that creates it: the positions'
     * operators are independent, so their packing is spread over the pool too */
    struct create_ctx c = {g, u, {0}};
    pthreadpool_parallelize_1d(osn_pool_handle(pool), create_task, &c, positions, OSN_PARALLEL_FLAGS);
    for (size_t e = 0; e < positions; e++) {
        if (c.status[e] != 0) {
            osn_winograd_gemm_delete(g);
            return c.status[e];
        }
    }
    *out = g;
    return 0;
}

struct gemm_ctx {
    osn_winograd_gemm* g;
    float* mm;
    const float* v;
    size_t rows;
    int status[MAX_POSITIONS];
};

static void gemm_task(void* arg, size_t e) {
    struct gemm_ctx* c = arg;
    const osn_winograd_gemm* g = c->g;
    enum xnn_status st = xnn_setup_fully_connected_nc_f32(g->ops[e], c->rows, c->v + e * c->rows * g->cin,
                                                          c->mm + e * c->rows * g->cout, NULL);
    if (st == xnn_status_success) st = xnn_run_operator(g->ops[e], NULL);
    c->status[e] = (int)st;
}

int osn_winograd_gemm_run(osn_winograd_gemm* g, osn_pool* pool, float* mm, const float* v, size_t rows) {
    if (!g || !mm || !v || rows == 0) return OSN_E_INVALID_ARGUMENT;
    struct gemm_ctx c = {g, mm, v, rows, {0}};
    pthreadpool_parallelize_1d(osn_pool_handle(pool), gemm_task, &c, g->positions, OSN_PARALLEL_FLAGS);
    for (size_t e = 0; e < g->positions; e++)
        if (c.status[e] != 0) return c.status[e];
    return 0;
}
