"""Fused GroupNorm (+ SiLU): the C kernel against its numpy twin, the fused op against the
unfused chain it replaces, the plan fusion (what it fuses and what it must leave alone) and
whole graphs in torch's export spelling against onnxruntime on both backends.

Twins: ops/fused.py group_norm_reference (norm.py's two-pass group normalisation, then
SiLU) for native.group_norm_act_f32; ops/fused.py unfused (the exported ops one by one) for
the GroupNorm op. Shapes hit SIMD tails (13, 19, 7x9), NCHW and channels-last memory, and
both kernel paths (rows in one task, rows split in chunks).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxstream_py
from onnxstream_py import native, ops
from onnxstream_py.converter import convert_model_proto
from onnxstream_py.layout import is_nhwc
from onnxstream_py.ops import fused, native_kernels as nk

import model_builders as mb
from op_testing import rand_f32 as _rand

ops.load_native()


def _channels_last(x: np.ndarray) -> np.ndarray:
    """x's values, NCHW shape, NHWC memory."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


# --------------------------------------------------------------------------- kernel vs twin
# (N, C, H, W, G): odd sizes; 320/32 at 7x9 is the UNet's channel split; the last has a
# 70K-element group (NCHW chunked path; NHWC several pixel tiles per item).
KERNEL_CASES = [(1, 12, 13, 19, 3), (2, 320, 7, 9, 32), (1, 4, 1, 1, 2), (2, 6, 127, 1, 6),
                (1, 8, 131, 137, 2)]


@pytest.mark.parametrize("n,c,h,w,g", KERNEL_CASES, ids=str)
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("silu", [0, 1])
@pytest.mark.parametrize("eps,loc", [(1e-5, 0.0), (1e-6, 50.0)], ids=["eps1e-5", "eps1e-6-offset"])
def test_kernel_matches_numpy_twin(ctx, n, c, h, w, g, layout, silu, eps, loc):
    x = _rand((n, c, h, w), 1, loc=loc, scale=3.0)
    scale, bias = _rand(c, 2), _rand(c, 3)
    want = fused.group_norm_reference(x, scale, bias, g, eps, bool(silu))
    if layout == "nhwc":
        buf = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        got = native.group_norm_act_f32(buf, scale, bias, g, eps, bool(silu), channels_last=True,
                                        pool=ctx.pool).transpose(0, 3, 1, 2)
    else:
        got = native.group_norm_act_f32(x, scale, bias, g, eps, bool(silu), pool=ctx.pool)
    # x - mean loses the mean's float32 rounding (~6e-8 x |mean|) in both; scale it to the output
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * float(np.abs(want).max()))


def test_kernel_single_thread_and_constant_groups(ctx):
    # a constant group has variance 0: output is bias (then SiLU), never NaN
    x = np.zeros((1, 12, 13, 19), np.float32)
    x[:, 4:8] = 7.0
    scale, bias = _rand(12, 2), _rand(12, 3)
    for cl in (False, True):
        buf = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if cl else x
        got = native.group_norm_act_f32(buf, scale, bias, 3, 1e-5, True, channels_last=cl)
        got = got.transpose(0, 3, 1, 2) if cl else got
        np.testing.assert_allclose(got, fused.group_norm_reference(x, scale, bias, 3, 1e-5, True),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n,c,h,w,g", [(1, 12, 13, 19, 3), (1, 8, 131, 137, 2)], ids=str)
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_kernel_in_place_and_op_with_donated_input(ctx, n, c, h, w, g, layout):
    x = _rand((n, c, h, w), 1, loc=2.0)
    scale, bias = _rand(c, 2), _rand(c, 3)
    want = fused.group_norm_reference(x, scale, bias, g, 1e-5, True)
    buf = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layout == "nhwc" else x.copy()
    got = native.group_norm_act_f32(buf, scale, bias, g, 1e-5, True, channels_last=layout == "nhwc",
                                    out=buf, pool=ctx.pool)
    assert got is buf
    got = got.transpose(0, 3, 1, 2) if layout == "nhwc" else got
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * float(np.abs(want).max()))
    # the op writes into a donated x (same memory and layout), nowhere else
    xin = _channels_last(x) if layout == "nhwc" else x.copy()
    y = nk.GroupNorm(xin, scale.reshape(c, 1, 1), bias.reshape(c, 1, 1), num_groups=g, silu=1, _out=xin,
                     _ctx=ctx)
    assert np.shares_memory(y, xin) and y.strides == xin.strides
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6 * float(np.abs(want).max()))
    other = np.empty_like(x)                 # a buffer that is not x's: ignored
    xin = x.copy()
    y = nk.GroupNorm(xin, scale.reshape(c, 1, 1), bias.reshape(c, 1, 1), num_groups=g, silu=1, _out=other,
                     _ctx=ctx)
    assert not np.shares_memory(y, other) and np.array_equal(xin, x)


def test_kernel_rejects_bad_input():
    x = _rand((1, 12, 5, 5))
    s = np.ones(12, np.float32)
    with pytest.raises(ValueError, match="not divisible"):
        native.group_norm_act_f32(x, s, s, 5, 1e-5)
    with pytest.raises(ValueError, match="scale must have shape"):
        native.group_norm_act_f32(x, s[:4], s, 3, 1e-5)
    with pytest.raises(ValueError, match="C-contiguous"):
        native.group_norm_act_f32(x.transpose(0, 1, 3, 2), s, s, 3, 1e-5)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        native.group_norm_act_f32(x.astype(np.float64), s, s, 3, 1e-5)
    buf = np.empty(2 * x.size, np.float32)
    with pytest.raises(ValueError, match="overlaps"):         # shifted, partly overlapping output
        native.group_norm_act_f32(buf[:x.size].reshape(x.shape), s, s, 3, 1e-5,
                                  out=buf[3:3 + x.size].reshape(x.shape))


# --------------------------------------------------------------------------- op vs unfused chain
def _op_args(c, g, seed=0, gamma_shape=None, group_params=False):
    gamma_shape = gamma_shape or (c, 1, 1)
    gamma, beta = _rand(gamma_shape, seed + 2), _rand(gamma_shape, seed + 3)
    gs = _rand(g, seed + 4) if group_params else None
    gb = _rand(g, seed + 5) if group_params else None
    return gamma, beta, gs, gb


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "strided"])
@pytest.mark.parametrize("silu", [0, 1])
@pytest.mark.parametrize("group_params", [False, True], ids=["in-ones", "in-params"])
def test_op_matches_unfused_chain(ctx, layout, silu, group_params):
    c, g = 12, 3
    x = _rand((2, c, 13, 19), 1, scale=2.0)
    gamma, beta, gs, gb = _op_args(c, g, group_params=group_params)
    want = fused.unfused(x, gamma, beta, gs, gb, g, 1e-5, silu, 0, None)
    xin = {"nchw": x, "nhwc": _channels_last(x), "strided": x[:, :, :, ::-1].copy()[:, :, :, ::-1]}[layout]
    for impl in (fused.GroupNorm, nk.GroupNorm):
        kw = {"_ctx": ctx} if impl is nk.GroupNorm else {}
        got = impl(xin, gamma, beta, gs, gb, num_groups=g, epsilon=1e-5, silu=silu, **kw)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)
        if impl is nk.GroupNorm and layout == "nhwc":
            assert is_nhwc(got)                 # output keeps the input's layout


@pytest.mark.parametrize("case", ["gamma-along-W", "no-affine", "reshape-to-other-shape", "batch-mismatch",
                                  "float16", "groups-split-channels"])
def test_op_cases_off_the_fast_path_equal_the_chain(ctx, case):
    c, g = 12, 3
    x = _rand((2, c, 5, 12), 1)
    gamma, beta, gs, gb = _op_args(c, g)
    kw = dict(num_groups=g, epsilon=1e-5, silu=1)
    if case == "gamma-along-W":             # [C] broadcasts along the last axis, as Mul does
        gamma, beta = _rand(12, 7), _rand(12, 8)
    elif case == "no-affine":
        gamma = beta = None
    elif case == "reshape-to-other-shape":
        kw["shape"] = [2, c, 12, 5]
    elif case == "batch-mismatch":
        kw["batch"] = 1
    elif case == "float16":
        x, gamma, beta = x.astype(np.float16), gamma.astype(np.float16), beta.astype(np.float16)
    elif case == "groups-split-channels":   # 12 channels do not divide into 5 groups (but 2*12*5*12 does)
        kw["num_groups"] = 5
    want = fused.unfused(x, gamma, beta, gs, gb, kw["num_groups"], 1e-5, 1, kw.get("batch", 0), kw.get("shape"))
    for impl, extra in ((fused.GroupNorm, {}), (nk.GroupNorm, {"_ctx": ctx})):
        got = impl(x, gamma, beta, gs, gb, **kw, **extra)
        assert got.shape == want.shape and got.dtype == want.dtype
        tol = 2e-3 if x.dtype == np.float16 else 1e-5
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=tol, atol=tol)


def test_native_norm_ops_take_channels_last(ctx):
    x = _rand((1, 12, 13, 19), 1)
    s, b = _rand(12, 2), _rand(12, 3)
    for fn, args, kw in ((nk.InstanceNormalization, (s, b), {}),
                         (nk.GroupNormalization21, (s, b), {"num_groups": 3}),
                         (nk.GroupNormalization18, (s[:3], b[:3]), {"num_groups": 3})):
        want = fn(x, *args, epsilon=1e-5, _ctx=ctx, **kw)
        got = fn(_channels_last(x), *args, epsilon=1e-5, _ctx=ctx, **kw)
        assert is_nhwc(got)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- graphs
def _i64(name, v):
    return numpy_helper.from_array(np.asarray(v, dtype=np.int64), name)


def torch_group_norm(c=12, g=3, silu=True, affine=True, back="shape", first=(0, None, -1),
                     in_scale=1.0, in_scale_input=False, extra_consumer=None, sigmoid_first=False,
                     shape_start=None, static=None, seed=0) -> onnx.ModelProto:
    """x [N, C, H, W] -> nn.GroupNorm(g, c) [-> SiLU] -> Conv 1x1 -> y, as torch exports it.

    back: "shape" (Reshape(Shape(x))), "const" (a constant target), "bad" (a constant
    [N, C, W, H]: not x's shape); first: the first Reshape's target (None: G);
    in_scale: the InstanceNormalization scale value (in_scale_input: a graph input instead);
    extra_consumer: an intermediate also made a graph output ("in", "mul", "add");
    static: (N, H, W) for a constant target.
    """
    rng = np.random.default_rng(seed)
    f32 = lambda a: np.asarray(a, np.float32)   # noqa: E731
    inits = [_i64("r1", [g if d is None else d for d in first]),
             numpy_helper.from_array(f32(np.full(g, in_scale)), "in_s"),
             numpy_helper.from_array(f32(np.zeros(g)), "in_b"),
             numpy_helper.from_array(f32(rng.standard_normal((c, 1, 1))), "gamma"),
             numpy_helper.from_array(f32(rng.standard_normal((c, 1, 1))), "beta"),
             numpy_helper.from_array(f32(rng.standard_normal((5, c, 1, 1)) * 0.3), "wc")]
    nodes = [helper.make_node("Reshape", ["x", "r1"], ["t1"]),
             helper.make_node("InstanceNormalization", ["t1", "in_s", "in_b"], ["t2"], epsilon=1e-6)]
    if back == "shape":
        kw = {} if shape_start is None else {"start": shape_start}
        nodes.append(helper.make_node("Shape", ["x"], ["sh"], **kw))
    else:
        n, h, w = static
        inits.append(_i64("sh", [n, c, h, w] if back == "const" else [n, c, w, h]))
    nodes.append(helper.make_node("Reshape", ["t2", "sh"], ["t3"]))
    last = "t3"
    if affine:
        nodes += [helper.make_node("Mul", ["t3", "gamma"], ["t4"]), helper.make_node("Add", ["beta", "t4"], ["t5"])]
        last = "t5"
    if silu:
        sig = helper.make_node("Sigmoid", [last], ["sg"])
        mul = helper.make_node("Mul", ["sg", last] if sigmoid_first else [last, "sg"], ["t6"])
        nodes += [sig, mul]
        last = "t6"
    nodes.append(helper.make_node("Conv", [last, "wc"], ["y"]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if extra_consumer:
        outputs.append(helper.make_tensor_value_info({"in": "t2", "mul": "t4", "add": "t5"}[extra_consumer],
                                                     TensorProto.FLOAT, None))
    dims = ["N", c, "H", "W"] if static is None else [static[0], c, static[1], static[2]]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)]
    if in_scale_input:
        inits = [t for t in inits if t.name != "in_s"]
        inputs.append(helper.make_tensor_value_info("in_s", TensorProto.FLOAT, [g]))
    return mb.make_model(nodes, inputs, outputs, inits)


def _plan_and_run(tmp_path, model, feeds, backend):
    convert_model_proto(model, str(tmp_path / "m"))
    with onnxstream_py.Model(str(tmp_path / "m"), options=onnxstream_py.RunOptions(backend=backend)) as m:
        res = m.run(feeds)
        return m.plan, [res[o.name] for o in model.graph.output]


FUSED_MODELS = {
    "silu": {},
    "silu-sigmoid-first": {"sigmoid_first": True},
    "no-silu": {"silu": False},
    "no-affine": {"affine": False},
    "dynamo-shape-start": {"shape_start": 0},
    "const-target": {"back": "const", "static": (2, 13, 19)},
    "batch-in-target": {"first": (2, None, -1), "back": "const", "static": (2, 13, 19)},
    "in-scale-not-one": {"in_scale": 1.5},
    "320ch-32groups": {"c": 320, "g": 32},
}


@pytest.mark.parametrize("name", list(FUSED_MODELS))
def test_fused_graph_matches_onnxruntime(tmp_path, backend, name):
    kw = FUSED_MODELS[name]
    model = torch_group_norm(**kw)
    c = kw.get("c", 12)
    x = _rand((2, c, 13, 19) if c == 12 else (2, c, 7, 9), 1, loc=0.5, scale=2.0)
    ref = mb.ort_run(model, {"x": x})
    plan, got = _plan_and_run(tmp_path, model, {"x": x}, backend)
    assert plan.fusions == {"GroupNorm": 1}
    kinds = {s.node.op_type for s in plan.steps}
    assert kinds == {"GroupNorm", "Conv"}, kinds       # Shape, Sigmoid and the Mul went too
    (gn,) = [s.node for s in plan.steps if s.node.op_type == "GroupNorm"]
    assert gn.attrs.get("silu", 0) == int(kw.get("silu", True))
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(r).max())))


# Every model here is valid and runs in onnxruntime; the engine must give its outputs.
NOT_FUSED = {
    "extra-consumer-of-IN": {"extra_consumer": "in"},           # the IN output is also a graph output
    "IN-scale-computed": {"in_scale_input": True},              # IN scale is an activation, not a constant
    "first-reshape-not-[N,G,-1]": {"first": (-1, None, 247)},   # [8, 3, 247]: not per batch item
    "first-reshape-not-3d": {"first": (0, None, 2, -1)},        # [2, 3, 2, 494]
}


@pytest.mark.parametrize("name", list(NOT_FUSED))
def test_non_matching_patterns_are_not_fused(tmp_path, backend, name):
    model = torch_group_norm(**NOT_FUSED[name])
    x = _rand((2, 12, 13, 19), 1)
    feeds = {"x": x}
    if NOT_FUSED[name].get("in_scale_input"):
        feeds["in_s"] = _rand(3, 9)
    ref = mb.ort_run(model, feeds)
    plan, got = _plan_and_run(tmp_path, model, feeds, backend)
    assert "GroupNorm" not in plan.fusions
    assert "InstanceNormalization" in {s.node.op_type for s in plan.steps}
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(r).max())))


def test_constant_reshape_back_to_another_shape_runs_the_chain(tmp_path, backend):
    # Reshape back to [N, C, W, H] (not x's [N, C, H, W]): the plan cannot see activation shapes,
    # so it fuses; the op finds the target is not x's shape and runs the exported ops.
    model = torch_group_norm(back="bad", static=(2, 13, 19))
    x = _rand((2, 12, 13, 19), 1)
    ref = mb.ort_run(model, {"x": x})
    plan, got = _plan_and_run(tmp_path, model, {"x": x}, backend)
    assert plan.fusions == {"GroupNorm": 1}
    assert got[0].shape == ref[0].shape == (2, 5, 19, 13)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(r).max())))


@pytest.mark.parametrize("which", ["mul", "add"])
def test_affine_intermediate_with_another_consumer_stops_the_chain_there(tmp_path, backend, which):
    model = torch_group_norm(extra_consumer=which)
    x = _rand((2, 12, 13, 19), 1)
    ref = mb.ort_run(model, {"x": x})
    plan, got = _plan_and_run(tmp_path, model, {"x": x}, backend)
    assert plan.fusions == {"GroupNorm": 1}
    kinds = [s.node.op_type for s in plan.steps]
    # the chain ends at the shared value; what follows it stays as exported
    assert "Sigmoid" in kinds and ("Add" in kinds) == (which == "mul")
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(r).max())))


def test_silu_with_a_third_consumer_is_not_fused(tmp_path, backend):
    model = torch_group_norm()
    g = model.graph
    g.node.append(helper.make_node("Relu", ["t5"], ["r"]))       # t5 also feeds a Relu
    g.output.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    x = _rand((2, 12, 13, 19), 1)
    ref = mb.ort_run(model, {"x": x})
    plan, got = _plan_and_run(tmp_path, model, {"x": x}, backend)
    assert plan.fusions == {"GroupNorm": 1}
    (gn,) = [s.node for s in plan.steps if s.node.op_type == "GroupNorm"]
    assert not gn.attrs.get("silu") and gn.outputs == ["t5"]
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(b).max())))
