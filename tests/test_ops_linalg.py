"""MatMul, Gemm and Einsum against onnxruntime at the shapes transformer and CNN exports use
(attention scores/values, CLIP/BERT projections, classifier Gemm with transB=1, rotary and
attention einsums), awkward sizes (13, 19, 77, 127), integer and float16 inputs, plus the
float16 block path and mixed fp16-weight/fp32-activation MatMul against float64 references.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

from onnxstream_py.dtypes import numpy_to_onnx
from onnxstream_py.ops import linalg

from engine_runner import run_model
from op_testing import assert_matches, ort_outputs

RNG = np.random.default_rng(0)


def _arr(shape, dtype=np.float32):
    if np.dtype(dtype).kind in "iu":
        return RNG.integers(-5, 6, size=shape).astype(dtype)
    return RNG.standard_normal(shape).astype(dtype)


def _model(node, inputs: dict, initializers: dict | None = None, opset: int = 17):
    g_in = [helper.make_tensor_value_info(n, numpy_to_onnx(v.dtype), v.shape) for n, v in inputs.items()]
    dt = numpy_to_onnx(next(iter(inputs.values())).dtype)
    g_out = [helper.make_tensor_value_info("y", dt, None)]
    inits = [numpy_helper.from_array(v, n) for n, v in (initializers or {}).items()]
    m = helper.make_model(helper.make_graph([node], "g", g_in, g_out, inits),
                          opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def _compare(model, feeds, rtol=1e-5, atol=1e-5):
    assert_matches(run_model(model, feeds)[0], ort_outputs(model, feeds)[0], rtol, atol)


# --------------------------------------------------------------------------- MatMul
MATMUL_CASES = {
    "attention_scores": ((2, 8, 77, 40), (2, 8, 40, 77)),
    "attention_values": ((2, 8, 77, 77), (2, 8, 77, 40)),
    "clip_proj_weight": ((2, 77, 64), (64, 19)),
    "bcast_batch": ((3, 1, 13, 19), (1, 5, 19, 7)),
    "vec_mat": ((127,), (127, 13)),
    "mat_vec": ((4, 13, 127), (127,)),
    "vec_vec": ((19,), (19,)),
    "vec_batched": ((19,), (3, 19, 5)),
}


@pytest.mark.parametrize("name", list(MATMUL_CASES))
def test_matmul(name):
    sa, sb = MATMUL_CASES[name]
    a, b = _arr(sa), _arr(sb)
    _compare(_model(helper.make_node("MatMul", ["a", "b"], ["y"]), {"a": a, "b": b}), {"a": a, "b": b}, rtol=1e-4)


def test_matmul_weight_initializer():
    a = _arr((1, 77, 96))
    w = _arr((96, 384))
    _compare(_model(helper.make_node("MatMul", ["a", "w"], ["y"]), {"a": a}, {"w": w}), {"a": a}, rtol=1e-4)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_matmul_integers(dtype):
    a, b = _arr((2, 13, 19), dtype), _arr((19, 7), dtype)
    _compare(_model(helper.make_node("MatMul", ["a", "b"], ["y"]), {"a": a, "b": b}), {"a": a, "b": b})


@pytest.mark.parametrize("name", ["attention_scores", "clip_proj_weight", "mat_vec"])
def test_matmul_float16(name):
    sa, sb = MATMUL_CASES[name]
    a, b = _arr(sa, np.float16), _arr(sb, np.float16)
    _compare(_model(helper.make_node("MatMul", ["a", "b"], ["y"]), {"a": a, "b": b}), {"a": a, "b": b})


def test_matmul_float16_blocks_and_mixed(monkeypatch):
    """Row blocks of the float16 path, and float16 weights next to float32 activations."""
    monkeypatch.setattr(linalg, "FP16_BLOCK_BYTES", 512)
    a = _arr((2, 3, 127, 19), np.float16)
    b = _arr((19, 13), np.float16)
    ref = np.matmul(a.astype(np.float64), b.astype(np.float64))
    y = linalg.matmul(a, b)
    assert y.dtype == np.float16
    np.testing.assert_allclose(y.astype(np.float64), ref, rtol=5e-3, atol=5e-3)
    a32 = a.astype(np.float32)
    y32 = linalg.matmul(a32, b)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, ref, rtol=1e-5, atol=1e-5)


def test_matmul_error_names_shapes():
    with pytest.raises(ValueError, match="MatMul.*K=3"):
        linalg.matmul(np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32))


# --------------------------------------------------------------------------- Gemm
GEMM_CASES = {
    # name: (A shape, B shape, C shape or None, attrs)
    "classifier_transB": ((2, 127), (13, 127), (13,), dict(transB=1)),
    "resnet_fc_transB": ((1, 64), (19, 64), (19,), dict(transB=1, alpha=1.0, beta=1.0)),
    "transA": ((19, 5), (19, 13), (5, 13), dict(transA=1)),
    "alpha_beta_col_bias": ((7, 13), (13, 19), (7, 1), dict(alpha=0.5, beta=2.0)),
    "scalar_bias": ((7, 13), (13, 19), (1,), dict(beta=-1.5)),
    "all_attrs": ((13, 7), (19, 13), (1, 19), dict(transA=1, transB=1, alpha=0.25, beta=0.35)),
    "no_bias": ((7, 13), (13, 19), None, dict()),
}


@pytest.mark.parametrize("name", list(GEMM_CASES))
def test_gemm(name):
    sa, sb, sc, attrs = GEMM_CASES[name]
    a = _arr(sa)
    inits = {"b": _arr(sb)}
    names = ["a", "b"]
    if sc is not None:
        inits["c"] = _arr(sc)
        names.append("c")
    _compare(_model(helper.make_node("Gemm", names, ["y"], **attrs), {"a": a}, inits), {"a": a}, rtol=1e-4)


def test_gemm_float16():
    a = _arr((4, 127), np.float16)
    inits = {"b": _arr((19, 127), np.float16), "c": _arr((19,), np.float16)}
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], transB=1, alpha=0.5, beta=0.5)
    _compare(_model(node, {"a": a}, inits), {"a": a})


def test_gemm_opset7_and_opset6_broadcast_attr():
    a = _arr((3, 5))
    inits = {"b": _arr((5, 4)), "c": _arr((4,))}
    _compare(_model(helper.make_node("Gemm", ["a", "b", "c"], ["y"]), {"a": a}, inits, opset=7), {"a": a})
    # onnxruntime has no opset-6 Gemm: compare with numpy.
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], broadcast=1, beta=0.5)
    got = run_model(_model(node, {"a": a}, inits, opset=6), {"a": a})[0]
    np.testing.assert_allclose(got, a @ inits["b"] + 0.5 * inits["c"], rtol=1e-5, atol=1e-5)


def test_gemm_integer():
    a, b, c = _arr((3, 5), np.int32), _arr((5, 4), np.int32), _arr((4,), np.int32)
    y = linalg.Gemm11(a, b, c)
    np.testing.assert_array_equal(y, a @ b + c)
    assert y.dtype == np.int32


# --------------------------------------------------------------------------- Einsum
EINSUM_CASES = {
    "attention_qk": ("bhid,bhjd->bhij", [(2, 4, 13, 8), (2, 4, 19, 8)]),
    "attention_av": ("bhij,bhjd->bhid", [(2, 4, 13, 19), (2, 4, 19, 8)]),
    "rotary_outer": ("i,j->ij", [(13,), (4,)]),
    "batch_matmul": ("bij,bjk->bik", [(3, 5, 7), (3, 7, 2)]),
    "transpose_ellipsis": ("...ij->...ji", [(2, 3, 4, 5)]),
    "sum_axis": ("ij->i", [(19, 13)]),
    "inner": ("i,i", [(127,), (127,)]),
    "diagonal": ("bii->bi", [(3, 5, 5)]),
    "three_operands": ("ab,bc,cd->ad", [(4, 13), (13, 19), (19, 3)]),
    "spaces_implicit": ("ij, jk", [(4, 5), (5, 6)]),
}


@pytest.mark.parametrize("name", list(EINSUM_CASES))
def test_einsum(name):
    eq, shapes = EINSUM_CASES[name]
    feeds = {f"x{i}": _arr(s) for i, s in enumerate(shapes)}
    node = helper.make_node("Einsum", list(feeds), ["y"], equation=eq)
    _compare(_model(node, feeds), feeds, rtol=1e-4, atol=1e-4)


def test_einsum_bad_equation():
    with pytest.raises(ValueError, match="Einsum"):
        linalg.Einsum(np.zeros((2, 2), np.float32), equation="ij,jk->ik")
