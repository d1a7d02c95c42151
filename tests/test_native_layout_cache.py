"""Channels-last activations and the operator cache on the native backend.

Conv's XNNPACK path returns its output channels-last (layout.py) and reads channels-last
input without a transpose; the BLAS path accepts either layout. Both are checked against
numpy's conv_nd on NCHW copies for every layout combination. The operator cache: with a
budget, a model's second run serves XNNPACK convolutions from their packed operators
without reading their weights (a counting provider proves it), the outputs are bitwise
those of the first run, the Ram provider drops its copy of a cached weight, and a small
budget caches only what fits.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxstream_py
import weights_providers as wp
from onnxstream_py import kernel_choice, native
from onnxstream_py.converter import convert_model_proto
from onnxstream_py.layout import as_nhwc, is_nhwc, nhwc_buffer, nhwc_empty
from onnxstream_py.ops import native_linear
from onnxstream_py.ops.conv import conv_nd

from op_testing import ort_outputs

POOL = native.ThreadPool(2)


def _channels_last(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def test_layout_helpers():
    a = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    cl = _channels_last(a)
    assert is_nhwc(cl) and not is_nhwc(a) and not is_nhwc(a[:, :, ::2])
    np.testing.assert_array_equal(cl, a)
    assert nhwc_buffer(cl).flags.c_contiguous and nhwc_buffer(cl).shape == (2, 4, 5, 3)
    assert as_nhwc(cl).base is cl.base or np.shares_memory(as_nhwc(cl), cl)
    np.testing.assert_array_equal(as_nhwc(a), a.transpose(0, 2, 3, 1))
    e = nhwc_empty((2, 3, 4, 5), np.float32)
    assert e.shape == (2, 3, 4, 5) and is_nhwc(e)
    with pytest.raises(ValueError, match="not channels-last"):
        nhwc_buffer(a)


CASES = [
    # cin, h, w, cout, groups, kernel, strides, pads [top, left, bottom, right]
    (13, 11, 9, 19, 1, (3, 3), (1, 1), (1, 1, 1, 1)),
    (19, 13, 7, 127, 1, (3, 3), (2, 2), (0, 1, 1, 0)),
    (127, 9, 9, 13, 1, (1, 1), (1, 1), (0, 0, 0, 0)),      # pointwise: BLAS stays channels-last
    (19, 15, 13, 19, 19, (3, 3), (1, 1), (1, 1, 1, 1)),     # depthwise
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("in_layout", ["nchw", "nhwc"])
def test_conv_paths_accept_both_layouts(case, in_layout):
    cin, h, w, cout, groups, kernel, strides, pads = case
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, cin, h, w)).astype(np.float32)
    wt = (rng.standard_normal((cout, cin // groups, *kernel)) / np.sqrt(cin // groups * kernel[0] * kernel[1])
          ).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    onnx_pads = [pads[0], pads[1], pads[2], pads[3]]
    ref = conv_nd(x, wt, b, strides, onnx_pads, (1, 1), groups)
    xin = _channels_last(x) if in_layout == "nhwc" else x
    y_x = native_linear.conv2d_xnnpack(xin, wt, b, strides, pads, (1, 1), groups, POOL)
    assert is_nhwc(y_x) or y_x.shape[1] == 1             # XNNPACK's output is channels-last
    np.testing.assert_allclose(y_x, ref, rtol=1e-4, atol=1e-4)
    y_b = native_linear.conv2d_blas(xin, wt, b, strides, onnx_pads, (1, 1), groups, POOL)
    np.testing.assert_allclose(y_b, ref, rtol=1e-4, atol=1e-4)
    if in_layout == "nhwc" and kernel == (1, 1) and strides == (1, 1):
        assert is_nhwc(y_b)                               # pointwise GEMM on the NHWC memory
    prepared = native_linear.PreparedConv(wt, b, strides, pads, (1, 1), groups)
    try:
        y_p = native_linear.conv2d_xnnpack(xin, None, None, None, None, None, None, POOL, prepared)
        np.testing.assert_array_equal(y_p, y_x)
    finally:
        prepared.close()


def _conv_chain_model(channels=(8, 16, 16), hw=12):
    """Conv -> Sigmoid -> Conv -> Add(bias) -> Conv (3x3 and 1x1): a chain that stays
    channels-last on the XNNPACK path."""
    rng = np.random.default_rng(11)
    c0, c1, c2 = channels
    inits, nodes = [], []

    def w(name, shape):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:])))
                                             .astype(np.float32), name))

    w("w1", (c1, c0, 3, 3)); w("b1", (c1,)); w("w2", (c2, c1, 3, 3)); w("w3", (c2, c2, 1, 1))
    inits.append(numpy_helper.from_array(rng.standard_normal((1, c2, 1, 1)).astype(np.float32), "bias"))
    nodes += [helper.make_node("Conv", ["x", "w1", "b1"], ["y1"], pads=[1, 1, 1, 1]),
              helper.make_node("Sigmoid", ["y1"], ["s1"]),
              helper.make_node("Conv", ["s1", "w2"], ["y2"], pads=[1, 1, 1, 1]),
              helper.make_node("Add", ["y2", "bias"], ["a2"]),
              helper.make_node("Conv", ["a2", "w3"], ["y"])]
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c0, hw, hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c2, hw, hw])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


class CountingProvider(wp.WeightsProvider):
    """Serves weights from an inner provider and counts every get and drop."""

    def __init__(self, inner):
        self.inner, self.gets, self.drops = inner, [], []
        self.index = inner.index

    def get(self, name):
        self.gets.append(name)
        return self.inner.get(name)

    def drop(self, name):
        self.drops.append(name)

    def close(self):
        self.inner.close()


def test_operator_cache_skips_weight_reads_on_later_runs():
    model = _conv_chain_model()
    x = np.random.default_rng(0).standard_normal((1, 8, 12, 12)).astype(np.float32)
    (want,) = ort_outputs(model, {"x": x})
    with tempfile.TemporaryDirectory() as d, kernel_choice.forced("xnnpack"):
        convert_model_proto(model, d + "/m")
        prov = CountingProvider(wp.DiskNoCache(d + "/m/weights.bin"))
        opts = onnxstream_py.RunOptions(backend="native", operator_cache_bytes=1 << 30)
        with onnxstream_py.Model(d + "/m", provider=prov, options=opts) as m:
            conv_weights = {"w1", "b1", "w2", "w3"} & set(m.graph.weights)   # tiny ones are inline consts
            assert {"w1", "w2", "w3"} <= conv_weights
            first = m.run({"x": x})["y"]
            assert sorted(prov.drops) == sorted(conv_weights)          # all three convs cached
            assert len(m.ctx.op_cache) == 3
            prov.gets.clear()
            second = m.run({"x": x})["y"]
            assert not set(prov.gets) & conv_weights                  # no conv weight is read again
    np.testing.assert_allclose(first, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(second, first)


def test_operator_cache_budget_and_defaults():
    model = _conv_chain_model()
    x = np.random.default_rng(1).standard_normal((1, 8, 12, 12)).astype(np.float32)
    w2_bytes = 16 * 16 * 9 * 4
    with tempfile.TemporaryDirectory() as d, kernel_choice.forced("xnnpack"):
        convert_model_proto(model, d + "/m")
        # a budget that holds the first conv (w1 + b1) but not the second as well
        small = (16 * 8 * 9 + 16) * 4 + w2_bytes // 2
        with onnxstream_py.Model(d + "/m", provider="nocache",
                                 options=onnxstream_py.RunOptions(backend="native", operator_cache_bytes=small)) as m:
            a = m.run({"x": x})["y"]
            b = m.run({"x": x})["y"]
            assert len(m.ctx.op_cache) == 2 and m.ctx.op_cache.used <= small   # w1 conv and the 1x1 w3 conv
        np.testing.assert_array_equal(a, b)
        with onnxstream_py.Model(d + "/m", provider="ram", options=onnxstream_py.RunOptions(backend="native")) as m:
            m.run({"x": x})
            cache = m.ctx.op_cache                                    # ram: the weights' bytes by default
            assert cache.budget == sum(int(np.prod(w.shape)) * 4 for w in m.graph.weights.values())
            assert len(cache) >= 2 and cache.used <= cache.budget
            cached = {n for i in range(len(m.plan.steps)) if cache.get(i) is not None
                      for n in m.plan.steps[i].node.inputs}
            assert not set(m.provider._cache) & cached & {"w1", "w2", "w3"}   # Ram dropped those raw weights
            np.testing.assert_array_equal(m.run({"x": x})["y"], a)
        with onnxstream_py.Model(d + "/m", provider="prefetch", options=onnxstream_py.RunOptions(backend="native")) as m:
            m.run({"x": x})
            assert len(m.ctx.op_cache) == 0                           # streaming: no cache by default
    with pytest.raises(ValueError, match="operator_cache_bytes"):
        onnxstream_py.RunOptions(operator_cache_bytes=-1)


def test_blas_choice_caches_nothing_and_layouts_flow_through_numpy_ops():
    model = _conv_chain_model()
    x = np.random.default_rng(2).standard_normal((1, 8, 12, 12)).astype(np.float32)
    (want,) = ort_outputs(model, {"x": x})
    with tempfile.TemporaryDirectory() as d:
        convert_model_proto(model, d + "/m")
        for choice in ("blas", "xnnpack"):
            with kernel_choice.forced(choice), onnxstream_py.Model(
                    d + "/m", provider="ram",
                    options=onnxstream_py.RunOptions(backend="native", operator_cache_bytes=1 << 30)) as m:
                for _ in range(2):
                    np.testing.assert_allclose(m.run({"x": x})["y"], want, rtol=1e-4, atol=1e-5)
                assert len(m.ctx.op_cache) == (0 if choice == "blas" else 3)


def test_concat_and_nearest_upsample_keep_channels_last():
    from onnxstream_py.ops import resize, tensor
    rng = np.random.default_rng(5)
    a = rng.standard_normal((1, 13, 5, 7)).astype(np.float32)
    b = rng.standard_normal((1, 19, 5, 7)).astype(np.float32)
    for pair in ((_channels_last(a), _channels_last(b)), (_channels_last(a), b), (a, _channels_last(b))):
        y = tensor.Concat4(*pair, axis=1)
        np.testing.assert_array_equal(y, np.concatenate([a, b], axis=1))
        assert is_nhwc(y)
    assert tensor.Concat4(a, b, axis=1).flags.c_contiguous
    np.testing.assert_array_equal(tensor.Concat4(_channels_last(a), _channels_last(a), axis=2),
                                  np.concatenate([a, a], axis=2))
    scales = np.array([1, 1, 2, 2], np.float32)
    want = resize.Resize11(a, None, scales, mode="nearest")
    got = resize.Resize11(_channels_last(a), None, scales, mode="nearest")
    np.testing.assert_array_equal(got, want)
    assert is_nhwc(got)


def _linear_model():
    """MatMul(x, W) -> Gemm(., W2, bias const, transB) -> Gemm(., W3, C = runtime x2): the last
    one's bias changes between runs, so its operator must not be cached."""
    rng = np.random.default_rng(12)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.1).astype(np.float32), n)
             for n, s in (("W", (19, 23)), ("W2", (13, 23)), ("bias2", (13,)), ("W3", (13, 7)))]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]),
             helper.make_node("Gemm", ["h", "W2", "bias2"], ["g"], transB=1),
             helper.make_node("Gemm", ["g", "W3", "c3"], ["y"])]
    g = helper.make_graph(nodes, "lin", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 19]),
                                         helper.make_tensor_value_info("c3", TensorProto.FLOAT, [7])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 7])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_operator_cache_for_matmul_and_gemm_never_bakes_runtime_inputs():
    model = _linear_model()
    rng = np.random.default_rng(3)
    feeds = [{"x": rng.standard_normal((5, 19)).astype(np.float32),
              "c3": rng.standard_normal(7).astype(np.float32)} for _ in range(3)]
    with tempfile.TemporaryDirectory() as d, kernel_choice.forced("xnnpack"):
        convert_model_proto(model, d + "/m")
        with onnxstream_py.Model(d + "/m", provider="ram",
                                 options=onnxstream_py.RunOptions(backend="native")) as m:
            for f in feeds:
                (want,) = ort_outputs(model, f)
                np.testing.assert_allclose(m.run(f)["y"], want, rtol=1e-4, atol=1e-5)
            assert len(m.ctx.op_cache) == 2          # MatMul and the const-bias Gemm, not the runtime-C Gemm


def test_tune_measures_streamed_cached_and_chunked_choices():
    import json
    from onnxstream_py.tune import tune_model
    model = _conv_chain_model()
    x = np.random.default_rng(4).standard_normal((1, 8, 12, 12)).astype(np.float32)
    kernel_choice.clear()
    try:
        with tempfile.TemporaryDirectory() as d:
            convert_model_proto(model, d + "/m")
            # weights above 500 bytes stream in chunks of rows in the DiskNoCache pass
            path = tune_model(d + "/m", {"x": x}, threads=2, provider="ram", max_weight_chunk_bytes=500)
            with open(path) as f:
                entries = json.load(f)["machines"][kernel_choice.machine_fingerprint()]
        modes = {e["key"][-1] for e in entries if e["key"][0] == "Conv"}
        assert modes == {"cached", "streamed", "chunked"}
        assert any("winograd" in e["seconds"] for e in entries if e["key"][-1] == "chunked")
        assert all({"xnnpack", "blas"} <= set(e["seconds"]) <= {"xnnpack", "blas", "winograd"} for e in entries)
        assert any("winograd" in e["seconds"] for e in entries)        # the 3x3 stride-1 convolutions
    finally:
        kernel_choice.clear()


def test_tune_skips_the_cached_pass_below_its_memory_floor(tmp_path):
    """The cached pass holds every prepared operator (9.2 GiB for the SD 1.5 UNet): bounded by
    cache_bytes (default half of MemAvailable), skipped below CACHED_PASS_MIN_BYTES."""
    import json
    from onnxstream_py import tune
    model = _conv_chain_model()
    x = np.random.default_rng(4).standard_normal((1, 8, 12, 12)).astype(np.float32)
    convert_model_proto(model, str(tmp_path / "m"))
    kernel_choice.clear()
    try:
        path = tune.tune_model(str(tmp_path / "m"), {"x": x}, threads=2, provider="ram", max_weight_chunk_bytes=500,
                               cache_bytes=tune.CACHED_PASS_MIN_BYTES - 1)
        with open(path) as f:
            entries = json.load(f)["machines"][kernel_choice.machine_fingerprint()]
        assert {e["key"][-1] for e in entries if e["key"][0] == "Conv"} == {"streamed", "chunked"}
    finally:
        kernel_choice.clear()
    avail = tune.available_memory_bytes()
    assert avail is None or 0 < avail <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert tune.default_cache_bytes() == (1 << 62 if avail is None else avail // 2)


def test_winograd_candidate_runs_and_its_transformed_weight_is_cached():
    model = _conv_chain_model()
    x = np.random.default_rng(6).standard_normal((1, 8, 12, 12)).astype(np.float32)
    (want,) = ort_outputs(model, {"x": x})
    with tempfile.TemporaryDirectory() as d, kernel_choice.forced("winograd"):
        convert_model_proto(model, d + "/m")
        opts = onnxstream_py.RunOptions(backend="native", operator_cache_bytes=1 << 30)
        with onnxstream_py.Model(d + "/m", provider="ram", options=opts) as m:
            outs = [m.run({"x": x})["y"] for _ in range(2)]
            kinds = sorted(type(m.ctx.op_cache.get(i)).__name__ for i in range(len(m.plan.steps))
                           if m.ctx.op_cache.get(i) is not None)
        with onnxstream_py.Model(d + "/m", provider="nocache", options=onnxstream_py.RunOptions(backend="native")) as m:
            streamed = m.run({"x": x})["y"]
    assert kinds == ["PreparedWinograd", "PreparedWinograd"]   # the two 3x3 convs; the 1x1 one takes the default
    for y in outs + [streamed]:
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_untuned_conv_rule_takes_winograd_streamed_only_at_large_outputs():
    from onnxstream_py.native_context import ON_ARM, NativeContext
    ctx = NativeContext(onnxstream_py.RunOptions(backend="native", threads=1))
    try:
        rule = ctx.default_conv_kernel
        expect = "xnnpack" if ON_ARM else "winograd"
        assert rule(64 * 64, True, cached=True, channels=64) == expect
        assert rule(64 * 64, True, cached=False, channels=320) == expect       # streamed or chunked
        assert rule(32 * 32, True, cached=False, channels=640) == expect
        assert rule(16 * 16, True, cached=False, channels=1280) != "winograd"   # transform not repaid
        assert rule(16 * 16, True, cached=True, channels=1280) == expect
        assert rule(64 * 64, False, cached=False, channels=320) != "winograd"   # not a 3x3 stride-1 conv
        assert rule(64 * 64, True, cached=False, channels=32) != "winograd"
    finally:
        ctx.close()
