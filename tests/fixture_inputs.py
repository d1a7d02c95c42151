"""Seeded inputs of the tiny model fixtures, shared by scripts/make_tiny_models.py (which
checks each export against torch with them) and tests/test_models.py (which feeds them to
onnxruntime and the engine), so the two can never draw different inputs.
"""
from __future__ import annotations

import zlib

import numpy as np


def draw_inputs(specs: list[dict], run: int, seed: int) -> dict[str, np.ndarray]:
    """Inputs for run ``run`` (0: the export's own shapes, 1: the second size)."""
    rng = np.random.default_rng(seed + run)
    feeds = {}
    for s in specs:
        shape = tuple(s["shapes"][run])
        if s["kind"] == "int":
            v = rng.integers(int(s["low"]), int(s["high"]), size=shape)
        elif s["kind"] == "uniform":
            v = rng.uniform(s["low"], s["high"], size=shape)
        elif s["kind"] == "mask":
            v = np.ones(shape)
            v[0, -2:] = 0
        else:
            v = rng.standard_normal(shape)
        feeds[s["name"]] = np.asarray(v, dtype=np.dtype(s["dtype"]))
    return feeds


def seed_of(name: str) -> int:
    """A fixture's seed, derived from its name."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF
