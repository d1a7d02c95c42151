"""Whole-model parity: tiny exported models run through onnxstream_py against onnxruntime.

The fixtures in tests/fixtures/models are tiny seeded random-weight versions of every model
family the engine claims (BERT, GPT-2, ViT, Whisper encoder, Llama, CLIP text, SD 1.x/2.x/XL
UNets, SD VAE encoder/decoder, ResNet/MobileNet/YOLO-style CNNs, a ConvTranspose decoder),
each exported by torch's TorchScript exporter at opsets 14 and 17 and by its dynamo exporter
at opset 18 (built by scripts/make_tiny_models.py; ops listed in docs/OP_COVERAGE.md).

Only input recipes are stored (manifest.json): inputs are drawn seeded here and onnxruntime's
outputs are computed at test time, which keeps the fixtures small. A model whose export has
dynamic axes runs at a second input size as well, to prove one converted model serves
several sizes. Needs onnx and onnxruntime, never torch.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np
import onnx
import pytest

from engine_runner import run_model
from fixture_inputs import draw_inputs

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "models"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text()) if (FIXTURES / "manifest.json").exists() \
    else {"fixtures": {}}

# FP32 tolerance: max abs error <= RTOL * max(1, max |reference|), per output.
RTOL = 1e-4


def _cases():
    for name, entry in MANIFEST["fixtures"].items():
        for run in entry["runs"]:
            yield pytest.param(name, run, id=f"{name}-run{run}")


def _ort_run(path: pathlib.Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort
    so = ort.SessionOptions()
    # The unoptimised graph is the most faithful reference (no fused kernels, no reordering).
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def test_manifest_lists_files():
    assert MANIFEST["fixtures"], "no fixtures: run scripts/make_tiny_models.py tests/fixtures/models"
    for name, entry in MANIFEST["fixtures"].items():
        assert (FIXTURES / entry["file"]).is_file(), f"{name}: {entry['file']} missing"


@pytest.mark.parametrize("name,run", list(_cases()))
def test_model_matches_onnxruntime(name, run, backend):
    entry = MANIFEST["fixtures"][name]
    path = FIXTURES / entry["file"]
    model = onnx.load(str(path))
    feeds = draw_inputs(entry["inputs"], run, entry["seed"])
    ref = _ort_run(path, feeds)
    got = run_model(model, feeds, backend=backend)
    assert len(got) == len(ref), f"{name}: {len(got)} outputs, expected {len(ref)}"
    for out_name, g, r in zip(entry["outputs"], got, ref):
        g = np.asarray(g)
        assert g.shape == r.shape, f"{name} output {out_name}: shape {g.shape}, expected {r.shape}"
        assert g.dtype == r.dtype, f"{name} output {out_name}: dtype {g.dtype}, expected {r.dtype}"
        if r.dtype.kind != "f":
            np.testing.assert_array_equal(g, r, err_msg=f"{name} output {out_name}")
            continue
        scale = max(1.0, float(np.max(np.abs(r))) if r.size else 1.0)
        err = float(np.max(np.abs(g.astype(np.float64) - r))) if r.size else 0.0
        assert np.isfinite(err) and err <= RTOL * scale, (
            f"{name} output {out_name} {r.shape}: max abs error {err:.3g} > {RTOL:g} * {scale:.3g}")
