/* Winograd convolution F(m x m, 3 x 3) in float32, m = 4 (6 x 6 tiles) or m = 2 (4 x 4 tiles),
 * for 3x3, stride-1, dilation-1, ungrouped convolutions. Reference: Lavin & Gray, "Fast
 * Algorithms for Convolutional Neural Networks" (arXiv 1509.09308), section 4.
 *
 * Y = A^T [ (G g G^T) . (B^T d B) ] A per output tile: the element-wise product over
 * alpha x alpha positions (alpha = m + 2), summed over input channels, is alpha^2 independent
 * GEMMs [tiles, Cin] @ [Cin, Cout]. These kernels are the three transforms around those GEMMs
 * (which the caller runs on its fastest GEMM, e.g. BLAS): weights once per operator, input
 * and output for one chunk of tiles at a time, so the scratch memory (alpha^2 x chunk x C)
 * stays bounded whatever the image size.
 *
 * Tensors are addressed through element strides (n, c, h, w), so NCHW and channels-last
 * (NHWC) activations are read and written in place; channels-last is the fast case (the
 * channel axis is contiguous and the transforms vectorise over it). Transforms run as plain
 * C over blocks of channels, the compiler vectorises the channel loops. A tile's index is
 * (n * tiles_h + ty) * tiles_w + tx; tile (ty, tx) covers output rows ty*m .. ty*m+m-1 and reads
 * input rows ty*m - pad_top .. ty*m - pad_top + alpha - 1 (rows outside the input are zero).
 */
#ifndef OSN_K_WINOGRAD_H
#define OSN_K_WINOGRAD_H
#include <stddef.h>
#include <stdint.h>

#include "osn_core.h"

/* CDEF BEGIN */
/* u[i * alpha + j, co - co_begin, ci] = (G g[co, ci] G^T)[i, j] for co in [co_begin, co_end):
 * the transformed weight of a block of output channels (computed in double, rounded once). */
int osn_winograd_weight_f32(
    osn_pool* pool,              /* threads to use (NULL: the calling thread) */
    float* u,                    /* [alpha * alpha, co_end - co_begin, cin] output */
    const float* w,              /* [cout, cin, 3, 3] ONNX Conv weight */
    size_t cout,                 /* output channels of w */
    size_t cin,                  /* input channels */
    size_t co_begin,             /* first output channel transformed */
    size_t co_end,               /* one past the last */
    int m);                      /* output tile size: 4 (F(4x4,3x3)) or 2 (F(2x2,3x3)) */

/* v[i * alpha + j, t, c] = (B^T d_t B)[i, j] for the input tiles d_t of tiles
 * tile_begin .. tile_begin + tile_count - 1 (zero outside the input: the padding). */
int osn_winograd_input_f32(
    osn_pool* pool,              /* threads to use (NULL: the calling thread) */
    float* v,                    /* [alpha * alpha, tile_count, c] output */
    const float* x,              /* input element (0, 0, 0, 0), addressed with the strides below */
    size_t n, size_t c, size_t h, size_t w,   /* input sizes (NCHW order) */
    int64_t sn, int64_t sc, int64_t sh, int64_t sw,   /* input element strides */
    size_t pad_top, size_t pad_left,
    size_t tiles_h, size_t tiles_w,           /* tiles per image: ceil(out_h / m), ceil(out_w / m) */
    size_t tile_begin, size_t tile_count,     /* this chunk of tiles (indices over all n) */
    int m);                      /* 4 or 2 */

/* y[n, co_offset + k, oy, ox] = (A^T mm_t[:, :, k] A)[oy - ty*m, ox - tx*m] + bias[k] for the
 * tiles of the chunk, k < cols, clipped to the out_h x out_w output. */
int osn_winograd_output_f32(
    osn_pool* pool,              /* threads to use (NULL: the calling thread) */
    float* y,                    /* output element (0, 0, 0, 0), addressed with the strides below */
    int64_t sn, int64_t sc, int64_t sh, int64_t sw,   /* output element strides */
    const float* mm,             /* [alpha * alpha, tile_count, cols] the GEMMs' results */
    const float* bias,           /* [cols] bias of these channels, or NULL */
    size_t cols,                 /* output channels in this call */
    size_t co_offset,            /* channel of y where they go */
    size_t out_h, size_t out_w,
    size_t tiles_h, size_t tiles_w,
    size_t tile_begin, size_t tile_count,
    int m);                      /* 4 or 2 */

/* The alpha^2 GEMMs mm[e] = v[e] @ u[e]^T as XNNPACK fully-connected operators, one per position
 * e (u[e] packed at creation; the caller's u may be freed after). A run is ONE parallel pass
 * over the positions, each operator running single-threaded on the thread that takes it: the
 * GEMMs are independent and alpha^2 (16 or 36) splits evenly over 2 or 4 threads, so there is
 * one hand-off per chunk instead of one per GEMM. */
typedef struct osn_winograd_gemm osn_winograd_gemm;

int osn_winograd_gemm_create(
    osn_winograd_gemm** gemm_out,  /* the created object */
    osn_pool* pool,              /* threads packing the positions' operators (NULL: the calling thread) */
    const float* u,              /* [positions, cout, cin] transformed weight */
    size_t positions,            /* alpha^2: 36 or 16 */
    size_t cout,
    size_t cin);

int osn_winograd_gemm_run(
    osn_winograd_gemm* gemm,
    osn_pool* pool,              /* threads to use (NULL: the calling thread) */
    float* mm,                   /* [positions, rows, cout] output */
    const float* v,              /* [positions, rows, cin] input, followed by 16 readable bytes */
    size_t rows);                /* tiles of this chunk */

void osn_winograd_gemm_delete(osn_winograd_gemm* gemm);
/* CDEF END */

#endif
