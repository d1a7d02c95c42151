"""W8A8 execution: the int8 kernels (XNNPACK qc8 convolution and FC path, qs8 add/multiply,
f32 <-> qs8 conversion, int8 GroupNorm(+SiLU)) against their numpy twins, and the QDQ fusions
of plan.fuse_qdq (native backend) against the unfused QDQ graph run op by op by the numpy
backend's QuantizeLinear/DequantizeLinear, and against onnxruntime on a quantize_static model.

Measured differences are stated where asserted: the fused ops requantize from an exact int32
accumulator (or from float64 statistics) where the unfused graph rounds float32 sums, so an
output may land one int8 unit away at a rounding boundary, never more.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxstream_py import RunOptions, native
from onnxstream_py.layout import nhwc_empty
from onnxstream_py.ops import qfused

from engine_runner import run_model
from model_builders import make_model

SIZES = [1, 13, 19, 127]


def _rand_i8(shape, seed):
    return np.random.default_rng(seed).integers(-128, 128, size=shape, dtype=np.int16).astype(np.int8)


def _units(a: np.ndarray, b: np.ndarray) -> int:
    """Largest difference in int8 units."""
    return int(np.max(np.abs(a.astype(np.int32) - b.astype(np.int32)))) if a.size else 0


# ---------------------------------------------------------------- kernels vs twins

@pytest.mark.parametrize("cin,cout,k,stride,groups", [(3, 13, 3, 1, 1), (19, 8, 3, 2, 1), (16, 16, 3, 1, 16),
                                                      (13, 127, 1, 1, 1), (8, 12, 3, 1, 2)])
@pytest.mark.parametrize("x_zp,y_zp,clamp", [(0, 0, (-128, 127)), (-7, 5, (-128, 127)), (100, -100, (-20, 90))])
def test_qconv_matches_twin(ctx, cin, cout, k, stride, groups, x_zp, y_zp, clamp):
    rng = np.random.default_rng(cin * cout + k)
    x = _rand_i8((2, cin, 11, 13), 1)
    w = _rand_i8((cout, cin // groups, k, k), 2)
    ws = rng.uniform(0.001, 0.02, cout).astype(np.float32)
    bias = rng.integers(-5000, 5000, cout).astype(np.int32)
    xq, yq = (0.05, x_zp), (0.5, y_zp)
    p = k // 2
    pads = (p, p, p, p)
    with native.XnnQConv2d(w, ws, bias, x_scale=xq[0], x_zero_point=x_zp, y_scale=yq[0], y_zero_point=y_zp,
                           groups=groups, strides=(stride, stride), pads=pads, y_min=clamp[0], y_max=clamp[1]) as op:
        got = op.run(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), pool=ctx.pool).transpose(0, 3, 1, 2)
    want = qfused.qconv_twin(x, w, ws, bias, xq, yq, groups=groups, strides=(stride, stride), pads=pads,
                             y_min=clamp[0], y_max=clamp[1])
    np.testing.assert_array_equal(got, want)     # XNNPACK's fp32 requantization is specified: exact
    assert got.min() >= clamp[0] and got.max() <= clamp[1]


@pytest.mark.parametrize("m", SIZES)
@pytest.mark.parametrize("k,n", [(13, 19), (127, 8), (64, 33)])
def test_qconv_1x1_as_fully_connected(ctx, m, k, n):
    a = _rand_i8((m, k), 3)
    w = _rand_i8((n, k), 4)
    ws = np.random.default_rng(5).uniform(0.001, 0.01, n).astype(np.float32)
    with native.XnnQConv2d(w.reshape(n, k, 1, 1), ws, None, x_scale=0.1, x_zero_point=3, y_scale=0.7,
                           y_zero_point=-2) as op:
        got = op.run(a.reshape(m, 1, 1, k), pool=ctx.pool).reshape(m, n)
    acc = (a.astype(np.int64) - 3) @ w.astype(np.int64).T
    t = np.clip(acc.astype(np.float32) * (np.float32(0.1) * ws / np.float32(0.7)), -126, 129)
    want = (np.rint(t) - 2).astype(np.int8)
    assert _units(got, want) <= 1


@pytest.mark.parametrize("op_type", ["Add", "Mul"])
@pytest.mark.parametrize("shape_a,shape_b", [((13,), (13,)), ((2, 19, 7), (2, 19, 7)), ((2, 19, 7), (19, 1)),
                                             ((127,), ())])
@pytest.mark.parametrize("zps", [(0, 0, 0), (-20, 33, 7), (127, -128, -1)])
def test_qbinary_matches_twin(ctx, op_type, shape_a, shape_b, zps):
    a, b = _rand_i8(shape_a, 6), _rand_i8(shape_b, 7)
    aq, bq = (0.04, zps[0]), (0.03, zps[1])
    yq = (0.08, zps[2]) if op_type == "Add" else (0.2, zps[2])
    got = native.xnn_qbinary(op_type, a, b, aq, bq, yq, pool=ctx.pool)
    want = qfused.qbinary_twin(op_type, a, b, aq, bq, yq)
    assert got.shape == want.shape and _units(got, want) <= 1


def test_qbinary_clamp(ctx):
    a, b = _rand_i8((127,), 8), _rand_i8((127,), 9)
    got = native.xnn_qbinary("Add", a, b, (0.05, 0), (0.05, 0), (0.05, 0), y_min=-10, y_max=10, pool=ctx.pool)
    assert got.min() >= -10 and got.max() <= 10


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("zp", [0, -128, 77])
def test_convert_matches_quantize_linear(ctx, n, zp):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32) * 3
    x[:3] = np.float32([0.25, 0.75, -0.25])[: min(3, n)] * 0.1   # ties of x / 0.05 (0.5, 1.5, -0.5)
    q = native.xnn_quantize_f32(x, 0.05, zp, pool=ctx.pool)
    assert _units(q, qfused.quantize(x, np.float32(0.05), zp)) <= 1
    d = native.xnn_dequantize_f32(q, 0.05, zp, pool=ctx.pool)
    np.testing.assert_array_equal(d, qfused.dequantize(q, np.float32(0.05), zp))


@pytest.mark.parametrize("c,groups,hw", [(32, 8, 13), (19, 19, 127), (64, 32, 19 * 7)])
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("nhwc", [False, True])
def test_qgroup_norm_matches_twin(ctx, c, groups, hw, silu, nhwc):
    rng = np.random.default_rng(c + hw)
    x = _rand_i8((2, c, hw, 1), 10)
    gamma = rng.uniform(0.5, 1.5, c).astype(np.float32)
    beta = rng.uniform(-0.5, 0.5, c).astype(np.float32)
    xq, yq = (np.float32(0.03), -9), (np.float32(0.02), 11)
    if nhwc:
        buf = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).reshape(2, hw, c)
        got = native.qgroup_norm_act(buf, gamma, beta, groups, 1e-5, xq, yq, silu, channels_last=True,
                                     pool=ctx.pool).reshape(2, hw, 1, c).transpose(0, 3, 1, 2)
    else:
        got = native.qgroup_norm_act(np.ascontiguousarray(x), gamma, beta, groups, 1e-5, xq, yq, silu, pool=ctx.pool)
    want = qfused.qgroup_norm_twin(x, gamma, beta, groups, 1e-5, xq, yq, silu)
    assert _units(got, want) <= 1


def test_int8_kernels_reject_bad_input(ctx):
    w = _rand_i8((4, 3, 3, 3), 0)
    with pytest.raises(ValueError, match="scale"):
        native.XnnQConv2d(w, np.ones(4, np.float32), x_scale=0.0, x_zero_point=0, y_scale=1.0, y_zero_point=0)
    with pytest.raises(ValueError, match="requantization"):
        native.XnnQConv2d(w, np.full(4, 100.0, np.float32), x_scale=10.0, x_zero_point=0, y_scale=1.0,
                          y_zero_point=0)
    with pytest.raises(ValueError, match="zero point"):
        native.XnnQConv2d(w, np.ones(4, np.float32), x_scale=1.0, x_zero_point=300, y_scale=1.0, y_zero_point=0)
    with pytest.raises(ValueError, match="int8"):
        native.XnnQConv2d(w.astype(np.float32), np.ones(4, np.float32), x_scale=1.0, x_zero_point=0, y_scale=1.0,
                          y_zero_point=0)
    with native.XnnQConv2d(w, np.full(4, 0.01, np.float32), x_scale=1.0, x_zero_point=0, y_scale=1.0,
                           y_zero_point=0) as op:
        with pytest.raises(ValueError, match="expected int8"):
            op.run(np.zeros((1, 5, 5, 4), np.int8))
        with pytest.raises(ValueError, match="smaller"):
            op.run(np.zeros((1, 1, 1, 3), np.int8))
    with pytest.raises(ValueError, match="ratios"):
        native.xnn_qbinary("Add", np.zeros(4, np.int8), np.zeros(4, np.int8), (1.0, 0), (1.0, 0), (1e-6, 0))
    with pytest.raises(ValueError, match="broadcast"):
        native.xnn_qbinary("Add", np.zeros(4, np.int8), np.zeros(3, np.int8), (1.0, 0), (1.0, 0), (1.0, 0))
    with pytest.raises(ValueError, match="int8"):
        native.xnn_qbinary("Mul", np.zeros(4, np.float32), np.zeros(4, np.int8), (1.0, 0), (1.0, 0), (1.0, 0))
    with pytest.raises(ValueError, match="groups"):
        native.qgroup_norm_act(np.zeros((1, 6, 4), np.int8), np.ones(6, np.float32), np.zeros(6, np.float32), 4,
                               1e-5, (1.0, 0), (1.0, 0))
    with pytest.raises(ValueError, match="scale"):
        native.xnn_quantize_f32(np.zeros(4, np.float32), float("nan"), 0)


# ---------------------------------------------------------------- QDQ graphs: fused vs unfused

def _group_norm_silu(nodes, inits, x, out, c, groups, tag, rng):
    """torch's GroupNorm export (+ SiLU) as nodes: the chain plan.fuse_group_norm fuses."""
    inits += [numpy_helper.from_array(np.array([0, groups, -1], np.int64), f"{tag}_shape"),
              numpy_helper.from_array(np.ones(groups, np.float32), f"{tag}_ones"),
              numpy_helper.from_array(np.zeros(groups, np.float32), f"{tag}_zeros"),
              numpy_helper.from_array(rng.uniform(0.5, 1.5, (c, 1, 1)).astype(np.float32), f"{tag}_gamma"),
              numpy_helper.from_array(rng.uniform(-0.3, 0.3, (c, 1, 1)).astype(np.float32), f"{tag}_beta")]
    nodes += [helper.make_node("Reshape", [x, f"{tag}_shape"], [f"{tag}_r"]),
              helper.make_node("InstanceNormalization", [f"{tag}_r", f"{tag}_ones", f"{tag}_zeros"], [f"{tag}_in"],
                               epsilon=1e-5),
              helper.make_node("Shape", [x], [f"{tag}_xs"]),
              helper.make_node("Reshape", [f"{tag}_in", f"{tag}_xs"], [f"{tag}_r2"]),
              helper.make_node("Mul", [f"{tag}_r2", f"{tag}_gamma"], [f"{tag}_m"]),
              helper.make_node("Add", [f"{tag}_m", f"{tag}_beta"], [f"{tag}_a"]),
              helper.make_node("Sigmoid", [f"{tag}_a"], [f"{tag}_s"]),
              helper.make_node("Mul", [f"{tag}_a", f"{tag}_s"], [out])]


def _conv(nodes, inits, x, out, cin, cout, tag, rng, k=3):
    inits += [numpy_helper.from_array((rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k))
                                      .astype(np.float32), f"{tag}_w"),
              numpy_helper.from_array(rng.uniform(-0.2, 0.2, cout).astype(np.float32), f"{tag}_b")]
    nodes.append(helper.make_node("Conv", [x, f"{tag}_w", f"{tag}_b"], [out], pads=[k // 2] * 4))


def vae_like(c: int = 16, groups: int = 4, seed: int = 0) -> onnx.ModelProto:
    """A VAE-decoder-like float net: conv, GroupNorm+SiLU, residual Add, nearest 2x upsample,
    and a last conv whose float output is the graph's."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    _conv(nodes, inits, "x", "h0", 4, c, "c0", rng)
    _group_norm_silu(nodes, inits, "h0", "g1", c, groups, "gn1", rng)
    _conv(nodes, inits, "g1", "h1", c, c, "c1", rng)
    _group_norm_silu(nodes, inits, "h1", "g2", c, groups, "gn2", rng)
    _conv(nodes, inits, "g2", "h2", c, c, "c2", rng)
    nodes.append(helper.make_node("Add", ["h0", "h2"], ["res"]))
    inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "up_scales"))
    nodes.append(helper.make_node("Resize", ["res", "", "up_scales"], ["up"], mode="nearest"))
    _conv(nodes, inits, "up", "h3", c, c, "c3", rng)
    _group_norm_silu(nodes, inits, "h3", "g3", c, groups, "gn3", rng)
    _conv(nodes, inits, "g3", "y", c, 3, "c4", rng)
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 12, 10])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 24, 20])], inits)


def attention_block(c: int = 16, hw: tuple = (6, 5), seed: int = 1) -> onnx.ModelProto:
    """x [1, c, H, W] -> tokens -> q/k/v projections (MatMul + bias) -> softmax(q kᵀ s) v ->
    output projection (Gemm) -> + tokens."""
    rng = np.random.default_rng(seed)
    n = hw[0] * hw[1]
    nodes, inits = [], []
    inits.append(numpy_helper.from_array(np.array([1, c, n], np.int64), "tok_shape"))
    nodes += [helper.make_node("Reshape", ["x", "tok_shape"], ["t3"]),
              helper.make_node("Transpose", ["t3"], ["t"], perm=[0, 2, 1])]
    for p in "qkv":
        inits += [numpy_helper.from_array((rng.standard_normal((c, c)) / np.sqrt(c)).astype(np.float32), f"w{p}"),
                  numpy_helper.from_array(rng.uniform(-0.1, 0.1, c).astype(np.float32), f"b{p}")]
        nodes += [helper.make_node("MatMul", ["t", f"w{p}"], [f"{p}0"]),
                  helper.make_node("Add", [f"{p}0", f"b{p}"], [p])]
    inits.append(numpy_helper.from_array(np.array(1 / np.sqrt(c), np.float32), "att_scale"))
    inits.append(numpy_helper.from_array(np.array([n, c], np.int64), "flat"))
    inits.append(numpy_helper.from_array((rng.standard_normal((c, c)) / np.sqrt(c)).astype(np.float32), "wo"))
    inits.append(numpy_helper.from_array(rng.uniform(-0.1, 0.1, c).astype(np.float32), "bo"))
    inits.append(numpy_helper.from_array(np.array([1, n, c], np.int64), "unflat"))
    nodes += [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
              helper.make_node("MatMul", ["q", "kt"], ["s0"]),
              helper.make_node("Mul", ["s0", "att_scale"], ["s1"]),
              helper.make_node("Softmax", ["s1"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "v"], ["o"]),
              helper.make_node("Reshape", ["o", "flat"], ["o2"]),
              helper.make_node("Gemm", ["o2", "wo", "bo"], ["proj"], transB=1),
              helper.make_node("Reshape", ["proj", "unflat"], ["proj3"]),
              helper.make_node("Add", ["proj3", "t"], ["y"])]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw[0], hw[1]])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n, c])], inits)


def _intermediates(model: onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    """Every float intermediate of the float model on ``feeds`` (onnxruntime)."""
    import onnxruntime as ort
    m = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in list(m.graph.value_info) + list(m.graph.output)}
    names = [o for n in m.graph.node for o in n.output if types.get(o) == TensorProto.FLOAT]
    del m.graph.output[:]
    m.graph.output.extend(helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in names)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    vals = sess.run(None, feeds)
    return {k: v for k, v in zip(names, vals) if v.dtype == np.float32}


def insert_qdq(model: onnx.ModelProto, feeds: dict, tensors: list[str]) -> onnx.ModelProto:
    """The QDQ form of ``model``, written like quantize.py does (minus its fusions): each tensor
    in ``tensors`` becomes QuantizeLinear (int8, asymmetric, per tensor, the range measured on
    ``feeds``) -> one DequantizeLinear read by all its consumers; every Conv / MatMul / Gemm
    weight becomes int8 per output channel (symmetric, zero point 0) + DequantizeLinear."""
    vals = _intermediates(model, feeds)
    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    new_inits, nodes = [], []
    dq_name = {}

    def qdq(t):
        lo, hi = min(float(vals[t].min()), 0.0), max(float(vals[t].max()), 0.0)
        s = np.float32((hi - lo) / 255 or 1.0)
        z = np.int8(np.clip(np.rint(-128 - lo / s), -128, 127))
        new_inits.extend([numpy_helper.from_array(np.array(s, np.float32), f"{t}_s"),
                          numpy_helper.from_array(np.array(z, np.int8), f"{t}_z")])
        nodes.append(helper.make_node("QuantizeLinear", [t, f"{t}_s", f"{t}_z"], [f"{t}_q"]))
        nodes.append(helper.make_node("DequantizeLinear", [f"{t}_q", f"{t}_s", f"{t}_z"], [f"{t}_dq"]))
        dq_name[t] = f"{t}_dq"

    def qweight(w, axis):
        a = inits[w]
        amax = np.max(np.abs(a), axis=tuple(i for i in range(a.ndim) if i != axis))
        s = (np.maximum(amax, 1e-12) / 127).astype(np.float32)
        shape = [1] * a.ndim
        shape[axis] = -1
        q = np.clip(np.rint(a / s.reshape(shape)), -127, 127).astype(np.int8)
        new_inits.extend([numpy_helper.from_array(q, f"{w}_q"), numpy_helper.from_array(s, f"{w}_ws"),
                          numpy_helper.from_array(np.zeros(s.shape, np.int8), f"{w}_wz")])
        nodes.append(helper.make_node("DequantizeLinear", [f"{w}_q", f"{w}_ws", f"{w}_wz"], [f"{w}_wdq"], axis=axis))
        return f"{w}_wdq"

    for n in g.node:
        ins = [dq_name.get(i, i) for i in n.input]
        if n.op_type in ("Conv", "MatMul", "Gemm") and n.input[1] in inits:
            axis = 0 if n.op_type == "Conv" or (n.op_type == "Gemm" and any(
                a.name == "transB" and a.i for a in n.attribute)) else 1
            ins[1] = qweight(n.input[1], axis)
        new = helper.make_node(n.op_type, ins, list(n.output), name=n.name)
        new.attribute.extend(n.attribute)
        nodes.append(new)
        for o in n.output:
            if o in tensors:
                qdq(o)
    used = {i for n in nodes for i in n.input}
    keep = [i for i in g.initializer if i.name in used]
    graph = helper.make_graph(nodes, "qdq", list(g.input), list(g.output), keep + new_inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model: onnx.ModelProto, feeds: dict, backend: str) -> tuple[np.ndarray, dict]:
    """(first output, the plan's fusions) of model on the given backend."""
    import tempfile
    import onnxstream_py
    from onnxstream_py.converter import convert_model_proto
    with tempfile.TemporaryDirectory() as d:
        convert_model_proto(model, d + "/m")
        with onnxstream_py.Model(d + "/m", options=RunOptions(backend=backend, threads=2)) as m:
            return m.run(feeds)[model.graph.output[0].name], dict(m.plan.fusions)


@pytest.fixture(params=["whole", "banded", "bands3"])
def banding(request, monkeypatch):
    """'banded': every int8 convolution runs in bands of one output row (the path large ones
    take: ops/native_int8.run_banded), so small tests cover the band edges and padding;
    'bands3': bands of ~3 rows at 10 x 16 channels, where a conv whose dying input has the
    output's shape writes into it (run_banded's inplace)."""
    from onnxstream_py.ops import native_int8
    if request.param != "whole":
        monkeypatch.setattr(native_int8, "BAND_INPUT_BYTES", 1 if request.param == "banded" else 900)
        monkeypatch.setattr(native_int8, "BAND_MIN_INDIRECTION_BYTES", 0)
    return request.param


VAE_QUANTIZED = ["h0", "g1", "h1", "g2", "h2", "res", "up", "h3", "g3"]
ATTENTION_QUANTIZED = ["t", "q", "k", "v", "o2", "proj", "y0"]


@pytest.mark.parametrize("which", ["vae", "attention"])
def test_fused_qdq_graph_matches_unfused(which, banding, monkeypatch):
    rng = np.random.default_rng(3)
    if which == "vae":
        model, tensors = vae_like(), VAE_QUANTIZED
        x = rng.standard_normal((1, 4, 12, 10)).astype(np.float32)
    else:
        model, tensors = attention_block(), ["t", "q", "k", "v", "o2", "proj"]
        x = rng.standard_normal((1, 16, 6, 5)).astype(np.float32)
    qmodel = insert_qdq(model, {"x": x}, tensors)
    from onnxstream_py.ops import native_int8
    real, inplace_runs = native_int8._run_banded_inplace, []

    def spy(*a, **k):
        inplace_runs.append(1)
        return real(*a, **k)

    monkeypatch.setattr(native_int8, "_run_banded_inplace", spy)
    unfused, _ = _run(qmodel, {"x": x}, "numpy")
    fused, fusions = _run(qmodel, {"x": x}, "native")
    if which == "vae" and banding != "banded":
        assert inplace_runs, "the second conv of the resnet block writes into its dying input"
    if which == "vae":
        # the first conv reads the float input: not fused; each GroupNorm(+SiLU) and the Resize
        # feed a conv alone (QPrologueConv: the conv's input made band by band); the Add
        assert fusions.get("QPrologueConv") == 4 and fusions.get("QDQ") == 1, fusions
    else:
        assert fusions.get("QLinear") == 4, fusions
    # the graph output is float: compare in units of the last quantized tensor's scale
    ref_float = run_model(model, {"x": x}, "numpy")[0]
    scale = np.abs(ref_float).max() / 127
    err = np.abs(fused - unfused).max()
    assert err <= 2 * scale, (err, scale)
    assert fused.dtype == np.float32 and fused.shape == unfused.shape


def _single_op_model(kind: str, seed: int = 0):
    """x -> Identity -> [op under test] -> y: (float model, tensors to quantize, feeds)."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Identity", ["x"], ["x0"])]
    inits = []
    shape = [1, 16, 9, 13]
    if kind == "conv":
        _conv(nodes, inits, "x0", "y", 16, 19, "c", rng)
        out = [1, 19, 9, 13]
    elif kind == "conv_stride2_1x1":
        inits.append(numpy_helper.from_array((rng.standard_normal((8, 16, 1, 1)) * 0.3).astype(np.float32), "w"))
        nodes.append(helper.make_node("Conv", ["x0", "w"], ["y"], strides=[2, 2]))
        out = [1, 8, 5, 7]
    elif kind == "conv_1x1_shrink":
        inits.append(numpy_helper.from_array((rng.standard_normal((8, 16, 1, 1)) * 0.3).astype(np.float32), "w"))
        nodes.append(helper.make_node("Conv", ["x0", "w"], ["y"]))
        out = [1, 8, 9, 13]
    elif kind == "depthwise":
        inits.append(numpy_helper.from_array((rng.standard_normal((16, 1, 3, 3)) * 0.3).astype(np.float32), "w"))
        nodes.append(helper.make_node("Conv", ["x0", "w"], ["y"], group=16, pads=[1, 1, 1, 1]))
        out = shape
    elif kind == "group_norm_silu":
        _group_norm_silu(nodes, inits, "x0", "y", 16, 4, "gn", rng)
        out = shape
    elif kind == "add":
        nodes.append(helper.make_node("Sigmoid", ["x"], ["x1"]))
        nodes.append(helper.make_node("Add", ["x0", "x1"], ["y"]))
        out = shape
    elif kind == "mul":
        nodes.append(helper.make_node("Sigmoid", ["x"], ["x1"]))
        nodes.append(helper.make_node("Mul", ["x0", "x1"], ["y"]))
        out = shape
    elif kind == "resize_nearest":
        inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc"))
        nodes.append(helper.make_node("Resize", ["x0", "", "sc"], ["y"], mode="nearest"))
        out = [1, 16, 18, 26]
    elif kind == "resize_linear":
        inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc"))
        nodes.append(helper.make_node("Resize", ["x0", "", "sc"], ["y"], mode="linear"))
        out = [1, 16, 18, 26]
    elif kind == "concat":
        nodes.append(helper.make_node("Sigmoid", ["x"], ["x1"]))
        nodes.append(helper.make_node("Concat", ["x0", "x1"], ["y"], axis=1))
        out = [1, 32, 9, 13]
    elif kind == "softmax":
        nodes.append(helper.make_node("Softmax", ["x0"], ["y"], axis=-1))
        out = shape
    elif kind == "matmul":
        inits.append(numpy_helper.from_array((rng.standard_normal((13, 19)) * 0.3).astype(np.float32), "w"))
        nodes.append(helper.make_node("MatMul", ["x0", "w"], ["y"]))
        out = [1, 16, 9, 19]
    elif kind == "transpose":
        nodes.append(helper.make_node("Transpose", ["x0"], ["y"], perm=[0, 2, 3, 1]))
        out = [1, 9, 13, 16]
    else:
        raise ValueError(kind)
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)], inits)
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    return model, ["x0", "x1", "y"], {"x": x}


@pytest.mark.parametrize("kind,fused_as", [
    ("conv", "QConv"), ("conv_stride2_1x1", "QConv"), ("conv_1x1_shrink", "QConv"), ("depthwise", "QConv"), ("group_norm_silu", "QDQ"),
    ("add", "QDQ"), ("mul", "QDQ"), ("resize_nearest", "QDQ"), ("resize_linear", "QDQ"), ("concat", "QDQ"),
    ("softmax", "QDQ"), ("matmul", "QLinear"), ("transpose", "QDQ")])
def test_each_fused_op_within_one_unit(kind, fused_as, banding):
    """One fused op on the same int8 input as the unfused graph: its int8 output within one unit
    (measured: 0 or 1 differing values per case, 0.1% of them at most)."""
    model, tensors, feeds = _single_op_model(kind)
    qmodel = insert_qdq(model, feeds, tensors)
    qmodel.graph.output.append(helper.make_tensor_value_info("y_q", TensorProto.INT8, None))
    del qmodel.graph.output[0]
    unfused, _ = _run(qmodel, feeds, "numpy")
    fused, fusions = _run(qmodel, feeds, "native")
    assert fusions.get(fused_as) == 1, fusions
    assert fused.dtype == np.int8 and fused.shape == unfused.shape
    assert _units(fused, unfused) <= 1
    assert np.mean(fused != unfused) <= 0.002


def _ort_quantize(model: onnx.ModelProto, samples: list[dict], tmp_path) -> onnx.ModelProto:
    """onnxruntime.quantization.quantize_static, QDQ format, per-channel int8 weights, int8
    activations, MinMax calibration over ``samples``."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(samples)

        def get_next(self):
            return next(self.it, None)

    src, dst = str(tmp_path / "float.onnx"), str(tmp_path / "qdq.onnx")
    onnx.save(model, src)
    quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return onnx.load(dst)


@pytest.mark.parametrize("which", ["vae", "attention"])
def test_onnxruntime_quantize_static_model(which, tmp_path):
    """A model quantized by onnxruntime's quantize_static (QDQ) runs fused and matches
    onnxruntime's own output of that QDQ model. onnxruntime runs the QDQ graph with its own
    int8 kernels, which round at other points in places, so the comparison is in units of the
    output's range: measured max |diff| 0 for the conv net (bit-identical), 0.8% of max|y|
    for the attention block (where the fused and the unfused runs agree exactly)."""
    import onnxruntime as ort
    rng = np.random.default_rng(7)
    if which == "vae":
        model, shape = vae_like(), (1, 4, 12, 10)
    else:
        model, shape = attention_block(), (1, 16, 6, 5)
    samples = [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(4)]
    qmodel = _ort_quantize(model, samples, tmp_path)
    x = {"x": rng.standard_normal(shape).astype(np.float32)}
    sess = ort.InferenceSession(qmodel.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, x)[0]
    got, fusions = _run(qmodel, x, "native")
    unfused, _ = _run(qmodel, x, "numpy")
    assert sum(fusions.get(k, 0) for k in ("QConv", "QLinear")) >= 3, fusions
    span = np.abs(want).max()
    assert np.abs(got - want).max() <= 0.015 * span, (np.abs(got - want).max(), span)
    assert np.abs(got - unfused).max() <= 0.005 * span


@pytest.mark.parametrize("ctm,nearest_mode", [("half_pixel", "round_prefer_floor"), ("asymmetric", "floor"),
                                              ("align_corners", "round_prefer_ceil")])
@pytest.mark.parametrize("use_sizes", [False, True])
def test_nearest_resize_int8_keeps_channels_last(ctx, ctm, nearest_mode, use_sizes):
    """The int8 nearest Resize gathers pixels in the input's layout (no transpose, no float):
    equal to the numpy QDQ op (requantizing to another scale on the way)."""
    from onnxstream_py.ops import native_int8
    x = _rand_i8((2, 19, 7, 5), 11)
    xn = nhwc_empty(x.shape, np.int8)
    xn[...] = x
    scales = None if use_sizes else np.array([1, 1, 2, 3], np.float32)
    sizes = np.array([2, 19, 13, 11], np.int64) if use_sizes else None
    inputs = [xn, np.float32(0.05), np.int8(3), None, scales, sizes, np.float32(0.07), np.int8(-4)]
    attrs = dict(op_type="Resize", op_opset=13, qin=[1, 0, 0, 0], qout=1,
                 op_attrs={"mode": "nearest", "coordinate_transformation_mode": ctm, "nearest_mode": nearest_mode})
    got = native_int8.QDQ(*inputs, **attrs, _ctx=ctx)
    want = qfused.QDQ(*[np.ascontiguousarray(x)] + inputs[1:], **attrs)
    assert got.transpose(0, 2, 3, 1).flags.c_contiguous       # channels-last
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("c,groups", [(32, 8), (19, 19), (64, 32)])
@pytest.mark.parametrize("silu", [False, True])
def test_qgroup_norm_in_bands_is_identical(ctx, c, groups, silu):
    """Coefficients once, then the affine + SiLU + requantize applied band by band: bit-identical
    to the whole-tensor kernel (the path a GroupNorm feeding a convolution takes)."""
    h, w = 13, 7
    x = _rand_i8((2, h, w, c), 12)
    rng = np.random.default_rng(c)
    gamma = rng.uniform(0.5, 1.5, c).astype(np.float32)
    beta = rng.uniform(-0.5, 0.5, c).astype(np.float32)
    xq, yq = (0.03, -9), (0.02, 11)
    whole = native.qgroup_norm_act(x.reshape(2, h * w, c), gamma, beta, groups, 1e-5, xq, yq, silu,
                                   channels_last=True, pool=ctx.pool).reshape(x.shape)
    a, b = native.qgroup_norm_coeffs(x.reshape(2, h * w, c), gamma, beta, groups, 1e-5, xq, channels_last=True,
                                     pool=ctx.pool)
    banded = np.empty_like(x)
    for i in range(2):
        for r0 in range(0, h, 4):
            banded[i, r0:r0 + 4] = native.qaffine_act_nhwc(np.ascontiguousarray(x[i, r0:r0 + 4]), a[i], b[i], xq, yq,
                                                           silu, pool=ctx.pool)
    np.testing.assert_array_equal(banded, whole)


@pytest.mark.parametrize("kind", ["group_norm", "resize"])
@pytest.mark.parametrize("stride", [1, 2])
def test_prologue_conv_matches_unfused(kind, stride, banding):
    """QDQ(GroupNorm+SiLU | nearest Resize) -> QConv as one QPrologueConv (the conv's input made
    band by band) equals the unfused QDQ graph within one unit (measured: identical)."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Identity", ["x"], ["x0"])]
    inits = []
    if kind == "group_norm":
        _group_norm_silu(nodes, inits, "x0", "p", 16, 4, "gn", rng)
    else:
        inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc"))
        nodes.append(helper.make_node("Resize", ["x0", "", "sc"], ["p"], mode="nearest"))
    inits += [numpy_helper.from_array((rng.standard_normal((12, 16, 3, 3)) * 0.1).astype(np.float32), "w"),
              numpy_helper.from_array(rng.uniform(-0.2, 0.2, 12).astype(np.float32), "b")]
    nodes.append(helper.make_node("Conv", ["p", "w", "b"], ["y"], pads=[1, 1, 1, 1], strides=[stride, stride]))
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 9, 13])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    feeds = {"x": (rng.standard_normal((1, 16, 9, 13)) * 2).astype(np.float32)}
    qmodel = insert_qdq(model, feeds, ["x0", "p", "y"])
    qmodel.graph.output.append(helper.make_tensor_value_info("y_q", TensorProto.INT8, None))
    del qmodel.graph.output[0]
    unfused, _ = _run(qmodel, feeds, "numpy")
    fused, fusions = _run(qmodel, feeds, "native")
    assert fusions.get("QPrologueConv") == 1, fusions
    assert _units(fused, unfused) <= 1


@pytest.mark.parametrize("zp", [-128, -3, 0, 77, 127])
def test_fused_quantize_equals_quantize_linear(zp):
    """qfused.quantize (one float32 temporary) is QuantizeLinear's reference bit for bit: ties,
    saturation, infinities and NaN."""
    from onnxstream_py.ops import quant
    x = (np.random.default_rng(zp + 200).standard_normal(100_003) * 50).astype(np.float32)
    x[:10] = np.float32([0.05, 0.15, 0.25, -0.05, -0.15, np.nan, np.inf, -np.inf, 1e30, -1e30])
    want = quant.quantize(x, np.float32(0.1), np.int8(zp), out_dtype=np.int8)
    np.testing.assert_array_equal(qfused.quantize(x, np.float32(0.1), zp), want)


@pytest.mark.parametrize("kind", ["div_const", "sigmoid", "silu", "mul_const_nhwc"])
def test_lookup_table_ops_match_twin(ctx, kind, monkeypatch):
    """An op of one int8 tensor (and scalar constants) runs as a 256-entry table (native.lut_i8):
    equal to the numpy QDQ op (measured: identical), in the input's layout."""
    from onnxstream_py.ops import native_int8
    x = _rand_i8((2, 19, 13, 7), 13)
    if kind == "mul_const_nhwc":
        xn = nhwc_empty(x.shape, np.int8)
        xn[...] = x
        x = xn
    op_type, domain, extra = {"div_const": ("Div", "", [np.array([1.5], np.float32)]),
                              "sigmoid": ("Sigmoid", "", []),
                              "silu": ("Silu", "onnxstream", []),
                              "mul_const_nhwc": ("Mul", "", [np.array(0.7, np.float32)])}[kind]
    inputs = [x, np.float32(0.05), np.int8(-3)] + extra + [np.float32(0.02), np.int8(5)]
    attrs = dict(op_type=op_type, op_domain=domain, op_opset=17 if not domain else 1, qin=[1] + [0] * len(extra),
                 qout=1, op_attrs={})
    real, calls = native.lut_i8, []

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(native, "lut_i8", spy)
    got = native_int8.QDQ(*inputs, **attrs, _ctx=ctx)
    want = qfused.QDQ(*inputs, **attrs)
    assert calls == [1]
    np.testing.assert_array_equal(got, want)
    if kind == "mul_const_nhwc":
        assert got.transpose(0, 2, 3, 1).flags.c_contiguous


def test_lut_rejects_bad_table(ctx):
    with pytest.raises(ValueError, match="256"):
        native.lut_i8(np.zeros(4, np.int8), np.zeros(255, np.int8))
    with pytest.raises(ValueError, match="int8"):
        native.lut_i8(np.zeros(4, np.float32), np.zeros(256, np.int8))


def test_cached_int8_operators_give_the_same_result():
    """With the "ram" provider the operator cache keeps the packed qc8 operators (QConv, QLinear)
    across runs; the second run (weights not fetched) equals the first."""
    import tempfile
    import onnxstream_py
    from onnxstream_py.converter import convert_model_proto
    rng = np.random.default_rng(4)
    x = {"x": rng.standard_normal((1, 16, 6, 5)).astype(np.float32)}
    qmodel = insert_qdq(attention_block(), x, ["t", "q0", "k0", "v0", "q", "k", "v", "o2", "proj"])
    with tempfile.TemporaryDirectory() as d:
        convert_model_proto(qmodel, d + "/m")
        with onnxstream_py.Model(d + "/m", provider="ram",
                                 options=RunOptions(backend="native", threads=2, operator_cache_bytes=1 << 20)) as m:
            first = m.run(x)["y"]
            cached = len(m._interpreter.ctx.op_cache)
            second = m.run(x)["y"]
    np.testing.assert_array_equal(first, second)
    assert cached == 4            # the four projections


def test_concat_of_int8_and_float_dequantizes(ctx):
    """A data-movement op with a float data input (not from a DequantizeLinear) is not run on int8
    values: Concat(DQ(a), b_float) -> Q equals the float formula."""
    from onnxstream_py.ops import native_int8
    a = _rand_i8((1, 3, 4, 5), 14)
    b = np.random.default_rng(15).standard_normal((1, 2, 4, 5)).astype(np.float32)
    inputs = [a, np.float32(0.05), np.int8(2), b, np.float32(0.04), np.int8(-1)]
    attrs = dict(op_type="Concat", op_opset=13, qin=[1, 0], qout=1, op_attrs={"axis": 1})
    want = qfused.quantize(np.concatenate([qfused.dequantize(a, np.float32(0.05), 2), b], axis=1), np.float32(0.04), -1)
    np.testing.assert_array_equal(native_int8.QDQ(*inputs, **attrs, _ctx=ctx), want)
    np.testing.assert_array_equal(qfused.QDQ(*inputs, **attrs), want)


def test_shrinking_1x1_conv_writes_into_its_dying_input(banding, monkeypatch):
    """A 1x1 conv with fewer output than input channels whose input dies (a resnet shortcut)
    writes its output into the input's buffer, band by band: same result as the unfused graph."""
    from onnxstream_py.ops import native_int8
    real, runs = native_int8._run_banded_inplace, []

    def spy(*a, **k):
        runs.append(1)
        return real(*a, **k)

    monkeypatch.setattr(native_int8, "_run_banded_inplace", spy)
    rng = np.random.default_rng(6)
    nodes, inits = [helper.make_node("Identity", ["x"], ["x0"])], []
    _conv(nodes, inits, "x0", "c", 16, 16, "c0", rng)           # channels-last int8 output
    inits.append(numpy_helper.from_array((rng.standard_normal((8, 16, 1, 1)) * 0.3).astype(np.float32), "w"))
    nodes.append(helper.make_node("Conv", ["c", "w"], ["y"]))
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 9, 13])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 9, 13])], inits)
    feeds = {"x": rng.standard_normal((1, 16, 9, 13)).astype(np.float32)}
    qmodel = insert_qdq(model, feeds, ["x0", "c", "y"])
    qmodel.graph.output.append(helper.make_tensor_value_info("y_q", TensorProto.INT8, None))
    del qmodel.graph.output[0]
    unfused, _ = _run(qmodel, feeds, "numpy")
    fused, _ = _run(qmodel, feeds, "native")
    assert runs == [1]
    assert _units(fused, unfused) <= 1
