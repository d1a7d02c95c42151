"""Native SlicedAttention: the C softmax step (osn_k_attention.c) against its numpy twin,
and the native op against the numpy op and onnxruntime's unfused graph, on sizes that hit
the SIMD tails (13, 19, 127, 131), with and without a mask, both scale ops, float16 inputs,
and every execution path of the op (calling thread / helper threads, row / transposed layout,
several blocks per head with a short last one)."""
from __future__ import annotations

import numpy as np
import pytest

native = pytest.importorskip("onnxstream_py.native")

import onnxstream_py as osp  # noqa: E402
from onnxstream_py import ops  # noqa: E402
from onnxstream_py.converter import convert_model_proto  # noqa: E402
from onnxstream_py.ops import native_attention as na  # noqa: E402
from onnxstream_py.ops.attention import SlicedAttention as numpy_op  # noqa: E402

import model_builders as mb  # noqa: E402
from op_testing import assert_matches  # noqa: E402


def softmax_ref(t: np.ndarray) -> np.ndarray:
    t = t - t.max(-1, keepdims=True)
    e = np.exp(t)
    return e / e.sum(-1, keepdims=True)


# every path of the op: (PARALLEL_MIN_MACS, TRANSPOSED_MIN_KEYS, BLOCK_BYTES)
PATHS = {
    "inline-rows": (1 << 62, 1 << 62, 2 << 20),
    "threads-rows": (0, 1 << 62, 2 << 20),
    "threads-rows-small-blocks": (0, 1 << 62, 2048),
    "threads-transposed-small-blocks": (0, 1, 2048),
    "inline-transposed": (1 << 62, 1, 2 << 20),
}


@pytest.fixture(params=sorted(PATHS))
def path(request, monkeypatch):
    macs, keys, block = PATHS[request.param]
    monkeypatch.setattr(na, "PARALLEL_MIN_MACS", macs)
    monkeypatch.setattr(na, "TRANSPOSED_MIN_KEYS", keys)
    monkeypatch.setattr(na, "BLOCK_BYTES", block)
    return request.param


# ---------------------------------------------------------------- C kernel vs numpy twin

@pytest.mark.parametrize("rows,cols", [(1, 1), (13, 19), (127, 131), (3, 4099)])
@pytest.mark.parametrize("mask_kind", ["none", "full", "one-row"])
@pytest.mark.parametrize("scale", [1.0, 0.125, -0.7])
def test_attention_exp_matches_numpy(rows, cols, mask_kind, scale, ctx):
    rng = np.random.default_rng(rows * 1000 + cols)
    s = (rng.standard_normal((rows, cols)) * 20).astype(np.float32)
    mask = {"none": None, "full": rng.standard_normal((rows, cols)).astype(np.float32) * 5,
            "one-row": rng.standard_normal((1, cols)).astype(np.float32) * 5}[mask_kind]
    t = s * np.float32(scale) + (0 if mask is None else mask)
    want = softmax_ref(t)
    for pool in (None, ctx.pool):
        got, sums = s.copy(), np.empty(rows, np.float32)
        native.attention_exp_f32(got, sums, scale, mask, pool=pool)
        np.testing.assert_allclose(got / sums[:, None], want, rtol=2e-6, atol=1e-7)
        gt, csums = np.ascontiguousarray(s.T), np.empty(rows, np.float32)
        if mask is None:
            native.attention_exp_t_f32(gt, csums, scale, pool=pool)
            np.testing.assert_allclose((gt / csums).T, want, rtol=2e-6, atol=1e-7)


def test_attention_exp_propagates_nan_and_flushes_underflow():
    s = np.array([[0.0, np.nan, 1.0], [0.0, -200.0, 1.0], [-np.inf, -np.inf, -np.inf]], np.float32)
    with np.errstate(invalid="ignore"):
        want = softmax_ref(s)
    got, sums = s.copy(), np.empty(3, np.float32)
    native.attention_exp_f32(got, sums)
    with np.errstate(invalid="ignore"):
        got /= sums[:, None]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert got[1, 1] == 0.0
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)
    gt, csums = np.ascontiguousarray(s.T), np.empty(3, np.float32)
    native.attention_exp_t_f32(gt, csums)
    with np.errstate(invalid="ignore"):
        gt /= csums
    np.testing.assert_array_equal(np.isnan(gt.T), np.isnan(want))


def test_attention_exp_rejects_bad_arrays():
    s, sums = np.zeros((4, 5), np.float32), np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="scores"):
        native.attention_exp_f32(s.astype(np.float64), sums)
    with pytest.raises(ValueError, match="scores"):
        native.attention_exp_f32(np.zeros((4, 10), np.float32)[:, ::2], sums)
    with pytest.raises(ValueError, match="row_sums"):
        native.attention_exp_f32(s, np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="mask"):
        native.attention_exp_f32(s, sums, mask=np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="mask"):
        native.attention_exp_f32(s, sums, mask=np.zeros((4, 10), np.float32)[:, ::2])
    with pytest.raises(ValueError, match="col_sums"):
        native.attention_exp_t_f32(s, sums)
    with pytest.raises(ValueError, match="scores"):
        native.attention_exp_t_f32(s.reshape(-1), sums)


# ---------------------------------------------------------------- the op

def _inputs(shape_q, shape_kt, shape_v, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal(s).astype(dtype) for s in (shape_q, shape_kt, shape_v))


@pytest.mark.parametrize("scale_op", ["mul", "div", ""])
@pytest.mark.parametrize("mask_shape", [None, (127, 131), (1, 131), (2, 1, 1, 131), (127, 1)])
def test_native_op_matches_numpy_op(path, scale_op, mask_shape, ctx):
    q, kt, v = _inputs((2, 3, 127, 19), (2, 3, 19, 131), (2, 3, 131, 13))
    scale = np.array(0.3 if scale_op == "mul" else 2.5, np.float32)
    mask = None if mask_shape is None else np.random.default_rng(1).standard_normal(mask_shape).astype(np.float32)
    native_op = ops.lookup("SlicedAttention", 1, "onnxstream", backend="native")
    assert native_op.backend == "native"
    for slices in (0, 7):
        want = numpy_op(q, kt, v, scale, mask, scale_op=scale_op, slices=slices)
        got = native_op.fn(q, kt, v, scale, mask, scale_op=scale_op, slices=slices, _ctx=ctx)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_native_op_broadcasts_heads_and_strided_inputs(path, ctx):
    rng = np.random.default_rng(2)
    q = rng.standard_normal((2, 4, 19, 13)).astype(np.float32)
    k = rng.standard_normal((2, 1, 131, 13)).astype(np.float32)     # one K/V head shared
    kt = k.transpose(0, 1, 3, 2)                                    # a strided view, as exported
    v = rng.standard_normal((2, 1, 131, 8)).astype(np.float32)
    mask = rng.standard_normal((19, 131)).astype(np.float16)        # a float16 mask on float32 scores
    want = numpy_op(q, kt, v, np.array(3.0, np.float32), mask, scale_op="div", slices=4)
    got = na.SlicedAttention(q, kt, v, np.array(3.0, np.float32), mask, scale_op="div", slices=4, _ctx=ctx)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_native_op_float16_inputs(ctx):
    q, kt, v = _inputs((1, 2, 127, 19), (1, 2, 19, 131), (1, 2, 131, 13), np.float16)
    scale = np.array(0.3, np.float16)
    want = numpy_op(q, kt, v, scale, None, scale_op="mul")
    got = na.SlicedAttention(q, kt, v, scale, None, scale_op="mul", _ctx=ctx)
    assert_matches(got, want, 0, 0, fp16_nmse=1e-6)
    exact = softmax_ref(q.astype(np.float64) @ kt.astype(np.float64) * 0.3) @ v.astype(np.float64)
    assert_matches(got, exact.astype(np.float16), 0, 0, fp16_nmse=1e-5)


def test_native_op_restores_blas_threads(ctx, monkeypatch):
    from onnxstream_py import threads
    monkeypatch.setattr(na, "PARALLEL_MIN_MACS", 0)
    if threads._find_setter() is None or threads._getter is None:
        pytest.skip("numpy's BLAS is not OpenBLAS")
    threads.set_blas_threads(2)
    q, kt, v = _inputs((1, 4, 64, 8), (1, 4, 8, 64), (1, 4, 64, 8))
    na.SlicedAttention(q, kt, v, _ctx=ctx)
    assert threads._getter() == 2


def test_native_op_blocks_stay_within_the_slice_budget():
    for m, n, threads, slices, budget in [(4096, 4096, 2, 0, 16 << 20), (4096, 77, 2, 0, 16 << 20),
                                          (4096, 4096, 2, 0, 1 << 20), (4096, 4096, 4, 3, 16 << 20),
                                          (127, 131, 2, 0, 16 << 20), (13, 19, 2, 7, 1 << 20)]:
        rows = na.block_rows(m, n, threads, slices, budget)
        assert 1 <= rows <= m
        slice_rows = -(-m // slices) if slices else budget // (n * 4)   # the numpy op's slice
        assert threads * rows <= max(slice_rows, threads)               # all threads' blocks at once
        assert rows * n * 4 <= max(na.BLOCK_BYTES, n * 4)


@pytest.mark.parametrize("scale_op,mask", [("Mul", False), ("Div", True)])
@pytest.mark.parametrize("sizes", [(127, 131, 19), (13, 4099, 13)])
def test_native_model_matches_onnxruntime(tmp_path, path, scale_op, mask, sizes):
    m, n, d = sizes
    model = mb.attention(m, n, d, heads=3, scale_op=scale_op, mask=mask)
    convert_model_proto(model, str(tmp_path / "m"))
    rng = np.random.default_rng(3)
    feeds = {name: rng.standard_normal((2, 3, m if name == "q" else n, d)).astype(np.float32) for name in "qkv"}
    ref = mb.ort_run(model, feeds)[0]
    with osp.Model(str(tmp_path / "m"), options=osp.RunOptions(backend="native", threads=2)) as model_run:
        assert model_run.plan.fusions == {"SlicedAttention": 1}
        np.testing.assert_allclose(model_run.run(feeds)["y"], ref, rtol=1e-5, atol=1e-6)
