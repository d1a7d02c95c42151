"""XNNPACK convolution and fully-connected operators against their numpy twins (ops/conv.py's
conv_nd, numpy matmul), at awkward sizes (13, 19, 127 channels, odd spatial sizes), grouped,
depthwise, dilated, strided and asymmetrically padded, float32 (allclose) and float16 (NMSE);
the native Conv/MatMul/Gemm ops end to end against onnxruntime with each kernel forced; the
measured chooser; and the wrappers' error paths.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import helper, numpy_helper

import onnxstream_py
from onnxstream_py import kernel_choice, native
from onnxstream_py.dtypes import numpy_to_onnx
from onnxstream_py.ops import native_linear
from onnxstream_py.ops.conv import conv_nd

from engine_runner import run_model
from op_testing import assert_matches, ort_outputs

POOL = native.ThreadPool(2)
NATIVE = onnxstream_py.RunOptions(backend="native", threads=2)
NATIVE_MEASURE = onnxstream_py.RunOptions(backend="native", kernel_choice="measure")


def _nmse(got, want) -> float:
    g, w = got.astype(np.float64), want.astype(np.float64)
    return float(np.sum((g - w) ** 2) / max(np.sum(w ** 2), 1e-30))


def _conv_inputs(seed, n, cin, h, w, cout, groups, kh, kw, dtype):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, cin, h, w)).astype(dtype)
    wt = (rng.standard_normal((cout, cin // groups, kh, kw)) / np.sqrt(cin // groups * kh * kw)).astype(dtype)
    b = rng.standard_normal(cout).astype(dtype)
    return x, wt, b


CONV_CASES = [
    # n, cin, h, w, cout, groups, (kh, kw), strides, dilations, pads [top, left, bottom, right]
    (1, 13, 11, 9, 19, 1, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
    (2, 19, 13, 7, 127, 1, (3, 3), (2, 2), (1, 1), (0, 1, 1, 0)),       # stride-2 downsample, asymmetric
    (1, 127, 9, 9, 13, 1, (1, 1), (1, 1), (1, 1), (0, 0, 0, 0)),        # pointwise
    (1, 19, 15, 13, 19, 19, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),      # depthwise
    (1, 19, 15, 13, 38, 19, (5, 3), (2, 1), (1, 2), (2, 0, 1, 3)),      # depthwise, multiplier 2
    (1, 26, 11, 13, 39, 13, (3, 3), (1, 2), (2, 1), (2, 1, 0, 2)),      # grouped, dilated
    (1, 13, 17, 11, 127, 1, (7, 5), (1, 1), (2, 3), (3, 1, 4, 6)),      # big dilated kernel
]


def _xnn_conv(x, w, b, groups, strides, dilations, pads, blocks=None):
    """XNNPACK conv on NCHW data: one operator, or one per [c0, c1) block into one output."""
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    cout = w.shape[0]
    blocks = blocks or [(0, cout)]
    y = None
    for c0, c1 in blocks:
        with native.XnnConv2d(w, b, groups=groups, strides=strides, dilations=dilations, pads=pads,
                              co_begin=c0, co_end=c1, y_channels=cout) as op:
            if y is None:
                y = np.empty((x.shape[0], *op.output_hw(*x.shape[2:]), cout), x.dtype)
            op.run(x_nhwc, y, c0, POOL)
    return y.transpose(0, 3, 1, 2)


def _conv_ref(x, w, b, groups, strides, dilations, pads):
    t, l, bo, r = pads
    return conv_nd(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), list(strides),
                   [t, l, bo, r], list(dilations), groups)


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_conv_matches_numpy(case, dtype):
    n, cin, h, w, cout, groups, (kh, kw), strides, dilations, pads = case
    x, wt, b = _conv_inputs(1, n, cin, h, w, cout, groups, kh, kw, dtype)
    got = _xnn_conv(x, wt, b, groups, strides, dilations, pads)
    want = _conv_ref(x, wt, b, groups, strides, dilations, pads)
    assert got.shape == want.shape
    if dtype == np.float32:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    else:
        assert _nmse(got, want) < 1e-5


def test_conv_without_bias_and_in_channel_blocks():
    x, w, b = _conv_inputs(2, 1, 19, 9, 11, 127, 1, 3, 3, np.float32)
    want = _conv_ref(x, w, np.zeros_like(b), 1, (1, 1), (1, 1), (1, 1, 1, 1))
    got = _xnn_conv(x, w, None, 1, (1, 1), (1, 1), (1, 1, 1, 1), blocks=[(0, 13), (13, 64), (64, 127)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_weight_relayout_matches_numpy(dtype):
    w = np.random.default_rng(3).standard_normal((19, 13, 3, 5)).astype(dtype)
    np.testing.assert_array_equal(native.conv2d_weight_ohwi(w), w.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(native.conv2d_weight_ohwi(w, 4, 11), w[4:11].transpose(0, 2, 3, 1))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("weight_kn", [True, False])
@pytest.mark.parametrize("m,k,n", [(1, 13, 19), (77, 127, 13), (19, 320, 127)])
def test_fc_matches_numpy(dtype, weight_kn, m, k, n):
    rng = np.random.default_rng(m * k + n)
    a = rng.standard_normal((m, k)).astype(dtype)
    w_kn = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(dtype)
    b = rng.standard_normal(n).astype(dtype)
    w = w_kn if weight_kn else np.ascontiguousarray(w_kn.T)
    want = a.astype(np.float64) @ w_kn.astype(np.float64) + b
    with native.XnnFullyConnected(w, b, weight_kn=weight_kn) as fc:
        got = fc.run(a, pool=POOL)
    y = np.empty((m, n), dtype)   # the same product in three column blocks, no bias
    for n0, n1 in [(0, 5), (5, n // 2 + 3), (n // 2 + 3, n)]:
        with native.XnnFullyConnected(w, None, weight_kn=weight_kn, n_begin=n0, n_end=n1, y_stride=n) as fc:
            fc.run(a, y, n0, POOL)
    if dtype == np.float32:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(y, want - b, rtol=1e-4, atol=1e-4)
    else:
        assert _nmse(got, want) < 1e-5 and _nmse(y, want - b) < 1e-5


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape", [(1, 13, 19), (2, 127, 33), (1, 320, 64 * 64), (3, 1, 5)])
def test_transpose_matches_numpy(dtype, shape):
    src = np.random.default_rng(4).standard_normal(shape).astype(dtype)
    np.testing.assert_array_equal(native.transpose_last2(src, pool=POOL), src.transpose(0, 2, 1))
    out = np.empty((shape[0], shape[2], shape[1]), dtype)
    np.testing.assert_array_equal(native.transpose_last2(src, out), src.transpose(0, 2, 1))


def test_wrapper_errors_before_c():
    w = np.ones((4, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match="dtypes"):
        native.XnnConv2d(w, np.ones(4, np.float16))
    with pytest.raises(ValueError, match="bias"):
        native.XnnConv2d(w, np.ones(5, np.float32))
    with pytest.raises(ValueError, match="block"):
        native.XnnConv2d(np.ones((4, 1, 3, 3), np.float32), groups=2, co_begin=0, co_end=2)
    with pytest.raises(ValueError, match="dtypes"):
        native.XnnConv2d(w.astype(np.float64))
    with native.XnnConv2d(w) as op:
        with pytest.raises(ValueError, match="NHWC"):
            op.run(np.ones((1, 3, 5, 5), np.float32))          # NCHW by mistake
        with pytest.raises(ValueError, match="output"):
            op.run(np.ones((1, 5, 5, 3), np.float32), np.empty((1, 5, 5, 4), np.float32))
        with pytest.raises(ValueError, match="smaller than"):
            op.run(np.ones((1, 2, 2, 3), np.float32))
    with pytest.raises(native.NativeError, match="after close"):
        op.run(np.ones((1, 5, 5, 3), np.float32))
    with pytest.raises(ValueError, match="transpose_last2"):
        native.transpose_last2(np.ones((3, 4), np.float32))
    with pytest.raises(ValueError, match="transpose_last2"):
        native.transpose_last2(np.ones((1, 3, 4), np.float32), np.empty((1, 3, 4), np.float32))
    fc = native.XnnFullyConnected(np.ones((3, 4), np.float32))
    with pytest.raises(ValueError, match=r"\[M, 3\]"):
        fc.run(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="column offset"):
        fc.run(np.ones((2, 3), np.float32), np.empty((2, 4), np.float32), 1)
    fc.close()
    fc.close()   # idempotent
    with pytest.raises(ValueError, match="2-D"):
        native.XnnFullyConnected(np.ones(3, np.float32))


def test_readable_copies_only_at_a_page_end():
    buf = np.zeros(8192, np.uint8)
    base = (-buf.ctypes.data) % 4096            # offset of the first page boundary in buf
    at_end = buf[base + 4096 - 64: base + 4096].view(np.float32)
    assert native.xnn_readable(at_end) is not at_end
    inside = buf[base: base + 64].view(np.float32)
    assert native.xnn_readable(inside) is inside


# ---------------------------------------------------------------- the ops, end to end

def _model(node, inputs: dict, inits: dict, opset=17):
    g_in = [helper.make_tensor_value_info(k, numpy_to_onnx(v.dtype), v.shape) for k, v in inputs.items()]
    dt = numpy_to_onnx(next(iter(inputs.values())).dtype)
    g = helper.make_graph([node], "g", g_in, [helper.make_tensor_value_info("y", dt, None)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _op_cases():
    rng = np.random.default_rng(5)
    f32, f16 = np.float32, np.float16
    cases = []
    for dt in (f32, f16):
        x, w, b = _conv_inputs(7, 1, 19, 13, 11, 13, 1, 3, 3, dt)
        cases.append((f"conv-{dt.__name__}", _model(helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 0, 2, 1],
                                                                     strides=[2, 1]), {"x": x}, {"w": w, "b": b}),
                      {"x": x}))
    x, w, _ = _conv_inputs(8, 1, 19, 9, 9, 19, 19, 3, 3, f32)
    cases.append(("conv-depthwise-same", _model(helper.make_node("Conv", ["x", "w"], ["y"], group=19,
                                                                 auto_pad="SAME_UPPER", strides=[2, 2]),
                                                {"x": x}, {"w": w}), {"x": x}))
    a = rng.standard_normal((2, 7, 127)).astype(f32)
    bm = (rng.standard_normal((127, 19)) / 11).astype(f32)
    cases.append(("matmul-3d", _model(helper.make_node("MatMul", ["a", "b"], ["y"]), {"a": a}, {"b": bm}), {"a": a}))
    a16 = a[0].astype(f16)
    cases.append(("matmul-f16", _model(helper.make_node("MatMul", ["a", "b"], ["y"]), {"a": a16},
                                       {"b": bm.astype(f16)}), {"a": a16}))
    g = rng.standard_normal((13, 127)).astype(f32)
    wt = (rng.standard_normal((19, 127)) / 11).astype(f32)
    c = rng.standard_normal(19).astype(f32)
    cases.append(("gemm-transB-bias", _model(helper.make_node("Gemm", ["a", "w", "c"], ["y"], transB=1),
                                             {"a": g}, {"w": wt, "c": c}), {"a": g}))
    cases.append(("gemm-alpha-falls-back", _model(helper.make_node("Gemm", ["a", "w", "c"], ["y"], transB=1, alpha=0.5),
                                                  {"a": g}, {"w": wt, "c": c}), {"a": g}))
    return cases


@pytest.mark.parametrize("choice", ["xnnpack", "blas", None])
@pytest.mark.parametrize("name,model,feeds", _op_cases(), ids=[c[0] for c in _op_cases()])
def test_native_ops_match_onnxruntime(name, model, feeds, choice):
    want = ort_outputs(model, feeds)[0]
    kernel_choice.clear()
    if choice is None:      # measured
        got = run_model(model, feeds, options=NATIVE_MEASURE)[0]
        measured = [e["key"][0] for e in kernel_choice.table()]
        assert measured == ([] if "falls-back" in name else [model.graph.node[0].op_type])
    else:
        with kernel_choice.forced(choice):
            got = run_model(model, feeds, options=NATIVE)[0]
    assert_matches(got, want, rtol=1e-4, atol=1e-4, fp16_nmse=1e-5)


def test_chooser_measures_once_remembers_and_serialises():
    kernel_choice.clear()
    calls = {"xnnpack": 0, "blas": 0}

    def cand(name, value):
        def run():
            calls[name] += 1
            return value
        return run

    key = ("Conv", "float32", (1, 4, 8, 8), (4, 4, 3, 3), 1)
    cands = {"xnnpack": cand("xnnpack", 1), "blas": cand("blas", 2)}
    first = kernel_choice.run_chosen(key, cands)
    choice = kernel_choice.lookup(key)
    assert choice in ("xnnpack", "blas") and first == {"xnnpack": 1, "blas": 2}[choice]
    measured = dict(calls)
    assert measured == {"xnnpack": 2, "blas": 2}        # warm-up + timed run each
    assert kernel_choice.choose(key, cands) == choice
    kernel_choice.run_chosen(key, cands)
    assert sum(calls.values()) == sum(measured.values()) + 1   # remembered: one run, no timing
    saved = json.loads(json.dumps(kernel_choice.table()))
    kernel_choice.clear()
    assert kernel_choice.lookup(key) is None
    kernel_choice.load(saved)
    assert kernel_choice.lookup(key) == choice
    kernel_choice.clear()


def test_a_slow_first_candidate_is_timed_again_warm():
    """The first candidate's one slow run also pays the op's first-touch costs; if it lost, it is
    timed once more, and wins when it is the faster one warm."""
    import time as _time
    slow = kernel_choice.WARM_SECONDS
    calls = {"a": 0, "b": 0}

    def a():                      # cold first run, fast afterwards
        calls["a"] += 1
        _time.sleep(3 * slow if calls["a"] == 1 else 0)
        return "a"

    def b():                      # always 1.5 x WARM_SECONDS
        calls["b"] += 1
        _time.sleep(1.5 * slow)
        return "b"

    kernel_choice.clear()
    try:
        assert kernel_choice.run_chosen(("cold-first",), {"a": a, "b": b}) == "a"
        assert kernel_choice.lookup(("cold-first",)) == "a" and calls == {"a": 2, "b": 1}
        calls.update(a=0, b=0)
        # a slow first candidate that loses warm too keeps losing (timed twice, no warm-up run)
        assert kernel_choice.run_chosen(("slow-first",), {"b": b, "a": lambda: "a"}) == "a"
        assert calls == {"a": 0, "b": 2} and kernel_choice.lookup(("slow-first",)) == "a"
    finally:
        kernel_choice.clear()


def test_large_weight_is_packed_in_blocks(monkeypatch):
    monkeypatch.setattr(native_linear, "WEIGHT_BLOCK_BYTES", 19 * 9 * 4 * 5)   # 5 output channels per block
    x, w, b = _conv_inputs(9, 1, 19, 7, 9, 13, 1, 3, 3, np.float32)
    got = native_linear.conv2d_xnnpack(x, w, b, [1, 1], [1, 1, 1, 1], [1, 1], 1, POOL)
    np.testing.assert_allclose(got, _conv_ref(x, w, b, 1, (1, 1), (1, 1), (1, 1, 1, 1)), rtol=1e-4, atol=1e-4)
    a = np.random.default_rng(1).standard_normal((7, 19)).astype(np.float32)
    for weight_kn in (True, False):
        wm = np.random.default_rng(2).standard_normal((19, 13) if weight_kn else (13, 19)).astype(np.float32)
        monkeypatch.setattr(native_linear, "WEIGHT_BLOCK_BYTES", 19 * 4 * 4)   # 4 columns per block
        got = native_linear.fc_xnnpack(a, wm, None, weight_kn, POOL)
        np.testing.assert_allclose(got, a @ (wm if weight_kn else wm.T), rtol=1e-4, atol=1e-4)


def test_cached_mode_measures_nothing_and_tune_persists_beside_the_model(tmp_path):
    """Ordinary runs take the default rule for unmeasured shapes; measuring stores the
    choices in kernel_choices.json beside the model, and a new Model loads them."""
    from onnxstream_py.converter import convert_model_proto
    name, model, feeds = _op_cases()[0]
    convert_model_proto(model, str(tmp_path / "m"))
    kernel_choice.clear()
    with onnxstream_py.Model(str(tmp_path / "m"), options=NATIVE) as m:
        m.run(feeds)
    assert kernel_choice.table() == []
    assert not (tmp_path / "m" / kernel_choice.CHOICES_FILE).exists()
    with onnxstream_py.Model(str(tmp_path / "m"), options=NATIVE_MEASURE) as m:
        m.run(feeds)
    stored = kernel_choice.table()
    assert len(stored) == 1 and stored[0]["choice"] in ("xnnpack", "blas")
    assert (tmp_path / "m" / kernel_choice.CHOICES_FILE).exists()
    kernel_choice.clear()
    with onnxstream_py.Model(str(tmp_path / "m"), options=NATIVE) as m:
        assert kernel_choice.table() == stored
