"""FP16 storage of long-lived activations (RunOptions.activation_storage="fp16"): the plan's
narrow/widen points, the conversions keeping channels-last layout, and the error it adds on
the tiny SD 1.5 UNet fixture (NMSE vs the fp32 run, both backends).
"""
from __future__ import annotations

import json
import pathlib
import tempfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxstream_py
from onnxstream_py import interpreter, plan as plan_mod
from onnxstream_py.converter import convert_model_proto
from onnxstream_py.layout import is_nhwc

from fixture_inputs import draw_inputs

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "models"
# Measured NMSE of the tiny SD 1.5 UNet's output with every long wait stored as float16:
# 0.9-1.6e-7 (max abs error 3-5e-4 x max|y|) over its two exports and input sizes: float16
# rounding (2^-11 relative) of each stored skip connection and residual.
UNET_NMSE_BAR = 1e-6


def _nmse(got, want) -> float:
    g, w = got.astype(np.float64), want.astype(np.float64)
    return float(np.sum((g - w) ** 2) / max(np.sum(w ** 2), 1e-30))


def _chain_model(n_mid: int):
    """x -> Relu -> h; n_mid Neg steps on h's branch; y = h + (the branch): h waits n_mid steps."""
    nodes = [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Neg", ["h"], ["m0"])]
    for i in range(1, n_mid):
        nodes.append(helper.make_node("Neg", [f"m{i - 1}"], [f"m{i}"]))
    nodes.append(helper.make_node("Add", ["h", f"m{n_mid - 1}"], ["y"]))
    g = helper.make_graph(nodes, "wait", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 300])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 300])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_plan_marks_long_waits_and_interpreter_converts(backend, monkeypatch):
    gap = plan_mod.FP16_STORAGE_MIN_GAP
    x = np.random.default_rng(0).standard_normal((64, 300)).astype(np.float32)   # 75 KiB
    real = interpreter._convert
    for n_mid, narrowed in ((gap - 1, False), (gap + 3, True)):
        calls = []
        monkeypatch.setattr(interpreter, "_convert", lambda a, dt, ctx: calls.append(np.dtype(dt)) or real(a, dt, ctx))
        with tempfile.TemporaryDirectory() as d:
            convert_model_proto(_chain_model(n_mid), d + "/m")
            outs = {}
            for storage in ("fp32", "fp16"):
                opts = onnxstream_py.RunOptions(backend=backend, activation_storage=storage)
                with onnxstream_py.Model(d + "/m", options=opts) as m:
                    marks = [(s.narrow_after, s.widen_before) for s in m.plan.steps]
                    outs[storage] = m.run({"x": x})["y"]
        if narrowed:
            assert marks[1] == (("h",), ()) and marks[-1] == ((), ("h",))   # after its first reader
            assert calls == [np.float16, np.float32]
        else:
            assert all(m == ((), ()) for m in marks) and not calls
        h = np.maximum(x, 0)
        np.testing.assert_array_equal(outs["fp32"], h + (-1) ** n_mid * h)
        stored = h.astype(np.float16).astype(np.float32) if narrowed else h     # what the Add reads as h
        np.testing.assert_array_equal(outs["fp16"], stored + (-1) ** n_mid * h)


def test_convert_keeps_channels_last():
    a = np.random.default_rng(1).standard_normal((1, 5, 7, 3)).astype(np.float32)   # NHWC buffer
    x = a.transpose(0, 3, 1, 2)
    assert is_nhwc(x)
    for ctx in (None, "native"):
        if ctx == "native":
            from onnxstream_py.native_context import NativeContext
            ctx = NativeContext(onnxstream_py.RunOptions(threads=2))
        h = interpreter._convert(x, np.float16, ctx)
        assert h.dtype == np.float16 and h.shape == x.shape and is_nhwc(h)
        back = interpreter._convert(h, np.float32, ctx)
        assert back.dtype == np.float32 and is_nhwc(back)
        np.testing.assert_array_equal(back, x.astype(np.float16).astype(np.float32))
        if ctx is not None:
            ctx.close()


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_unet_error_bound(backend, monkeypatch):
    # The fixture's tensors are tiny: store every long wait, whatever its size.
    monkeypatch.setattr(interpreter, "NARROW_MIN_BYTES", 0)
    entry = json.loads((FIXTURES / "manifest.json").read_text())["fixtures"]["unet_sd1_ts17"]
    model = onnx.load(str(FIXTURES / entry["file"]))
    feeds = draw_inputs(entry["inputs"], 0, entry["seed"])
    out = {}
    with tempfile.TemporaryDirectory() as d:
        convert_model_proto(model, d + "/m")
        for storage in ("fp32", "fp16"):
            opts = onnxstream_py.RunOptions(backend=backend, activation_storage=storage)
            with onnxstream_py.Model(d + "/m", options=opts) as m:
                if storage == "fp16":
                    assert sum(len(s.narrow_after) for s in m.plan.steps) >= 6   # skip connections at least
                out[storage] = m.run(feeds)["out_sample"]
    err = _nmse(out["fp16"], out["fp32"])
    assert 0 < err < UNET_NMSE_BAR, err
