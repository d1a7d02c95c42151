"""Our own C kernels (native/osn_k_*.c) against their numpy twins.

Twins: the numpy ops (ops/norm.py, ops/elementwise.py, ops/reduce.py) and numpy's own
float16 casts, on seeded inputs whose sizes hit SIMD tails (13, 19, 127, odd spatial sizes)
and both code paths of the normalisation kernel (short rows in one task, long rows split in
chunks). float32 throughout, compared with allclose at explicit tolerances; the float16
conversions must be bit-exact. Then the ONNX backend node cases of these ops on the native
backend, and the error paths of the wrappers.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import onnxstream_py
from onnxstream_py import native, ops
from onnxstream_py.ops import elementwise, native_kernels as nk, norm, reduce

from engine_runner import run_model
from test_onnx_backend import CASES, EXCLUDED, _array
from op_testing import rand_f32 as _rand

ops.load_native()


# --------------------------------------------------------------------------- normalisation
# [N, C, *spatial]; the last two have rows longer than one 64K-element chunk (chunked path).
NORM_SHAPES = [(1, 13, 19), (2, 19, 7, 5), (1, 127, 3), (2, 3, 70001), (1, 1, 2, 65537)]


@pytest.mark.parametrize("shape", NORM_SHAPES, ids=str)
@pytest.mark.parametrize("loc", [0.0, 100.0], ids=["centred", "offset"])
def test_instance_norm_matches_numpy(ctx, shape, loc):
    x = _rand(shape, 1, loc=loc, scale=3.0)
    c = shape[1]
    scale, bias = _rand(c, 2), _rand(c, 3)
    got = nk.InstanceNormalization(x, scale, bias, epsilon=1e-5, _ctx=ctx)
    want = norm.InstanceNormalization(x, scale, bias, epsilon=1e-5)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("shape,groups", [((2, 12, 7, 5), 3), ((1, 38, 19), 19), ((1, 4, 40000), 2)], ids=str)
def test_group_norm_matches_numpy(ctx, shape, groups):
    x = _rand(shape, 4, loc=1.0)
    c = shape[1]
    s18, b18 = _rand(groups, 5), _rand(groups, 6)
    got = nk.GroupNormalization18(x, s18, b18, epsilon=1e-3, num_groups=groups, _ctx=ctx)
    want = norm.GroupNormalization18(x, s18, b18, epsilon=1e-3, num_groups=groups)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)
    s21, b21 = _rand(c, 7), _rand(c, 8)
    got = nk.GroupNormalization21(x, s21, b21, epsilon=1e-3, num_groups=groups, _ctx=ctx)
    want = norm.GroupNormalization21(x, s21, b21, epsilon=1e-3, num_groups=groups)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("shape,axis", [((3, 19, 127), -1), ((2, 5, 320), -1), ((4, 13), 1),
                                        ((2, 3, 7, 19), 2), ((1, 9000), -1)], ids=str)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("noutputs", [1, 3])
def test_layer_norm_matches_numpy(ctx, shape, axis, with_bias, noutputs):
    x = _rand(shape, 9, loc=5.0, scale=2.0)
    norm_shape = shape[axis:]
    scale = _rand(norm_shape, 10)
    bias = _rand(norm_shape[-1:], 11) if with_bias else None   # B broadcasts over norm_shape
    got = nk.LayerNormalization(x, scale, bias, axis=axis, epsilon=1e-5, _noutputs=noutputs, _ctx=ctx)
    want = norm.LayerNormalization(x, scale, bias, axis=axis, epsilon=1e-5)
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == noutputs
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=2e-5)


def test_norm_falls_back_to_numpy(ctx):
    x16 = _rand((1, 3, 19), 12).astype(np.float16)
    ones, zeros = np.ones(3, np.float32), np.zeros(3, np.float32)
    got = nk.InstanceNormalization(x16, ones, zeros, _ctx=ctx)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, norm.InstanceNormalization(x16, ones, zeros))
    with pytest.raises(ValueError, match="divisible"):
        nk.GroupNormalization21(_rand((1, 4, 5)), np.ones(4, np.float32), np.zeros(4, np.float32),
                                num_groups=3, _ctx=ctx)


# --------------------------------------------------------------------------- Erf, Gelu
def _special_values():
    return np.array([0.0, -0.0, 1e-30, -1e-30, 0.4999, 0.5, -0.5, 0.5001, 3.0, 9.0, -9.5, 1e30,
                     np.inf, -np.inf], dtype=np.float32)


@pytest.mark.parametrize("n", [13, 19, 127, 100003])
def test_erf_accuracy(ctx, n):
    x = np.concatenate([_special_values(), _rand(n, 13, scale=2.5)])
    got = nk.Erf(x, _ctx=ctx)
    want = np.array([math.erf(v) for v in x.astype(np.float64)])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=3e-7)
    np.testing.assert_allclose(got, elementwise.Erf(x), rtol=0, atol=3e-7)   # the numpy twin
    assert np.isnan(nk.Erf(np.array([np.nan], np.float32), _ctx=ctx)).all()


def test_zero_dim_inputs_keep_their_shape(ctx):
    x = np.array(0.5, np.float32)
    assert nk.Erf(x, _ctx=ctx).shape == ()
    assert nk.Gelu(x, _ctx=ctx).shape == ()
    assert nk.Cast6(x, to=10, _ctx=ctx).shape == ()
    assert nk.Cast6(x.astype(np.float16), to=1, _ctx=ctx).shape == ()


def test_erf_in_place_into_donated_buffer(ctx):
    x = _rand((7, 19), 14)
    want = nk.Erf(x, _ctx=ctx)
    buf = x.copy()
    got = nk.Erf(buf, _out=buf, _ctx=ctx)
    assert got is buf
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("n", [13, 127, 40009])
def test_gelu_matches_float64(ctx, approximate, n):
    x = np.concatenate([_special_values()[:-4], _rand(n, 15, scale=3.0)])
    got = nk.Gelu(x, approximate=approximate, _ctx=ctx)
    w = x.astype(np.float64)
    if approximate == "none":
        want = 0.5 * w * (1 + np.array([math.erf(v / math.sqrt(2)) for v in w]))
    else:
        want = 0.5 * w * (1 + np.tanh(math.sqrt(2 / math.pi) * (w + 0.044715 * w ** 3)))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got, elementwise.Gelu(x, approximate=approximate), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- Softmax
@pytest.mark.parametrize("shape", [(3, 13), (2, 19, 127), (1, 5000), (4, 1)], ids=str)
def test_softmax_matches_numpy(ctx, shape):
    x = _rand(shape, 16, scale=10.0)
    x.reshape(-1)[::7] = -np.inf    # masked scores
    x.reshape(-1, shape[-1])[:, 0] = 80.0
    got = nk.Softmax13(x, axis=-1, _ctx=ctx)
    np.testing.assert_allclose(got, reduce.Softmax13(x, axis=-1), rtol=1e-5, atol=1e-7)
    got1 = nk.Softmax1(x, axis=x.ndim - 1, _ctx=ctx)
    np.testing.assert_allclose(got1, reduce.Softmax1(x, axis=x.ndim - 1), rtol=1e-5, atol=1e-7)


def test_softmax_in_place_into_donated_buffer(ctx):
    x = _rand((3, 5, 4099), 20)
    want = reduce.Softmax13(x)
    buf = x.copy()
    assert nk.Softmax13(buf, _out=buf, _ctx=ctx) is buf
    np.testing.assert_allclose(buf, want, rtol=1e-5, atol=1e-7)
    buf = x.copy()
    np.testing.assert_allclose(nk.Softmax1(buf, axis=1, _out=buf, _ctx=ctx), reduce.Softmax1(x, axis=1),
                               rtol=1e-5, atol=1e-7)


def test_softmax_opset1_flattens_and_other_axes_fall_back(ctx):
    x = _rand((2, 3, 19), 17)
    np.testing.assert_allclose(nk.Softmax1(x, axis=1, _ctx=ctx), reduce.Softmax1(x, axis=1), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(nk.Softmax13(x, axis=1, _ctx=ctx), reduce.Softmax13(x, axis=1))
    assert np.isnan(nk.Softmax13(np.array([[1.0, np.nan, 2.0]], np.float32), _ctx=ctx)).all()


# --------------------------------------------------------------------------- float16 <-> float32
def test_f16_to_f32_exhaustive(ctx):
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    got = native.f16_to_f32(h, pool=ctx.pool)
    want = h.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got.view(np.uint32)[~nan], want.view(np.uint32)[~nan])


def test_f32_to_f16_rounding_matches_numpy(ctx):
    bits = np.random.default_rng(18).integers(0, 1 << 32, size=1 << 20, dtype=np.uint64).astype(np.uint32)
    # every float of exponents 101..143 around the half range, sampled densely, plus the ties
    dense = np.arange(101 << 23, 144 << 23, 997, dtype=np.uint32)
    ties = (np.arange(113, 143, dtype=np.uint32) << 23) | 0x1000 | (np.arange(30, dtype=np.uint32) << 13)
    edges = np.array([0x477fefff, 0x477ff000, 0x477fe000, 0x38800000, 0x387fffff, 0x33000000, 0x33000001,
                      0x7f800000, 0x7fc00000, 0x7f800001], dtype=np.uint32)
    u = np.concatenate([bits, dense, ties, edges])
    f = np.concatenate([u, u | 0x80000000]).view(np.float32)
    got = native.f32_to_f16(f, pool=ctx.pool)
    with np.errstate(all="ignore"):
        want = f.astype(np.float16)
    nan = np.isnan(f)
    assert np.isnan(got[nan]).all()
    assert np.array_equal(got.view(np.uint16)[~nan], want.view(np.uint16)[~nan])


def test_cast_op(ctx):
    x = _rand((3, 19, 13), 19)[:, ::2]   # strided input
    h = nk.Cast19(x, to=10, _ctx=ctx)
    assert h.dtype == np.float16
    np.testing.assert_array_equal(h, x.astype(np.float16))
    np.testing.assert_array_equal(nk.Cast6(h, to=1, _ctx=ctx), h.astype(np.float32))
    np.testing.assert_array_equal(nk.Cast6(x, to=7, _ctx=ctx), x.astype(np.int64))   # numpy path


# --------------------------------------------------------------------------- wrapper errors
def test_wrappers_reject_bad_arrays():
    x = _rand((4, 6))
    with pytest.raises(ValueError, match="float32"):
        native.erf_f32(x.astype(np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        native.softmax_f32(x[:, ::2])
    with pytest.raises(ValueError, match="shape"):
        native.erf_f32(x, out=np.empty((4, 5), np.float32))
    buf = _rand(30)
    with pytest.raises(ValueError, match="overlaps"):
        native.softmax_f32(buf[:24].reshape(4, 6), out=buf[6:].reshape(4, 6))   # shifted overlap
    with pytest.raises(ValueError, match="overlaps"):
        native.layer_norm_f32(x, np.ones(6, np.float32), None, 1e-5, out=x)      # no in-place LayerNorm
    with pytest.raises(ValueError, match="scale"):
        native.group_norm_f32(x.reshape(1, 4, 6), np.ones(3, np.float32), np.zeros(4, np.float32), 4, 1e-5)
    with pytest.raises(ValueError, match="divisible"):
        native.group_norm_f32(x.reshape(1, 4, 6), np.ones(4, np.float32), np.zeros(4, np.float32), 3, 1e-5)
    with pytest.raises(ValueError, match="bias"):
        native.layer_norm_f32(x, np.ones(6, np.float32), np.zeros(5, np.float32), 1e-5)
    with pytest.raises(ValueError, match="mean"):
        native.layer_norm_f32(x, np.ones(6, np.float32), None, 1e-5, mean=np.empty(3, np.float32))
    with pytest.raises(ValueError, match="float16"):
        native.f16_to_f32(x)
    with pytest.raises(ValueError, match="float32"):
        native.f32_to_f16(x.astype(np.float16))


# --------------------------------------------------------------------------- ONNX backend cases
OWN_OPS = {"InstanceNormalization", "GroupNormalization", "LayerNormalization", "Erf", "Gelu", "Softmax", "Cast"}
OWN_CASES = [c for c in CASES if any(n.op_type in OWN_OPS for n in c.model.graph.node)]


@pytest.mark.parametrize("case", OWN_CASES, ids=[c.name for c in OWN_CASES])
def test_backend_cases_native(case):
    if case.name in EXCLUDED:
        pytest.xfail(EXCLUDED[case.name])
    graph = case.model.graph
    for inputs, expected in case.data_sets:
        feeds = {i.name: _array(x) for i, x in zip(graph.input, inputs)}
        got = run_model(case.model, feeds, options=onnxstream_py.RunOptions(backend="native", threads=2))
        for out, g, e in zip(graph.output, got, expected):
            e = np.asarray(_array(e))
            assert g.dtype == e.dtype and g.shape == e.shape, (out.name, g.dtype, g.shape, e.dtype, e.shape)
            if e.dtype.kind == "f":
                np.testing.assert_allclose(g, e, rtol=case.rtol, atol=case.atol, err_msg=out.name)
            else:
                np.testing.assert_array_equal(g, e, err_msg=out.name)
