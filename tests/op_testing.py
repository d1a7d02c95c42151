"""Shared comparison for the single-op parity tests: tolerance by dtype (STYLE item 12).

FP32/FP64 outputs use allclose with explicit rtol/atol; FP16 outputs use NMSE (over the
finite elements when asked) and optionally an allclose at FP16 resolution; integer and bool
outputs must be equal.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort


def ort_outputs(model, feeds: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def assert_matches(got: np.ndarray, want: np.ndarray, rtol: float, atol: float, *,
                   fp16_nmse: float = 1e-6, fp16_tol: float | None = None, finite_only: bool = False) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    if want.dtype == np.float16:
        g32, w32 = got.astype(np.float32), want.astype(np.float32)
        keep = np.isfinite(w32) if finite_only else np.ones(w32.shape, bool)
        nmse = np.sum((g32[keep] - w32[keep]) ** 2) / max(np.sum(w32[keep] ** 2), 1e-30)
        assert nmse < fp16_nmse, nmse
        if fp16_tol is not None:
            np.testing.assert_allclose(g32, w32, rtol=fp16_tol, atol=fp16_tol)
    elif want.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    else:
        np.testing.assert_array_equal(got, want)


def rand_f32(shape, seed=0, loc=0.0, scale=1.0) -> np.ndarray:
    """Seeded normal float32 values (``loc + scale * N(0, 1)``) for kernel tests."""
    return (np.random.default_rng(seed).standard_normal(shape) * scale + loc).astype(np.float32)
