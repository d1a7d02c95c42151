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
