"""Weight slicing (RunOptions.max_weight_chunk_bytes): Conv, MatMul and Gemm whose weights
stream from DiskNoCache in chunks of rows give the unchunked outputs (bitwise for XNNPACK's
output-channel chunks, else within 1e-6 x max|y|: BLAS blocking, K-split sums) with each
kernel forced, in both input layouts and with --fp16 storage; the provider's row-range reads;
and the option's validation. A counting provider proves the chunked path ran.
"""
from __future__ import annotations

import tempfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxstream_py
import weights_providers as wp
from weights_providers.format import WeightsWriter
from onnxstream_py import kernel_choice
from onnxstream_py.converter import convert_model_proto
from onnxstream_py.weight_ref import WeightRef
from op_testing import ort_outputs
from weights_providers.tensorfile import is_mapped


class CountingNoCache(wp.DiskNoCache):
    """DiskNoCache recording which tensors were read whole and which by row ranges."""

    def __init__(self, path):
        super().__init__(path)
        self.whole, self.ranges = [], []

    def get(self, name):
        self.whole.append(name)
        return super().get(name)

    def get_rows(self, name, rows):
        self.ranges.append((name, int(rows[0]), int(rows[-1]) + 1))
        return super().get_rows(name, rows)


def _model(nodes, inputs, weights, output_rank):
    g = helper.make_graph(
        nodes, "chunks",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape)) for k, v in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * output_rank)],
        [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, feeds, chunk_bytes, fp16=False):
    """Outputs with the given max_weight_chunk_bytes on a counting DiskNoCache, and the provider."""
    with tempfile.TemporaryDirectory() as d:
        convert_model_proto(model, d + "/m", fp16=fp16)
        provider = CountingNoCache(d + "/m")
        opts = onnxstream_py.RunOptions(backend="native", threads=2, max_weight_chunk_bytes=chunk_bytes)
        with onnxstream_py.Model(d + "/m", provider=provider, options=opts) as m:
            out = m.run(feeds)["y"]
    return out, provider


def _cases():
    rng = np.random.default_rng(5)
    f = np.float32
    x = rng.standard_normal((1, 19, 11, 9)).astype(f)
    w1 = (rng.standard_normal((37, 19, 3, 3)) / 13).astype(f)
    b1 = rng.standard_normal(37).astype(f)
    w2 = (rng.standard_normal((29, 37, 3, 3)) / 18).astype(f)
    b2 = rng.standard_normal(29).astype(f)
    w3 = (rng.standard_normal((23, 37, 1, 1)) / 6).astype(f)
    cases = [
        # NCHW input, bias, padding and stride
        ("conv-nchw", _model([helper.make_node("Conv", ["x", "w1", "b1"], ["y"], pads=[1, 0, 2, 1], strides=[2, 1])],
                             {"x": x}, {"w1": w1, "b1": b1}, 4), {"x": x}, "w1"),
        # the first Conv's XNNPACK output is channels-last: the chunked second Conv reads that layout
        ("conv-channels-last", _model([helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1]),
                                       helper.make_node("Conv", ["h", "w2", "b2"], ["y"], pads=[1, 1, 1, 1])],
                                      {"x": x}, {"w1": w1, "b1": b1, "w2": w2, "b2": b2}, 4), {"x": x}, "w2"),
        ("conv-pointwise-channels-last", _model([helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1]),
                                                 helper.make_node("Conv", ["h", "w3"], ["y"])],
                                                {"x": x}, {"w1": w1, "b1": b1, "w3": w3}, 4), {"x": x}, "w3"),
    ]
    a = rng.standard_normal((2, 7, 127)).astype(f)
    bm = (rng.standard_normal((127, 19)) / 11).astype(f)
    cases.append(("matmul-kn", _model([helper.make_node("MatMul", ["a", "b"], ["y"])], {"a": a}, {"b": bm}, 3),
                  {"a": a}, "b"))
    g = rng.standard_normal((13, 127)).astype(f)
    wt = (rng.standard_normal((19, 127)) / 11).astype(f)
    c = rng.standard_normal(19).astype(f)
    cases.append(("gemm-transB-bias", _model([helper.make_node("Gemm", ["a", "w", "c"], ["y"], transB=1)],
                                             {"a": g}, {"w": wt, "c": c}, 2), {"a": g}, "w"))
    cases.append(("gemm-kn-bias", _model([helper.make_node("Gemm", ["a", "w", "c"], ["y"])],
                                         {"a": g}, {"w": np.ascontiguousarray(wt.T), "c": c}, 2), {"a": g}, "w"))
    return cases


CASES = _cases()


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16-storage"])
@pytest.mark.parametrize("choice", ["xnnpack", "blas"])
@pytest.mark.parametrize("name,model,feeds,weight", CASES, ids=[c[0] for c in CASES])
def test_chunked_matches_unchunked(name, model, feeds, weight, choice, fp16):
    kernel_choice.clear()
    with kernel_choice.forced(choice):
        want, whole = _run(model, feeds, 0, fp16)
        got, chunked = _run(model, feeds, 700, fp16)      # a few rows of each weight per chunk
    assert weight in whole.whole and not whole.ranges
    ranges = [(r0, r1) for n, r0, r1 in chunked.ranges if n == weight]
    assert weight not in chunked.whole and len(ranges) > 2
    assert ranges[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))   # covers every row once
    if choice == "xnnpack" and not name.endswith("kn") and not name.endswith("kn-bias"):
        # chunks of output channels run the same micro-kernels on the same sums: bitwise equal
        np.testing.assert_array_equal(got, want)
    else:
        # BLAS blocks its sums by matrix size, and a K split adds partial sums: rounding only
        assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16-storage"])
def test_chunked_winograd_reads_blocks_of_rows_and_matches(fp16):
    """A 3x3 stride-1 Conv whose weight streams in chunks runs Winograd too: each block of
    output channels is read (a row range) when it is transformed, never the whole weight."""
    name, model, feeds, weight = next(c for c in CASES if c[0] == "conv-channels-last")
    kernel_choice.clear()
    with kernel_choice.forced("winograd"):
        want, whole = _run(model, feeds, 0, fp16)
        # 2800 bytes: 2 rows of the raw weight (37 x 9 floats each), what the other kernels read
        # at a time, but 1 row of the transformed one (36 x 37 floats), Winograd's block
        got, chunked = _run(model, feeds, 2800, fp16)
    old_ir = onnx.ModelProto()
    old_ir.CopyFrom(model)
    old_ir.ir_version = 8                      # onnxruntime's highest is below this onnx's default
    (ref,) = ort_outputs(old_ir, feeds)
    assert weight in whole.whole and weight not in chunked.whole
    ranges = [(r0, r1) for n, r0, r1 in chunked.ranges if n == weight]
    assert ranges[0][0] == 0 and ranges[-1][1] == 29 and all(r1 - r0 == 1 for r0, r1 in ranges)
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()
    # against onnxruntime at FP32 (fp16-storage rounds the weights: compared chunked vs whole only)
    assert fp16 or np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_chunks_only_above_the_limit_and_only_with_row_range_providers():
    name, model, feeds, weight = CASES[0]
    _, p = _run(model, feeds, 37 * 19 * 9 * 4)     # the weight fits exactly: read whole
    assert weight in p.whole and not p.ranges
    with tempfile.TemporaryDirectory() as d:
        convert_model_proto(model, d + "/m")
        opts = onnxstream_py.RunOptions(backend="native", max_weight_chunk_bytes=700)
        for kind in ("prefetch", "ram"):        # they read whole tensors (read-ahead, cache)
            with onnxstream_py.Model(d + "/m", provider=kind, options=opts) as m:
                assert not m._interpreter._chunked
        with onnxstream_py.Model(d + "/m", provider="nocache", options=opts) as m:
            assert m._interpreter._chunked


def test_row_range_reads(tmp_path):
    rng = np.random.default_rng(0)
    big = rng.standard_normal((300, 129)).astype(np.float32)        # 151 KiB: ranges >= 64 KiB are mapped
    small = rng.standard_normal((7, 5)).astype(np.float16)
    w = WeightsWriter(str(tmp_path / "weights.bin"), [("big", big.dtype, big.shape), ("small", small.dtype, small.shape)])
    w.write("big", big)
    w.write("small", small)
    w.close()
    with wp.DiskNoCache(tmp_path, verify="first") as p:
        assert p.reads_row_ranges
        for r0, r1 in ((0, 300), (17, 250), (299, 300), (3, 4)):
            got = p.get_rows("big", np.arange(r0, r1))
            np.testing.assert_array_equal(got, big[r0:r1])
            mapped = (r1 - r0) * 129 * 4 >= 1 << 16
            assert is_mapped(got) == mapped and (not got.flags.writeable or not mapped)
        np.testing.assert_array_equal(p.get_rows("small", np.arange(2, 6)), small[2:6])
        np.testing.assert_array_equal(p.get_rows("big", np.array([5, 3, 4])), big[[5, 3, 4]])   # not a range
    for provider in (wp.DiskPrefetch(tmp_path), wp.Ram(tmp_path)):
        with provider:
            assert not provider.reads_row_ranges
            np.testing.assert_array_equal(provider.get_rows("big", np.arange(10, 20)), big[10:20])


def test_weight_ref_chunks():
    class Rows:
        def __init__(self, a):
            self.a = a

        def get_rows(self, name, rows):
            return self.a[rows]

    a = np.arange(10 * 6, dtype=np.float16).reshape(10, 6)
    ref = WeightRef("w", a.shape, np.float32, Rows(a), max_chunk_bytes=3 * 6 * 4)
    assert ref.nbytes == 240 and ref.row_chunks() == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert ref.row_chunks(1) == [(i, i + 1) for i in range(10)]
    rows = ref.rows(2, 5)
    assert rows.dtype == np.float32 and not rows.flags.writeable
    np.testing.assert_array_equal(rows, a[2:5].astype(np.float32))
    np.testing.assert_array_equal(ref.full(), a.astype(np.float32))
    with pytest.raises(IndexError, match="rows"):
        ref.rows(5, 11)


def test_options_validation():
    assert onnxstream_py.RunOptions().max_weight_chunk_bytes == 8 << 20
    onnxstream_py.RunOptions(max_weight_chunk_bytes=0)
    with pytest.raises(ValueError, match="max_weight_chunk_bytes"):
        onnxstream_py.RunOptions(max_weight_chunk_bytes=-1)
    assert onnxstream_py.RunOptions().activation_storage == "fp32"
    onnxstream_py.RunOptions(activation_storage="fp16")
    with pytest.raises(ValueError, match="activation_storage"):
        onnxstream_py.RunOptions(activation_storage="bf16")


def test_fp16_stored_weights_chunk_within_the_budget_stored_plus_widened():
    """An fp16-storage weight holds its float16 chunk and the widened float32 chunk at once:
    its chunks are sized so that both fit max_weight_chunk_bytes (2/3 of it in float32), and a
    weight is chunked from that size on."""
    _, model, feeds, wname = _cases()[0]
    w_rows = 37
    row_f32 = 19 * 3 * 3 * 4
    budget = 12 * row_f32                      # 12 float32 rows; with float16 beside them: 8
    want, _ = _run(model, feeds, 0)
    from onnxstream_py import kernel_choice
    with kernel_choice.forced("xnnpack"):          # BLAS chunks are twice as large (one copy only)
        got, prov = _run(model, feeds, budget, fp16=True)
        _, prov32 = _run(model, feeds, budget)
    spans = [r1 - r0 for name, r0, r1 in prov.ranges if name == wname]
    assert spans and max(spans) == 8 and sum(spans) == w_rows
    assert max(r1 - r0 for name, r0, r1 in prov32.ranges if name == wname) == 12
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())


class FlakyRows(CountingNoCache):
    """A provider that, like Http streaming a tensor, checks a chunked weight only after the op
    returns: ``finish_rows`` raises WeightsRetry the first ``failures`` times (for any name in
    ``names``), and ``reads_rows`` answers per tensor."""

    def __init__(self, path, names, failures):
        super().__init__(path)
        self.names, self.failures, self.finished = set(names), failures, []

    def reads_rows(self, name):
        return name in self.names

    def finish_rows(self, name):
        self.finished.append(name)
        if self.failures:
            self.failures -= 1
            raise wp.WeightsRetry(f"tensor {name!r}: checksum mismatch over the streamed rows")


@pytest.mark.parametrize("failures", [0, 1, 3])
def test_weights_retry_reruns_the_op_and_gives_the_clean_output(failures):
    """An op whose streamed rows turn out corrupt is run again (each run reads the rows afresh),
    up to interpreter.STREAM_RERUNS times, and the output is the one from clean rows."""
    name, model, feeds, weight = CASES[1]          # conv-channels-last: w2 chunked, w1 not
    want, _ = _run(model, feeds, 0)                 # nothing chunked
    with tempfile.TemporaryDirectory() as d:
        convert_model_proto(model, d + "/m")
        opts = onnxstream_py.RunOptions(backend="native", threads=2, max_weight_chunk_bytes=700)
        outs = []
        for k in (0, failures):
            p = FlakyRows(d + "/m", {weight}, k)
            with onnxstream_py.Model(d + "/m", provider=p, options=opts) as m:
                assert m._streamed == {weight}       # only what reads_rows allows is chunked
                outs.append(m.run(feeds)["y"])
    assert outs[1].tobytes() == outs[0].tobytes()
    assert np.abs(outs[1] - want).max() <= 1e-6 * np.abs(want).max()
    assert p.finished == [weight] * (failures + 1)
    full = sum(1 for n, _, _ in p.ranges if n == weight)
    assert full % (failures + 1) == 0 and full // (failures + 1) > 1   # every run read every chunk
    assert "w1" in p.whole and weight not in p.whole


def test_weights_retry_past_the_reruns_is_an_op_error_naming_the_node():
    from onnxstream_py.errors import OpError
    from onnxstream_py.interpreter import STREAM_RERUNS
    name, model, feeds, weight = CASES[1]
    with tempfile.TemporaryDirectory() as d:
        convert_model_proto(model, d + "/m")
        p = FlakyRows(d + "/m", {weight}, STREAM_RERUNS + 1)
        opts = onnxstream_py.RunOptions(backend="native", max_weight_chunk_bytes=700)
        with onnxstream_py.Model(d + "/m", provider=p, options=opts) as m:
            with pytest.raises(OpError) as ei:
                m.run(feeds)
    msg = str(ei.value)
    assert "(Conv)" in msg and "checksum mismatch" in msg and f"after {STREAM_RERUNS} rerun" in msg
