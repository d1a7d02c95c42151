"""Plan fusions of exported LayerNorm, GELU (erf and tanh forms, and GEGLU's product) and
SiLU/QuickGELU chains: the C kernels against their numpy twins, the fused ops against the
chains they replace (including every run-time case that must fall back to the chain), the
plan (what it fuses, in which spellings, and what it must leave alone) and whole graphs
against onnxruntime and against the engine's own unfused run, on both backends.

Twins: ops/fused.py silu_reference for native.silu_f32; m * elementwise.Gelu(x) for
native.gelu_mul_f32. Sizes hit SIMD tails (13, 19, 127) and the row-strided inputs of GEGLU
(column slices of one projection).
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxstream_py
from onnxstream_py import native, ops, plan as plan_mod
from onnxstream_py.converter import convert_model_proto
from onnxstream_py.graph import Node, read_graph
from onnxstream_py.ops import elementwise, fused, native_kernels as nk
from onnxstream_py.ops.attention import DOMAIN as FUSED_DOMAIN

import model_builders as mb
from op_testing import rand_f32 as _rand

ops.load_native()


def _close(got, want, rtol=1e-5):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(1.0, float(np.abs(want).max(initial=0))))


# --------------------------------------------------------------------------- kernels vs twins
SHAPES = [(13,), (19, 127), (3, 7, 129), (2, 70001)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("alpha", [1.0, 1.702])
def test_silu_kernel_matches_twin(ctx, shape, alpha):
    x = _rand(shape, 1, scale=4.0)
    x.reshape(-1)[:4] = [-90.0, 90.0, 0.0, -0.0]     # exp clamps on both sides; signed zero
    want = fused.silu_reference(x, alpha)
    for pool in (None, ctx.pool):
        _close(native.silu_f32(x, alpha, pool=pool), want, 2e-6)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("approximate", [False, True])
def test_gelu_mul_kernel_matches_twin(ctx, shape, approximate):
    x, m = _rand(shape, 1, scale=3.0), _rand(shape, 2)
    want = m * elementwise.Gelu(x, approximate="tanh" if approximate else "none")
    for pool in (None, ctx.pool):
        _close(native.gelu_mul_f32(x, m, approximate, pool=pool), want, 2e-6)
    # and exactly the native Gelu followed by the product (same formula, same rounding)
    np.testing.assert_array_equal(native.gelu_mul_f32(x, m, approximate, pool=ctx.pool),
                                  m * native.gelu_f32(x, approximate))


@pytest.mark.parametrize("cols", [13, 127, 1280])
def test_kernels_read_row_strided_slices(ctx, cols):
    proj = _rand((2, 19, 2 * cols), 3, scale=2.0)
    a, gate = proj[..., :cols], proj[..., cols:]          # GEGLU's halves: rows 2*cols apart
    assert not a.flags.c_contiguous
    _close(native.gelu_mul_f32(gate, a, pool=ctx.pool), a * elementwise.Gelu(gate), 2e-6)
    _close(native.silu_f32(gate, 1.0, pool=ctx.pool), fused.silu_reference(gate, 1.0), 2e-6)
    # the native ops take them without a copy and give the twins' result
    _close(nk.GeluMul(gate, a, _ctx=ctx), fused.GeluMul(gate, a), 2e-6)
    _close(nk.Silu(gate, alpha=1.702, _ctx=ctx), fused.Silu(gate, alpha=1.702), 2e-6)


def test_kernels_in_place(ctx):
    x, m = _rand((5, 131), 1), _rand((5, 131), 2)
    want_s = fused.silu_reference(x, 1.0)
    want_g = m * native.gelu_f32(x)
    xs = x.copy()
    assert native.silu_f32(xs, out=xs, pool=ctx.pool) is xs
    _close(xs, want_s, 2e-6)
    for target in ("x", "m"):
        xx, mm = x.copy(), m.copy()
        out = xx if target == "x" else mm
        assert native.gelu_mul_f32(xx, mm, out=out, pool=ctx.pool) is out
        np.testing.assert_array_equal(out, want_g)
    # donated buffers in the native ops
    xx = x.copy()
    assert nk.Silu(xx, _out=xx, _ctx=ctx) is xx
    xx, mm = x.copy(), m.copy()
    assert nk.GeluMul(xx, mm, _out=mm, _ctx=ctx) is mm
    np.testing.assert_array_equal(mm, want_g)


def test_kernels_reject_bad_input():
    x = _rand((4, 6), 1)
    with pytest.raises(ValueError, match="float32"):
        native.silu_f32(x.astype(np.float64))
    with pytest.raises(ValueError, match="evenly spaced"):
        native.silu_f32(x[:, ::2])                       # columns not contiguous
    with pytest.raises(ValueError, match="same shape"):
        native.gelu_mul_f32(x, x[:, :3])
    big = _rand((4, 8), 2)
    with pytest.raises(ValueError, match="overlaps"):      # out is x's memory, but not x itself
        native.silu_f32(big[:, :4], out=big.reshape(-1)[:16].reshape(4, 4))
    with pytest.raises(ValueError, match="overlaps"):
        native.gelu_mul_f32(big[:, :4], big[:, 4:], out=big.reshape(-1)[16:].reshape(4, 4))
    with pytest.raises(ValueError, match="non-empty"):
        native.silu_f32(np.zeros((0, 3), np.float32))


# --------------------------------------------------------------------------- ops vs the chains
def test_layer_norm_op_matches_chain(ctx):
    x = _rand((2, 7, 19), 1, loc=3.0, scale=2.0)
    g, b = _rand(19, 2), _rand(19, 3)
    for square in ("pow", "mul"):
        want = fused.layer_norm_unfused(x, g, b, [-1], 1e-5, square)
        _close(fused.LayerNorm(x, g, b, axes=[-1], epsilon=1e-5, square=square), want)
        _close(nk.LayerNorm(x, g, b, axes=[-1], epsilon=1e-5, square=square, _ctx=ctx), want)
    # over the last two dims (axes in either spelling), no affine
    want = fused.layer_norm_unfused(x, None, None, [1, 2], 1e-5, "pow")
    _close(nk.LayerNorm(x, axes=[-1, 1], epsilon=1e-5, _ctx=ctx), want)
    _close(fused.LayerNorm(x, axes=None, epsilon=1e-5), fused.layer_norm_unfused(x, None, None, None, 1e-5, "pow"))


# cases the fast path must hand to the chain: (x, gamma, beta, axes)
_x = _rand((2, 7, 19), 1)
FALLBACK = {
    "axes-not-trailing": (_x, None, None, [1]),
    "gamma-per-row": (_x, _rand((2, 1, 1), 2), None, [-1]),
    "beta-grows-rank": (_x, None, _rand((3, 1, 1, 19), 3), [-1]),
    "float64": (_x.astype(np.float64), _rand(19, 2).astype(np.float64), None, [-1]),
}


@pytest.mark.parametrize("case", list(FALLBACK))
def test_layer_norm_off_the_fast_path_equals_chain(ctx, case):
    x, g, b, axes = FALLBACK[case]
    want = fused.layer_norm_unfused(x, g, b, axes, 1e-5, "pow")
    _close(fused.LayerNorm(x, g, b, axes=axes), want)
    _close(nk.LayerNorm(x, g, b, axes=axes, _ctx=ctx), want)


def test_gelu_and_silu_ops_off_the_fast_path(ctx):
    x16 = _rand((3, 5), 1).astype(np.float16)
    for approx in ("none", "tanh"):
        _close(nk.FusedGelu(x16, approximate=approx, _ctx=ctx), fused.gelu_unfused(x16, approx), 1e-3)
    _close(nk.Silu(x16, alpha=1.702, const_rank=1, _ctx=ctx),
           (x16 * elementwise.Sigmoid(x16 * np.float16(1.702))).astype(np.float16), 1e-3)
    # a 0-d x with a rank-1 constant: the chain's result has the constant's rank
    x0 = np.asarray(0.75, np.float32)
    assert nk.FusedGelu(x0, const_rank=1, _ctx=ctx).shape == (1,)
    assert nk.Silu(x0, alpha=2.0, const_rank=1, _ctx=ctx).shape == (1,)
    # GeluMul whose multiplier broadcasts
    x, m = _rand((4, 6), 1), _rand((1, 6), 2)
    _close(nk.GeluMul(x, m, _ctx=ctx), m * elementwise.Gelu(x), 2e-6)


def test_elementwise_fused_ops_keep_channels_last(ctx):
    from onnxstream_py.layout import is_nhwc
    buf = _rand((2, 5, 7, 13), 1)                  # NHWC memory, NCHW shape
    x = buf.transpose(0, 3, 1, 2)
    m = _rand((2, 5, 7, 13), 2).transpose(0, 3, 1, 2)
    for got, want in ((nk.Silu(x, _ctx=ctx), fused.Silu(x)),
                      (nk.FusedGelu(x, _ctx=ctx), fused.Gelu(x)),
                      (nk.GeluMul(x, m, _ctx=ctx), fused.GeluMul(x, m))):
        assert is_nhwc(got)
        _close(got, want, 2e-6)


# --------------------------------------------------------------------------- graphs
def _f(name, v):
    return numpy_helper.from_array(np.asarray(v, np.float32), name)


def _i64(name, v):
    return numpy_helper.from_array(np.asarray(v, np.int64), name)


def layer_norm_model(c=19, square="pow", affine=True, axes=(-1,), opset=14, eps=1e-5, gamma_shape=None,
                     var_axes=None, exponent=2.0, expose=None, eps_input=False):
    """Older exporters' LayerNorm of x [B, T, c], then a MatMul (so the output is not the input's)."""
    rng = np.random.default_rng(7)
    inits = [_f("w", rng.standard_normal((c, 5)))]
    var_axes = axes if var_axes is None else var_axes

    def reduce(name, src, ax):
        if opset >= 18:
            inits.append(_i64(name + "_axes", list(ax)))
            return helper.make_node("ReduceMean", [src, name + "_axes"], [name], keepdims=1)
        return helper.make_node("ReduceMean", [src], [name], axes=list(ax), keepdims=1)

    nodes = [reduce("mean", "x", axes), helper.make_node("Sub", ["x", "mean"], ["d"])]
    if square == "pow":
        inits.append(_f("two", exponent))
        nodes.append(helper.make_node("Pow", ["d", "two"], ["sq"]))
    else:
        nodes.append(helper.make_node("Mul", ["d", "d"], ["sq"]))
    nodes += [reduce("var", "sq", var_axes), helper.make_node("Add", ["var", "eps"], ["ve"]),
              helper.make_node("Sqrt", ["ve"], ["sd"]), helper.make_node("Div", ["d", "sd"], ["n"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", c])]
    if eps_input:
        inputs.append(helper.make_tensor_value_info("eps", TensorProto.FLOAT, []))
    else:
        inits.append(_f("eps", eps))
    out = "n"
    if affine:
        inits += [_f("gamma", rng.standard_normal(gamma_shape or (c,))), _f("beta", rng.standard_normal(c))]
        nodes += [helper.make_node("Mul", ["n", "gamma"], ["ng"]), helper.make_node("Add", ["beta", "ng"], ["nb"])]
        out = "nb"
    nodes.append(helper.make_node("MatMul", [out, "w"], ["y"]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if expose:
        outputs.append(helper.make_tensor_value_info(expose, TensorProto.FLOAT, None))
    return mb.make_model(nodes, inputs, outputs, inits, opset=opset)


def gelu_model(form="erf-div", order="xa-half", c=13, geglu=False, consts=None, expose=None, opset=17):
    """GELU of x [B, T, c] as exporters spell it (geglu: x is the second half of a [B, T, 2c]
    input, and the GELU is multiplied by the first half)."""
    k = {"sqrt2": np.sqrt(2.0), "one": 1.0, "half": 0.5, "cubic": 0.044715, "s2pi": np.sqrt(2 / np.pi),
         "three": 3.0, **(consts or {})}
    inits = [_f(n, v) for n, v in k.items()]
    nodes = []
    if geglu:
        inits += [_i64("s0", [0]), _i64("sc", [c]), _i64("s2c", [2 * c]), _i64("ax", [-1])]
        nodes += [helper.make_node("Slice", ["p", "s0", "sc", "ax"], ["h"]),
                  helper.make_node("Slice", ["p", "sc", "s2c", "ax"], ["x"])]
        inputs = [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["B", "T", 2 * c])]
    else:
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", c])]
    if form == "erf-div":
        nodes += [helper.make_node("Div", ["x", "sqrt2"], ["u"]), helper.make_node("Erf", ["u"], ["e"])]
    elif form == "erf-mul":
        inits.append(_f("isqrt2", 1 / np.sqrt(2.0)))
        nodes += [helper.make_node("Mul", ["isqrt2", "x"], ["u"]), helper.make_node("Erf", ["u"], ["e"])]
    else:
        if form == "tanh-pow":
            nodes.append(helper.make_node("Pow", ["x", "three"], ["p3"]))
        else:
            nodes += [helper.make_node("Mul", ["x", "x"], ["x2"]), helper.make_node("Mul", ["x2", "x"], ["p3"])]
        nodes += [helper.make_node("Mul", ["p3", "cubic"], ["w"]), helper.make_node("Add", ["x", "w"], ["v"]),
                  helper.make_node("Mul", ["v", "s2pi"], ["u"]), helper.make_node("Tanh", ["u"], ["e"])]
    nodes.append(helper.make_node("Add", ["e", "one"], ["a"]))
    if order == "xa-half":
        nodes += [helper.make_node("Mul", ["x", "a"], ["t"]), helper.make_node("Mul", ["t", "half"], ["g"])]
    elif order == "ahalf-x":
        nodes += [helper.make_node("Mul", ["half", "a"], ["t"]), helper.make_node("Mul", ["x", "t"], ["g"])]
    else:   # halfx-a
        nodes += [helper.make_node("Mul", ["x", "half"], ["t"]), helper.make_node("Mul", ["t", "a"], ["g"])]
    out = "g"
    if geglu:
        nodes.append(helper.make_node("Mul", ["h", "g"], ["gg"]))
        out = "gg"
    nodes.append(helper.make_node("Relu", [out], ["y"]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if expose:
        outputs.append(helper.make_tensor_value_info(expose, TensorProto.FLOAT, None))
    return mb.make_model(nodes, inputs, outputs, inits, opset=opset)


def silu_model(alpha=None, sigmoid_first=False, other_input=False, expose=None, alpha_shape=()):
    inits = []
    nodes = []
    t = "x"
    if alpha is not None:
        inits.append(_f("alpha", np.full(alpha_shape, alpha)))
        nodes.append(helper.make_node("Mul", ["x", "alpha"], ["ax"]))
        t = "ax"
    other = "z" if other_input else "x"
    nodes += [helper.make_node("Sigmoid", [t], ["s"]),
              helper.make_node("Mul", ["s", other] if sigmoid_first else [other, "s"], ["m"]),
              helper.make_node("Neg", ["m"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 19])]
    if other_input:
        inputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", 19]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if expose:
        outputs.append(helper.make_tensor_value_info(expose, TensorProto.FLOAT, None))
    return mb.make_model(nodes, inputs, outputs, inits)


def _run(tmp_path, model, feeds, backend, sub="m"):
    convert_model_proto(model, str(tmp_path / sub))
    with onnxstream_py.Model(str(tmp_path / sub), options=onnxstream_py.RunOptions(backend=backend)) as m:
        res = m.run(feeds)
        return m.plan, [res[o.name] for o in model.graph.output]


def _unfused(monkeypatch):
    """Turn this module's fusions off in build_plan (for the engine's own unfused reference)."""
    monkeypatch.setattr(plan_mod, "fuse_layer_norm", lambda g, n: (n, 0))
    monkeypatch.setattr(plan_mod, "fuse_gelu", lambda g, n, gelu_mul=True: (n, 0, 0))
    monkeypatch.setattr(plan_mod, "fuse_silu", lambda g, n: (n, 0))


def _ort_run(model, feeds):
    """onnxruntime without its own graph fusions: its LayerNorm fusion also takes Pow(d, 3)."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _check_graph(tmp_path, monkeypatch, backend, model, feeds, fusions, rtol=1e-5):
    ref = _ort_run(model, feeds)
    plan, got = _run(tmp_path, model, feeds, backend)
    assert plan.fusions == fusions
    for g, r in zip(got, ref):
        _close(g, r, rtol)
    with monkeypatch.context() as mp:
        _unfused(mp)
        plan0, base = _run(tmp_path, model, feeds, backend, "m0")
    assert plan0.fusions == {}
    for g, b in zip(got, base):
        _close(g, b, rtol)
    return plan


LN_MODELS = {
    "pow-opset14": ({}, {"LayerNorm": 1}),
    "mul-square": ({"square": "mul"}, {"LayerNorm": 1}),
    "no-affine": ({"affine": False}, {"LayerNorm": 1}),
    "axes-input-opset18": ({"opset": 18}, {"LayerNorm": 1}),
    "two-trailing-axes": ({"axes": (1, 2)}, {"LayerNorm": 1}),
    "eps-1e-12": ({"eps": 1e-12}, {"LayerNorm": 1}),
    # fused, but only the chain gives these: the op checks at run time
    "axes-not-trailing": ({"axes": (1,)}, {"LayerNorm": 1}),
    "gamma-grows-rank": ({"gamma_shape": (2, 1, 1, 19)}, {"LayerNorm": 1}),
    # not fused
    "pow-4": ({"exponent": 4.0}, {}),
    "axes-differ": ({"var_axes": (1,)}, {}),
    "eps-is-an-input": ({"eps_input": True}, {}),
    "d-exposed": ({"expose": "d"}, {}),
    "variance-exposed": ({"expose": "var"}, {}),
}


@pytest.mark.parametrize("name", list(LN_MODELS))
def test_layer_norm_graphs(tmp_path, monkeypatch, backend, name):
    kw, fusions = LN_MODELS[name]
    model = layer_norm_model(**kw)
    feeds = {"x": _rand((2, 7, 19), 1, loc=2.0, scale=3.0)}
    if kw.get("eps_input"):
        feeds["eps"] = np.asarray(1e-5, np.float32)
    _check_graph(tmp_path, monkeypatch, backend, model, feeds, fusions)


def test_layer_norm_affine_with_another_consumer_stops_there(tmp_path, monkeypatch, backend):
    model = layer_norm_model(expose="ng")          # the Mul(gamma) result is also an output
    plan = _check_graph(tmp_path, monkeypatch, backend, model, {"x": _rand((2, 7, 19), 1)}, {"LayerNorm": 1})
    assert "Add" in {s.node.op_type for s in plan.steps}


GELU_MODELS = {
    f"{form}-{order}": ({"form": form, "order": order}, {"Gelu": 1})
    for form in ("erf-div", "erf-mul", "tanh-pow", "tanh-mul") for order in ("xa-half", "ahalf-x", "halfx-a")
}
GELU_MODELS.update({
    "geglu-erf": ({"geglu": True}, {"GeluMul": 1}),
    "geglu-tanh": ({"geglu": True, "form": "tanh-pow", "order": "halfx-a"}, {"GeluMul": 1}),
    "geglu-wide": ({"geglu": True, "c": 1280}, {"GeluMul": 1}),
    "gelu-exposed-before-geglu": ({"geglu": True, "expose": "g"}, {"Gelu": 1}),
    # not fused
    "sqrt2-wrong": ({"consts": {"sqrt2": 1.5}}, {}),
    "one-wrong": ({"consts": {"one": 2.0}}, {}),
    "half-wrong": ({"consts": {"half": 0.25}}, {}),
    "cubic-wrong": ({"form": "tanh-pow", "consts": {"cubic": 0.05}}, {}),
    "erf-exposed": ({"expose": "e"}, {}),
    "u-exposed": ({"form": "tanh-mul", "expose": "x2"}, {}),
})


@pytest.mark.parametrize("name", list(GELU_MODELS))
def test_gelu_graphs(tmp_path, monkeypatch, backend, name):
    kw, fusions = GELU_MODELS[name]
    model = gelu_model(**kw)
    c = kw.get("c", 13)
    shape = (2, 7, 2 * c) if kw.get("geglu") else (2, 7, c)
    _check_graph(tmp_path, monkeypatch, backend, model, {("p" if kw.get("geglu") else "x"): _rand(shape, 1, scale=2.5)},
                 fusions)


SILU_MODELS = {
    "silu": ({}, {"Silu": 1}),
    "silu-sigmoid-first": ({"sigmoid_first": True}, {"Silu": 1}),
    "quick-gelu": ({"alpha": 1.702}, {"Silu": 1}),
    "quick-gelu-alpha-1d": ({"alpha": 1.702, "alpha_shape": (1,)}, {"Silu": 1}),
    "gate-is-another-tensor": ({"other_input": True}, {}),
    "sigmoid-exposed": ({"expose": "s"}, {}),
    "scaled-input-exposed": ({"alpha": 1.702, "expose": "ax"}, {}),
}


@pytest.mark.parametrize("name", list(SILU_MODELS))
def test_silu_graphs(tmp_path, monkeypatch, backend, name):
    kw, fusions = SILU_MODELS[name]
    feeds = {"x": _rand((3, 19), 1, scale=4.0)}
    if kw.get("other_input"):
        feeds["z"] = _rand((3, 19), 2)
    _check_graph(tmp_path, monkeypatch, backend, silu_model(**kw), feeds, fusions)


def test_chains_sharing_nodes_fuse_once(tmp_path, monkeypatch, backend):
    """x * Sigmoid(x) whose product feeds a GELU: both fuse, each taking only its own nodes."""
    k = {"sqrt2": np.sqrt(2.0), "one": 1.0, "half": 0.5}
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["z"]),
             helper.make_node("Div", ["z", "sqrt2"], ["u"]), helper.make_node("Erf", ["u"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["z", "a"], ["t"]),
             helper.make_node("Mul", ["t", "half"], ["y"])]
    model = mb.make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 19])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [_f(n, v) for n, v in k.items()])
    _check_graph(tmp_path, monkeypatch, backend, model, {"x": _rand((3, 19), 1, scale=3.0)},
                 {"Gelu": 1, "Silu": 1})


def _graph(tmp_path, model):
    convert_model_proto(model, str(tmp_path / "g"))
    return read_graph(str(tmp_path / "g" / "graph.txt"))


def test_gelu_mul_option(tmp_path):
    """fuse_gelu(gelu_mul=False) keeps GEGLU's product a Mul after the fused Gelu."""
    g = _graph(tmp_path, gelu_model(geglu=True))
    nodes, n_gelu, n_mul = plan_mod.fuse_gelu(g, list(g.nodes), gelu_mul=False)
    assert (n_gelu, n_mul) == (1, 0)
    assert [n.op_type for n in nodes if n.op_type in ("Gelu", "Mul", "GeluMul")] == ["Gelu", "Mul"]
    assert plan_mod.fuse_gelu(g, list(g.nodes))[1:] == (0, 1)


@pytest.mark.parametrize("affine", [False, True])
def test_silu_after_a_plan_group_norm_is_left_to_it(tmp_path, affine):
    """A SiLU that fuse_group_norm left after its GroupNorm (or the affine's remains) stays as
    exported: that pass stopped there because the value has other readers."""
    g = _graph(tmp_path, silu_model())
    assert plan_mod.fuse_silu(g, list(g.nodes))[1] == 1
    g.consts = dict(g.consts, beta=np.zeros(1, np.float32))
    src = "tb" if affine else "t"
    nodes = [Node("GroupNorm", "gn", ["x0"], ["t"], {"num_groups": 1}, FUSED_DOMAIN)]
    if affine:
        nodes.append(Node("Add", "b", ["t", "beta"], ["tb"]))
    nodes += [Node(n.op_type, n.name, [src if v == "x" else v for v in n.inputs], n.outputs, n.attrs)
              for n in g.nodes]
    assert plan_mod.fuse_silu(g, nodes)[1] == 0


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_op_times_tensor_becomes_gelu_mul(tmp_path, monkeypatch, backend, approximate):
    """Opset 20's Gelu op whose only reader is a Mul with another tensor: GeluMul too."""
    c = 13
    inits = [_i64("s0", [0]), _i64("sc", [c]), _i64("s2c", [2 * c]), _i64("ax", [-1])]
    nodes = [helper.make_node("Slice", ["p", "s0", "sc", "ax"], ["h"]),
             helper.make_node("Slice", ["p", "sc", "s2c", "ax"], ["x"]),
             helper.make_node("Gelu", ["x"], ["g"], approximate=approximate),
             helper.make_node("Mul", ["g", "h"], ["y"])]
    model = mb.make_model(nodes, [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["B", "T", 2 * c])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits, opset=20)
    _check_graph(tmp_path, monkeypatch, backend, model, {"p": _rand((2, 7, 2 * c), 1, scale=2.5)}, {"GeluMul": 1})
