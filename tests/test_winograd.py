"""Winograd F(4x4,3x3) / F(2x2,3x3) convolution (ops/winograd.py, native/osn_k_winograd.c).

Against ops/conv.py's conv_nd in float64 (the exact answer) on sizes that hit the channel
loops' tails (13, 19, 127 channels; CB = 64 channels per block), H and W that are not
multiples of the tile, pads 0 / 1 / asymmetric, NCHW and channels-last, both variants; the
native transforms against their numpy twins; chunking and weight blocking; the prepared
(cached) weight; and the error paths.

Accuracy (tolerances below): F(2x2) is as accurate as a direct float32 convolution; F(4x4)
loses about one decimal digit (B^T and A^T entries up to 5 and 8 amplify rounding). On
VAE-like data (weights ~ N(0, 1/fan_in), activations SiLU(GroupNorm-like), 128..512 channels)
max|err| / max|ref| measured 0.8-1.0e-5 for F(4x4) and ~6e-7 for F(2x2) (XNNPACK's direct
convolution: 1.3-2.9e-6, BLAS: ~5e-7); NMSE 4-8e-12 (F(4x4)) vs 1-2e-13 (F(2x2)).
"""
from __future__ import annotations

import numpy as np
import pytest

from onnxstream_py import native
from onnxstream_py.layout import as_nhwc, is_nhwc
from onnxstream_py.ops.conv import conv_nd
from onnxstream_py.ops.winograd import (PreparedWinograd, conv2d_winograd, conv2d_winograd_ref,
                                        weight_transform_ref, winograd_matrices)

# max|err| / max|ref| against the float64 convolution on the small cases below
TOL = {"f4": 1e-5, "f2": 2e-6}

CASES = [   # (N, Cin, Cout, H, W, pads [top, left, bottom, right])
    (1, 13, 19, 11, 9, [1, 1, 1, 1]),
    (2, 19, 13, 7, 10, [0, 0, 0, 0]),
    (1, 127, 19, 13, 14, [0, 1, 2, 1]),
    (1, 3, 127, 5, 3, [2, 0, 0, 1]),
    (1, 70, 65, 3, 3, [0, 0, 0, 0]),      # one output pixel: a single, mostly clipped tile
]


@pytest.fixture(scope="module")
def pool():
    p = native.ThreadPool(2)
    yield p
    p.close()


def _case(n, cin, cout, h, w, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    wt = (rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(9 * cin)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    return x, wt, b


def _exact(x, w, b, pads):
    return conv_nd(x.astype(np.float64), w.astype(np.float64), None if b is None else b.astype(np.float64),
                   None, pads)


def _rel(y, ref):
    return float(np.abs(y.astype(np.float64) - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("gemm", ["blas", "xnnpack"])
@pytest.mark.parametrize("variant", ["f4", "f2"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:5])) + "p" + "".join(map(str, c[5])))
def test_matches_direct_convolution(pool, case, layout, variant, gemm):
    n, cin, cout, h, w, pads = case
    x, wt, b = _case(n, cin, cout, h, w)
    ref = _exact(x, wt, b, pads)
    xin = as_nhwc(x).transpose(0, 3, 1, 2) if layout == "nhwc" else x
    y = conv2d_winograd(xin, wt, b, pads, pool, variant, gemm=gemm)
    assert y.shape == ref.shape
    assert is_nhwc(y) == (layout == "nhwc" and y.shape[1] > 1 and y.shape[2] * y.shape[3] > 1)
    assert _rel(y, ref) <= TOL[variant]
    # the numpy twin computes the same thing
    assert _rel(conv2d_winograd_ref(x, wt, b, pads, variant), ref) <= TOL[variant]


@pytest.mark.parametrize("gemm", ["blas", "xnnpack"])
@pytest.mark.parametrize("variant", ["f4", "f2"])
def test_chunks_and_weight_blocks(pool, variant, gemm):
    """Tiny scratch and weight budgets (many chunks, partial last chunk, several output-channel
    blocks, no bias) give the whole computation's result."""
    x, wt, _ = _case(2, 19, 37, 9, 11, seed=3)
    pads = [1, 0, 1, 2]
    ref = _exact(x, wt, None, pads)
    whole = conv2d_winograd(x, wt, None, pads, pool, variant, gemm=gemm)
    parts = conv2d_winograd(as_nhwc(x).transpose(0, 3, 1, 2), wt, None, pads, pool, variant, gemm=gemm,
                            chunk_bytes=20000, weight_block_bytes=5000)
    assert _rel(parts, whole.astype(np.float64)) <= TOL[variant]   # GEMM sizes differ: sum order too
    assert _rel(parts, ref) <= TOL[variant]


@pytest.mark.parametrize("m", [4, 2])
def test_weight_transform_matches_twin(pool, m):
    _, wt, _ = _case(1, 19, 13, 1, 1, seed=5)
    u = native.winograd_weight_f32(wt, m, pool=pool)
    np.testing.assert_allclose(u, weight_transform_ref(wt, m), rtol=1e-6, atol=1e-7)
    block = native.winograd_weight_f32(wt, m, 3, 9, pool=pool)
    np.testing.assert_array_equal(block, u[:, 3:9])


@pytest.mark.parametrize("m", [4, 2])
def test_matrices_compute_a_correlation(m):
    """A^T [(G g G^T) . (B^T d B)] A is the valid 3x3 correlation of one alpha x alpha tile."""
    bt, g, at = winograd_matrices(m)
    rng = np.random.default_rng(7)
    d, k = rng.standard_normal((m + 2, m + 2)), rng.standard_normal((3, 3))
    y = at @ ((g @ k @ g.T) * (bt @ d @ bt.T)) @ at.T
    direct = np.array([[np.sum(d[i:i + 3, j:j + 3] * k) for j in range(m)] for i in range(m)])
    np.testing.assert_allclose(y, direct, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("positions", [36, 16])
@pytest.mark.parametrize("packed_on", ["caller", "pool"])
def test_xnnpack_gemms_match_numpy(pool, positions, packed_on):
    """The operators (packed on the calling thread, or spread over the pool) give numpy's GEMMs,
    the same bits either way."""
    rng = np.random.default_rng(8)
    u = rng.standard_normal((positions, 19, 127)).astype(np.float32)
    v = native.xnn_empty((positions, 13, 127), np.float32)
    v[...] = rng.standard_normal(v.shape)
    mm = np.empty((positions, 13, 19), np.float32)
    with native.WinogradGemm(u) as g0:
        want = np.empty_like(mm)
        g0.run(v, want, pool)
    with native.WinogradGemm(u, pool if packed_on == "pool" else None) as g:
        g.run(v, mm, pool)
        np.testing.assert_allclose(mm, np.matmul(v, u.transpose(0, 2, 1)), rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(mm, want)
        with pytest.raises(ValueError, match="must be"):
            g.run(v[:, :, :100].copy(), mm, pool)
        with pytest.raises(ValueError, match="must be"):
            g.run(v, mm[:, :5], pool)
    with pytest.raises(native.NativeError, match="after close"):
        g.run(v, mm, pool)
    with pytest.raises(ValueError, match="16 or 36"):
        native.WinogradGemm(u[:5])


def test_native_matches_twin(pool):
    """Same transforms and float32 rounding points (summation orders differ: BLAS, einsum)."""
    x, wt, b = _case(1, 127, 19, 13, 14, seed=2)
    pads = [1, 1, 1, 1]
    for variant in ("f4", "f2"):
        y = conv2d_winograd(x, wt, b, pads, pool, variant)
        assert _rel(y, conv2d_winograd_ref(x, wt, b, pads, variant).astype(np.float64)) <= TOL[variant]


@pytest.mark.parametrize("gemm", ["blas", "xnnpack"])
def test_prepared_weight(pool, gemm):
    x, wt, b = _case(1, 19, 13, 10, 10, seed=4)
    pads = [1, 1, 1, 1]
    prep = PreparedWinograd(wt, b, "f4", pool, gemm)
    assert prep.nbytes == 36 * 13 * 19 * 4 + 13 * 4
    y = conv2d_winograd(x, None, None, pads, pool, prepared=prep)
    np.testing.assert_allclose(y, conv2d_winograd(x, wt, b, pads, pool, "f4", gemm=gemm), rtol=1e-6, atol=1e-6)
    y2 = conv2d_winograd(as_nhwc(x).transpose(0, 3, 1, 2), None, None, pads, pool, prepared=prep)
    np.testing.assert_allclose(y2, y, rtol=1e-6, atol=1e-6)
    assert is_nhwc(y2) and y.flags.c_contiguous
    with pytest.raises(ValueError, match="channels"):
        conv2d_winograd(x[:, :5], None, None, pads, pool, prepared=prep)
    prep.close()
    with pytest.raises(ValueError, match="closed"):
        conv2d_winograd(x, None, None, pads, pool, prepared=prep)


def test_other_strides_are_copied(pool):
    x, wt, b = _case(1, 13, 19, 12, 15, seed=6)
    xs = x[:, :, 1:, ::2]                  # neither NCHW-contiguous nor channels-last
    y = conv2d_winograd(xs, wt, b, [1, 1, 1, 1], pool, "f2")
    assert y.flags.c_contiguous
    assert _rel(y, _exact(np.ascontiguousarray(xs), wt, b, [1, 1, 1, 1])) <= TOL["f2"]


def test_bad_input_raises(pool):
    x, wt, b = _case(1, 13, 19, 8, 8)
    with pytest.raises(ValueError, match="variant"):
        conv2d_winograd(x, wt, b, [1, 1, 1, 1], pool, "f6")
    with pytest.raises(ValueError, match="gemm"):
        conv2d_winograd(x, wt, b, [1, 1, 1, 1], pool, gemm="mkl")
    with pytest.raises(ValueError, match="float32"):
        conv2d_winograd(x.astype(np.float64), wt, b, [1, 1, 1, 1], pool)
    with pytest.raises(ValueError, match=r"\[Cout, Cin, 3, 3\]"):
        conv2d_winograd(x, wt[:, :, :2], b, [1, 1, 1, 1], pool)
    with pytest.raises(ValueError, match="channels"):
        conv2d_winograd(x[:, :7], wt, b, [1, 1, 1, 1], pool)
    with pytest.raises(ValueError, match="B must be"):
        conv2d_winograd(x, wt, b[:3], [1, 1, 1, 1], pool)
    with pytest.raises(ValueError, match="pads"):
        conv2d_winograd(x, wt, b, [1, -1, 1, 1], pool)
    with pytest.raises(ValueError, match="no output"):
        conv2d_winograd(x[:, :, :1, :1], wt, b, [0, 0, 0, 0], pool)
    with pytest.raises(ValueError, match="tiling"):
        native.winograd_input_f32(x, (1, 1), (2, 2), 3, 5, 4, pool=pool)
    with pytest.raises(ValueError, match="M must be"):
        native.winograd_output_f32(np.empty((1, 19, 8, 8), np.float32), np.empty((36, 3, 19), np.float32), None,
                                   0, (2, 2), 0, 4, 4, pool=pool)
    with pytest.raises(ValueError, match="do not fit"):
        native.winograd_output_f32(np.empty((1, 19, 8, 8), np.float32), np.empty((36, 4, 19), np.float32), None,
                                   1, (2, 2), 0, 4, 4, pool=pool)
    with pytest.raises(ValueError, match="neither"):
        native.winograd_input_f32(x[:, :, :, ::2], (1, 1), (2, 1), 0, 2, 4, pool=pool)
