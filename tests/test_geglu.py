"""GEGLU projection fusion (plan.fuse_geglu_linear -> onnxstream:GegluLinear) and the
converter's folding of static dimensions picked out of a partly dynamic Shape.

References: onnxruntime on the exported graphs (unfused), the numpy op (twin of the native
one), and the engine's own unfused plan."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxstream_py
from onnxstream_py import kernel_choice, plan as plan_mod
from onnxstream_py.converter import convert_model_proto
from onnxstream_py.graph import read_graph
from onnxstream_py.ops import fused, native_linear

import model_builders as mb
from op_testing import rand_f32


def _i64(name, v):
    return numpy_helper.from_array(np.asarray(v, np.int64), name)


def geglu_model(k=24, h=19, form="slice", cols=None, bias=True, approximate="none", opset=17):
    """x [B, T, k] -> MatMul(W [k, cols]) [+ bias] -> halves a, g -> a * Gelu(g) -> Neg.
    form "slice": the split point is Shape(p)[-1] // 2 at run time, as torch's exporter writes
    it; "split": one Split into two outputs (the dynamo exporter); cols defaults to 2h."""
    cols = 2 * h if cols is None else cols
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array((rng.standard_normal((k, cols)) * 0.3).astype(np.float32), "W"),
             numpy_helper.from_array(np.float32(np.sqrt(2.0)).reshape(()), "sqrt2"),
             numpy_helper.from_array(np.float32(1.0).reshape(()), "one"),
             numpy_helper.from_array(np.float32(0.5).reshape(()), "half")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["mm"])]
    p = "mm"
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(cols).astype(np.float32), "b"))
        nodes.append(helper.make_node("Add", ["b", "mm"], ["p"]))
        p = "p"
    if form == "slice":
        inits += [_i64("last", [-1]), _i64("two", [2]), _i64("zero", [0]), _i64("ax", [-1]), _i64("big", [1 << 40])]
        nodes += [helper.make_node("Shape", [p], ["shp"]),
                  helper.make_node("Gather", ["shp", "last"], ["n"], axis=0),
                  helper.make_node("Div", ["n", "two"], ["hh"]),
                  helper.make_node("Slice", [p, "zero", "hh", "ax"], ["a"]),
                  helper.make_node("Slice", [p, "hh", "big", "ax"], ["g"])]
    elif form == "split":
        nodes.append(helper.make_node("Split", [p], ["a", "g"], axis=2, num_outputs=2))
    else:   # explicit, not halves: a = p[..., :h], g = p[..., h:2h] of cols > 2h columns
        inits += [_i64("s0", [0]), _i64("sh", [h]), _i64("s2h", [2 * h]), _i64("ax", [-1])]
        nodes += [helper.make_node("Slice", [p, "s0", "sh", "ax"], ["a"]),
                  helper.make_node("Slice", [p, "sh", "s2h", "ax"], ["g"])]
    if approximate == "none":
        nodes += [helper.make_node("Div", ["g", "sqrt2"], ["u"]), helper.make_node("Erf", ["u"], ["e"]),
                  helper.make_node("Add", ["e", "one"], ["t1"]), helper.make_node("Mul", ["g", "t1"], ["t2"]),
                  helper.make_node("Mul", ["t2", "half"], ["gelu"])]
    else:
        nodes.append(helper.make_node("Gelu", ["g"], ["gelu"], approximate="tanh"))
    nodes += [helper.make_node("Mul", ["a", "gelu"], ["prod"]), helper.make_node("Neg", ["prod"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", k])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    return mb.make_model(nodes, inputs, outputs, inits, opset=opset)


def _ort(model, feeds):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _run(tmp_path, model, feeds, options, sub="m"):
    convert_model_proto(model, str(tmp_path / sub))
    with onnxstream_py.Model(str(tmp_path / sub), provider="ram", options=options) as m:
        return m.plan.fusions, m.run(feeds)["y"], [s.node.op_type for s in m.plan.steps]


CASES = {
    "slice-bias": dict(form="slice"),
    "slice-no-bias": dict(form="slice", bias=False),
    "split-bias": dict(form="split", opset=18),
    "gelu-op-tanh": dict(form="split", approximate="tanh", opset=20),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("tokens", [1, 13, 300])
def test_fused_projection_matches_onnxruntime_and_the_unfused_plan(tmp_path, monkeypatch, backend, case, tokens):
    monkeypatch.setattr(fused, "GEGLU_BLOCK_BYTES", 2 * 38 * 4 * 7)     # 7 rows per block: tails
    model = geglu_model(**CASES[case])
    x = rand_f32((2, tokens, 24), seed=tokens)
    want = _ort(model, {"x": x})
    fusions, got, ops = _run(tmp_path, model, {"x": x}, onnxstream_py.RunOptions(backend=backend))
    assert fusions.get("GegluLinear") == 1 and "MatMul" not in ops and "Slice" not in ops and "Split" not in ops
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    monkeypatch.setattr(plan_mod, "fuse_geglu_linear", lambda g, n: (n, 0))
    fusions0, base, _ = _run(tmp_path, model, {"x": x}, onnxstream_py.RunOptions(backend=backend), "m0")
    assert "GegluLinear" not in fusions0
    np.testing.assert_allclose(got, base, rtol=1e-5, atol=1e-6 * np.abs(base).max())


def test_slices_that_do_not_halve_the_projection_run_the_replaced_ops(tmp_path, backend):
    model = geglu_model(form="explicit", cols=2 * 19 + 5)
    x = rand_f32((1, 9, 24), seed=4)
    fusions, got, _ = _run(tmp_path, model, {"x": x}, onnxstream_py.RunOptions(backend=backend))
    assert fusions.get("GegluLinear") == 1
    want = _ort(model, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_projection_read_elsewhere_is_not_fused(tmp_path):
    model = geglu_model(form="slice")
    model.graph.output.append(helper.make_tensor_value_info("p", TensorProto.FLOAT, None))
    convert_model_proto(model, str(tmp_path / "m"))
    with onnxstream_py.Model(str(tmp_path / "m")) as m:
        assert "GegluLinear" not in m.plan.fusions


def test_native_op_matches_twin_and_caches_its_operator(tmp_path):
    model = geglu_model(form="split", opset=18)
    x = rand_f32((1, 37, 24), seed=5)
    want = _ort(model, {"x": x})
    convert_model_proto(model, str(tmp_path / "m"))
    opts = onnxstream_py.RunOptions(backend="native", operator_cache_bytes=1 << 30)
    with kernel_choice.forced("xnnpack"), onnxstream_py.Model(str(tmp_path / "m"), provider="ram", options=opts) as m:
        first = m.run({"x": x})["y"]
        assert len(m.ctx.op_cache) == 1                 # the packed projection (W and bias)
        second = m.run({"x": x})["y"]
    np.testing.assert_allclose(first, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    np.testing.assert_array_equal(second, first)


@pytest.mark.parametrize("tokens", [11, 300])
def test_streamed_chunked_weight(tmp_path, tokens):
    """With DiskNoCache a weight above max_weight_chunk_bytes arrives in row chunks. With few
    tokens (a weight larger than its projection) the op computes the projection chunk by chunk
    (native MatMul) and splits it; with many, it reads the weight whole and blocks the rows."""
    model = geglu_model(form="slice", k=64, h=40)
    x = rand_f32((1, tokens, 64), seed=tokens)
    want = _ort(model, {"x": x})
    convert_model_proto(model, str(tmp_path / "m"))
    opts = onnxstream_py.RunOptions(backend="native", max_weight_chunk_bytes=4096)
    with onnxstream_py.Model(str(tmp_path / "m"), provider="nocache", options=opts) as m:
        got = m.run({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_geglu_halves_rules():
    s = np.array
    assert fused.geglu_halves(3, 8, (s([0]), s([4]), s([-1]), None), (s([4]), s([1 << 40]), s([2]), None)) == 4
    assert fused.geglu_halves(3, 8, (s([0]), s([4]), s([1]), None), (s([4]), s([8]), s([2]), None)) is None
    assert fused.geglu_halves(3, 8, (s([0]), s([4]), s([-1]), s([2])), (s([4]), s([8]), s([-1]), None)) is None
    assert fused.geglu_halves(3, 8, (s([4]), s([8]), None, None), (s([0]), s([4]), None, None)) is None
    assert fused.geglu_halves(3, 9, (s([0]), s([4]), s([-1]), None), (s([4]), s([9]), s([-1]), None)) is None


def test_matmul_shape_op():
    x = np.zeros((2, 5, 7), np.float32)
    assert fused.MatMulShape(x, n=11).tolist() == [2, 5, 11]
    assert fused.MatMulShape(x, n=11, start=-1).tolist() == [11]
    assert fused.MatMulShape(x, n=11, start=0, end=2).tolist() == [2, 5]
    assert native_linear.GegluLinear is not fused.GegluLinear


def test_converter_folds_static_dims_of_a_partly_dynamic_shape(tmp_path):
    """Shape(x)[-1] with x [B, 24] folds to 24; Shape(x)[0] (dynamic) stays a run-time op."""
    inits = [_i64("last", -1), _i64("first", [0])]
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "last"], ["c"], axis=0),
             helper.make_node("Gather", ["s", "first"], ["b"], axis=0),
             helper.make_node("Unsqueeze", ["c", "first"], ["c1"]),
             helper.make_node("Concat", ["b", "c1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    model = mb.make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 24])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits, opset=17)
    convert_model_proto(model, str(tmp_path / "m"))
    g = read_graph(str(tmp_path / "m" / "graph.txt"))
    gathers = [n for n in g.nodes if n.op_type == "Gather"]
    assert len(gathers) == 1 and gathers[0].inputs[1] in g.consts and \
        np.asarray(g.consts[gathers[0].inputs[1]]).tolist() == [0]
    x = rand_f32((3, 24))
    with onnxstream_py.Model(str(tmp_path / "m")) as m:
        np.testing.assert_array_equal(m.run({"x": x})["y"], x)
