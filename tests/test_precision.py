"""Precision modes: what convert stores (fp32, fp16-storage, w8a32), the graph's precision record,
the plan's fetch-time dequantization of int8 weights, RunOptions.precision, and the error each
mode adds against the fp32 run on tiny models (NMSE thresholds per mode, STYLE item 12).

The tiny fixtures' weights are far below the size thresholds (4096 elements) of w8a32 and
fp16-storage, so the tests lower them (converter.W8_MIN_ELEMENTS, FP16_MIN_ELEMENTS) to 64.
"""
from __future__ import annotations

import json
import pathlib
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import onnxstream_py
from onnxstream_py import converter
from onnxstream_py.cli import main as cli_main
from onnxstream_py.converter import convert, convert_model_proto, quantize_weight_int8
from onnxstream_py.errors import ConversionError, EngineError
from onnxstream_py.graph import GRAPH_FILE, GraphFormatError, read_graph

from fixture_inputs import draw_inputs

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "models"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
# NMSE of the output against the fp32 run (measured: fp16-storage 1.8e-7 / 3.2e-7, w8a32
# 5.0e-5 / 5.9e-5 on the tiny SD 1.5 UNet / ResNet at their first input size).
BARS = {"fp16-storage": 1e-5, "w8a32": 1e-3}


def _nmse(got, want) -> float:
    g, w = got.astype(np.float64), want.astype(np.float64)
    return float(np.sum((g - w) ** 2) / max(np.sum(w ** 2), 1e-30))


@pytest.fixture
def small_w8(monkeypatch):
    monkeypatch.setattr(converter, "W8_MIN_ELEMENTS", 64)
    monkeypatch.setattr(converter, "FP16_MIN_ELEMENTS", 64)


def _run(path, feeds, **opts):
    provider = opts.pop("provider", "nocache")
    with onnxstream_py.Model(str(path), provider=provider, options=onnxstream_py.RunOptions(**opts)) as m:
        return m.run(feeds), m


# ---------------------------------------------------------------- modes on tiny models

@pytest.mark.parametrize("fixture", ["unet_sd1_ts17", "resnet_ts17"])
@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_modes_against_fp32(fixture, backend, tmp_path, small_w8):
    entry = MANIFEST["fixtures"][fixture]
    feeds = draw_inputs(entry["inputs"], 0, entry["seed"])
    src = str(FIXTURES / entry["file"])
    ref = None
    sizes = {}
    for prec in ("fp32", "fp16-storage", "w8a32"):
        out = tmp_path / prec
        convert(src, str(out), precision=prec, log=lambda m: None)
        assert read_graph(str(out / GRAPH_FILE)).precision == prec
        sizes[prec] = (out / "weights.bin").stat().st_size
        res, m = _run(out, feeds, backend=backend)
        y = res[entry["outputs"][0]]
        if prec == "fp32":
            ref = y
            continue
        assert _nmse(y, ref) <= BARS[prec], (prec, _nmse(y, ref))
        if prec == "w8a32":
            g = m.graph
            dqs = [n for n in g.nodes if n.op_type == "DequantizeLinear"]
            assert dqs and all(g.weights[n.inputs[0]].dtype == np.int8 for n in dqs)
            # the plan fetches them dequantized: no DequantizeLinear step left
            assert len(m.plan.dequant_weights) == len(dqs)
            assert not any(s.node.op_type == "DequantizeLinear" for s in m.plan.steps)
    assert sizes["w8a32"] < 0.5 * sizes["fp32"] and sizes["fp16-storage"] < 0.6 * sizes["fp32"]


@pytest.mark.parametrize("provider,opts", [("nocache", {"max_weight_chunk_bytes": 512}),   # row chunks
                                           ("ram", {"operator_cache_bytes": 1 << 30}),     # cached ops
                                           ("prefetch", {})])
def test_w8a32_providers_chunks_and_cache_agree(provider, opts, tmp_path, small_w8):
    entry = MANIFEST["fixtures"]["unet_sd1_ts17"]
    feeds = draw_inputs(entry["inputs"], 0, entry["seed"])
    convert(str(FIXTURES / entry["file"]), str(tmp_path / "m"), precision="w8a32", log=lambda m: None)
    want, _ = _run(tmp_path / "m", feeds, backend="numpy")
    with onnxstream_py.Model(str(tmp_path / "m"), provider=provider,
                             options=onnxstream_py.RunOptions(backend="native", **opts)) as m:
        first, second = m.run(feeds), m.run(feeds)
        if "max_weight_chunk_bytes" in opts:
            assert m._interpreter._chunked       # some dequantized weights were read by rows
    for res in (first, second):
        for k in want:
            np.testing.assert_allclose(res[k], want[k], rtol=1e-4, atol=1e-4 * float(np.abs(want[k]).max()))


# ---------------------------------------------------------------- what w8a32 stores

def _linear_model(transB: int = 1):
    rng = np.random.default_rng(0)
    w_conv = rng.standard_normal((13, 19, 3, 3)).astype(np.float32)
    w_conv[3] = 0.0                                         # an all-zero output channel
    w_mm = rng.standard_normal((19, 127)).astype(np.float32)
    w_gemm = rng.standard_normal((7, 127) if transB else (127, 7)).astype(np.float32)
    w_small = rng.standard_normal((7, 7)).astype(np.float32)   # below the threshold: stays float
    shared = rng.standard_normal((127,)).astype(np.float32)    # a bias, not a linear weight
    inits = [numpy_helper.from_array(a, n) for a, n in ((w_conv, "wc"), (w_mm, "wm"), (w_gemm, "wg"),
                                                          (w_small, "ws"), (shared, "bm"))]
    nodes = [helper.make_node("Conv", ["x", "wc"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMean", ["c"], ["r"], axes=[2, 3], keepdims=0),       # [N, 13]
             helper.make_node("Slice", ["r", "s0", "s1", "s2"], ["r7"]),
             helper.make_node("MatMul", ["v", "wm"], ["m"]),
             helper.make_node("Add", ["m", "bm"], ["mb"]),
             helper.make_node("Gemm", ["mb", "wg"], ["g"], transB=transB),
             helper.make_node("MatMul", ["r7", "ws"], ["s"]),
             helper.make_node("Add", ["g", "s"], ["y"])]
    inits += [numpy_helper.from_array(np.array(v, np.int64), n) for v, n in (([0], "s0"), ([7], "s1"), ([1], "s2"))]
    g = helper.make_graph(nodes, "lin", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 19, 5, 5]),
                                         helper.make_tensor_value_info("v", TensorProto.FLOAT, [2, 19])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 7])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), dict(wc=w_conv, wm=w_mm, wg=w_gemm)


@pytest.mark.parametrize("transB", [0, 1])
def test_w8a32_rewrite_axes_and_rounding(transB, tmp_path, small_w8):
    model, ws = _linear_model(transB)
    convert_model_proto(model, str(tmp_path / "m"), precision="w8a32")
    g = read_graph(str(tmp_path / "m" / GRAPH_FILE))
    dq = {n.outputs[0]: n for n in g.nodes if n.op_type == "DequantizeLinear"}
    assert set(dq) == {"wc", "wm", "wg"}                     # ws (49 elements) and the bias stay float
    assert g.weights["bm"].dtype == np.float32 and g.weights["ws"].dtype == np.float32
    axes = {"wc": 0, "wm": 1, "wg": 0 if transB else 1}
    with onnxstream_py.Model(str(tmp_path / "m"), provider="ram") as m:
        for name, node in dq.items():
            assert node.attrs["axis"] == axes[name]
            q = m.provider.get(node.inputs[0])
            scale = m.provider.get(node.inputs[1]) if node.inputs[1] in g.weights else g.consts[node.inputs[1]]
            want_q, want_s = quantize_weight_int8(ws[name], axes[name])
            np.testing.assert_array_equal(q, want_q)
            np.testing.assert_array_equal(scale, want_s)
            assert q.dtype == np.int8 and np.abs(q).max() == 127
    # the zero channel: scale 1, values 0
    q, s = quantize_weight_int8(ws["wc"], 0)
    assert s[3] == 1.0 and not q[3].any()
    # ties round half to even
    q, s = quantize_weight_int8(np.array([[127.0, 0.5, 1.5, 2.5, -0.5, -2.5]], np.float32), 0)
    np.testing.assert_array_equal(q[0], [127, 0, 2, 2, 0, -2])
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 19, 5, 5)).astype(np.float32),
             "v": np.random.default_rng(2).standard_normal((2, 19)).astype(np.float32)}
    want = ReferenceEvaluator(model).run(None, feeds)[0]
    for backend in ("numpy", "native"):
        got, _ = _run(tmp_path / "m", feeds, backend=backend)
        assert _nmse(got["y"], want) <= BARS["w8a32"]


def test_qdq_weight_with_uint8_zero_point_is_fetched_dequantized(tmp_path):
    """A user's QDQ weight (uint8 with zero points, per axis) runs through the plan's
    fetch-time dequantization and matches onnx's reference evaluator."""
    rng = np.random.default_rng(3)
    wq = rng.integers(0, 256, (19, 127)).astype(np.uint8)
    scale = rng.uniform(0.01, 0.1, 127).astype(np.float32)
    zp = rng.integers(0, 256, 127).astype(np.uint8)
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=1),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    g = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 19])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 127])],
                          [numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(scale, "ws"),
                           numpy_helper.from_array(zp, "wz")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    convert_model_proto(model, str(tmp_path / "m"))
    x = rng.standard_normal((3, 19)).astype(np.float32)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    for backend in ("numpy", "native"):
        got, m = _run(tmp_path / "m", {"x": x}, backend=backend)
        assert list(m.plan.dequant_weights) == ["w"]
        np.testing.assert_allclose(got["y"], want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


# ---------------------------------------------------------------- the record in graph.txt

def test_precision_record_round_trip_and_old_files(tmp_path):
    model, _ = _linear_model()
    convert_model_proto(model, str(tmp_path / "a"), fp16=True)           # --fp16: alias
    text = (tmp_path / "a" / GRAPH_FILE).read_text()
    assert "\nprecision fp16-storage\n" in text
    assert read_graph(str(tmp_path / "a" / GRAPH_FILE)).precision == "fp16-storage"
    convert_model_proto(model, str(tmp_path / "b"))
    assert "\nprecision " not in (tmp_path / "b" / GRAPH_FILE).read_text()   # an fp32 file is as before
    assert read_graph(str(tmp_path / "b" / GRAPH_FILE)).precision == "fp32"
    (tmp_path / "a" / GRAPH_FILE).write_text(text.replace("precision fp16-storage", "precision int3"))
    with pytest.raises(GraphFormatError, match="unknown precision 'int3'"):
        read_graph(str(tmp_path / "a" / GRAPH_FILE))
    with pytest.raises(ConversionError, match="contradicts"):
        convert_model_proto(model, str(tmp_path / "c"), fp16=True, precision="w8a32")
    with pytest.raises(ConversionError, match="--quantize w8a8"):
        convert_model_proto(model, str(tmp_path / "c"), precision="w8a8")
    old = onnx.ModelProto()
    old.CopyFrom(model)
    old.opset_import[0].version = 12
    with pytest.raises(ConversionError, match="opset >= 13"):
        convert_model_proto(old, str(tmp_path / "d"), precision="w8a32")


def test_cli_precision(tmp_path, capsys, small_w8):
    model, _ = _linear_model()
    onnx.save(model, str(tmp_path / "m.onnx"))
    assert cli_main(["convert", str(tmp_path / "m.onnx"), str(tmp_path / "w8"), "--precision", "w8a32"]) == 0
    assert read_graph(str(tmp_path / "w8" / GRAPH_FILE)).precision == "w8a32"
    assert cli_main(["convert", str(tmp_path / "m.onnx"), str(tmp_path / "h"), "--fp16"]) == 0
    assert read_graph(str(tmp_path / "h" / GRAPH_FILE)).precision == "fp16-storage"
    np.save(tmp_path / "x.npy", np.ones((2, 19, 5, 5), np.float32))
    np.save(tmp_path / "v.npy", np.ones((2, 19), np.float32))
    args = ["run", str(tmp_path / "w8"), "--input", f"x={tmp_path / 'x.npy'}", "--input", f"v={tmp_path / 'v.npy'}"]
    assert cli_main(args + ["--precision", "fp32"]) == 0
    assert cli_main(args + ["--precision", "w8a8"]) == 1
    assert "needs a model with quantized activations" in capsys.readouterr().err


# ---------------------------------------------------------------- RunOptions.precision

def test_run_precision_validation_and_fallbacks(tmp_path, small_w8):
    with pytest.raises(ValueError, match="precision"):
        onnxstream_py.RunOptions(precision="int4")
    model, _ = _linear_model()
    convert_model_proto(model, str(tmp_path / "m"), precision="w8a32")
    feeds = {"x": np.ones((2, 19, 5, 5), np.float32), "v": np.ones((2, 19), np.float32)}
    with pytest.raises(EngineError, match="w8a32 without QuantizeLinear"):
        onnxstream_py.Model(str(tmp_path / "m"), options=onnxstream_py.RunOptions(precision="w8a8"))
    auto, m = _run(tmp_path / "m", feeds)
    assert m.precision == "fp32"                  # a w8a32 model computes in fp32
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fp16, m = _run(tmp_path / "m", feeds, precision="fp16")
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "computing in fp32" in msgs[0], msgs     # one clear message, no noise
    assert m.precision == "fp32" and m.options.precision == "fp32"
    np.testing.assert_array_equal(fp16["y"], auto["y"])


@pytest.mark.parametrize("axis", [0, 1])
def test_quantized_embedding_rows_gathered_dequantized(axis, tmp_path):
    """Gather from a QDQ int8 table reads only the rows it needs, dequantized with their scales."""
    rng = np.random.default_rng(4)
    table = rng.integers(-127, 128, (50, 13)).astype(np.int8)
    scale = rng.uniform(0.01, 0.1, table.shape[axis]).astype(np.float32)
    nodes = [helper.make_node("DequantizeLinear", ["tq", "ts"], ["t"], axis=axis),
             helper.make_node("Gather", ["t", "ids"], ["y"], axis=0)]
    g = helper.make_graph(nodes, "emb", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 13])],
                          [numpy_helper.from_array(table, "tq"), numpy_helper.from_array(scale, "ts")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    convert_model_proto(model, str(tmp_path / "m"))
    ids = np.array([[3, -1, 7], [49, 0, 3]], np.int64)
    want = ReferenceEvaluator(model).run(None, {"ids": ids})[0]
    for backend in ("numpy", "native"):
        got, m = _run(tmp_path / "m", {"ids": ids}, backend=backend)
        assert m.plan.steps[0].row_gather
        np.testing.assert_array_equal(got["y"], want)
