"""Calibration for static (W8A8) quantization: the ranges of a model's float activations.

Runs a converted FP32 model with the engine on calibration inputs and records, through the
interpreter's observer hook (``Interpreter.observer``), the values each chosen tensor takes.
Two methods:

- ``minmax``: the exact minimum and maximum over every run (two floats per tensor);
- ``percentile``: [P(100 - p), P(p)] of all the values seen (p = 99.99 by default), read from a
  bounded histogram per tensor (HIST_BINS counts). The histogram's range starts at the first
  batch's extremes and grows by doubling when later values fall outside; doubling merges
  neighbouring bins pairwise, so counts are never re-binned approximately and histograms of
  different runs and samples merge exactly. The trade-off: the percentile is known to one bin
  (range / HIST_BINS; doubling one side at a time leaves the range at most 4x the tensor's
  span, so a bin is below 4 / HIST_BINS of it), and memory is HIST_BINS
  counts per tensor whatever the tensor's or the data set's size.

Calibration data: ``DATA.npz`` whose arrays are named after the model's inputs, with the samples
stacked along a new leading axis, or a folder of ``.npz`` files each holding one input set.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from .errors import InputError

HIST_BINS = 2048
CHUNK_ELEMENTS = 1 << 22    # values histogrammed at a time: bounds the temporaries to ~16 MiB
METHODS = ("minmax", "percentile")


class TensorRange:
    """Running statistics of one tensor: exact min/max, element count, and (percentile) a
    histogram over [lo, lo + width * HIST_BINS) whose range only ever doubles."""

    __slots__ = ("min", "max", "count", "shape", "hist", "lo", "width")

    def __init__(self, with_hist: bool):
        self.min, self.max, self.count, self.shape = math.inf, -math.inf, 0, None
        self.hist = np.zeros(HIST_BINS, np.int64) if with_hist else None
        self.lo, self.width = 0.0, 0.0

    def update(self, a: np.ndarray) -> None:
        a = np.asarray(a)
        if a.size == 0:
            return
        self.shape = tuple(a.shape)
        lo, hi = float(a.min()), float(a.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            finite = a[np.isfinite(a)]
            if finite.size == 0:
                return
            lo, hi = float(finite.min()), float(finite.max())
            a = finite
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += a.size
        if self.hist is not None:
            self._grow(lo, hi)
            flat = a.reshape(-1)
            inv = 1.0 / self.width
            for s in range(0, flat.size, CHUNK_ELEMENTS):
                part = flat[s:s + CHUNK_ELEMENTS]
                idx = ((part - np.float32(self.lo)) * np.float32(inv)).astype(np.int64)
                np.clip(idx, 0, HIST_BINS - 1, out=idx)
                self.hist += np.bincount(idx, minlength=HIST_BINS)

    def _grow(self, lo: float, hi: float) -> None:
        """Make [self.lo, self.lo + width * HIST_BINS) cover [lo, hi], doubling the width and
        merging bins pairwise (exact) as often as needed."""
        if self.width == 0.0:
            span = hi - lo
            # a margin of 1/64 so a slightly larger value later does not double the range at once
            self.width = max(span * (1 + 1 / 64), abs(hi) * 1e-6, 1e-30) / HIST_BINS
            self.lo = lo - span / 128
            return
        while lo < self.lo or hi >= self.lo + self.width * HIST_BINS:
            merged = self.hist.reshape(-1, 2).sum(axis=1)
            self.hist[:] = 0
            if lo < self.lo:             # extend downwards: old range becomes the upper half
                self.hist[HIST_BINS // 2:] = merged
                self.lo -= self.width * HIST_BINS
            else:
                self.hist[:HIST_BINS // 2] = merged
            self.width *= 2

    def merge(self, other: "TensorRange") -> None:
        """Add another run's statistics (histograms aligned by growing both to one grid)."""
        if other.count == 0:
            return
        if self.count == 0:
            self.min, self.max, self.count, self.shape = other.min, other.max, other.count, other.shape
            if self.hist is not None and other.hist is not None:
                self.hist, self.lo, self.width = other.hist.copy(), other.lo, other.width
            return
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        self.count += other.count
        if self.hist is None or other.hist is None:
            return
        o = TensorRange(True)
        o.hist, o.lo, o.width = other.hist.copy(), other.lo, other.width
        # put both on the coarser grid, then re-align its origin: grids of widths w * 2^k whose
        # origins differ by a non-multiple of the width cannot merge exactly, so the finer one is
        # redistributed by bin centre (error at most one bin of the result).
        while o.width < self.width:
            o._double_in_place()
        while self.width < o.width:
            self._double_in_place()
        both_lo = min(self.lo, o.lo)
        both_hi = max(self.lo, o.lo) + self.width * HIST_BINS
        self._grow(both_lo, both_hi - self.width / 2)
        centres = o.lo + (np.arange(HIST_BINS) + 0.5) * o.width
        idx = np.clip(((centres - self.lo) / self.width).astype(np.int64), 0, HIST_BINS - 1)
        np.add.at(self.hist, idx, o.hist)

    def _double_in_place(self) -> None:
        self.hist = np.concatenate([self.hist.reshape(-1, 2).sum(axis=1), np.zeros(HIST_BINS // 2, np.int64)])
        self.width *= 2

    def percentile_range(self, p: float) -> tuple[float, float]:
        """[P(100 - p), P(p)] from the histogram (linear inside a bin), clamped to [min, max]."""
        if self.hist is None:
            raise ValueError("this range was recorded without a histogram (method minmax)")
        cdf = np.cumsum(self.hist)
        total = int(cdf[-1])

        def at(q: float) -> float:
            # np.percentile's definition: the value at sorted index (total - 1) q / 100; the
            # k-th value of a bin holding n is taken at (k + 0.5) / n of its width
            target = q / 100.0 * (total - 1) + 0.5
            i = int(np.searchsorted(cdf, target, side="left"))
            i = min(i, HIST_BINS - 1)
            before = int(cdf[i - 1]) if i else 0
            inside = int(self.hist[i])
            frac = (target - before) / inside if inside else 0.0
            return self.lo + (i + frac) * self.width

        lo, hi = at(100.0 - p), at(p)
        return max(lo, self.min), min(hi, self.max)

    def range(self, method: str, percentile: float) -> tuple[float, float]:
        if method == "minmax":
            return self.min, self.max
        return self.percentile_range(percentile)


@dataclass
class Calibration:
    """The recorded ranges of a calibration: name -> TensorRange, with how they were taken."""
    method: str
    percentile: float
    samples: int = 0
    ranges: dict[str, TensorRange] = field(default_factory=dict)

    def range(self, name: str) -> tuple[float, float]:
        return self.ranges[name].range(self.method, self.percentile)

    def merge(self, other: "Calibration") -> None:
        if other.method != self.method:
            raise ValueError(f"cannot merge a {other.method} calibration into a {self.method} one")
        for name, r in other.ranges.items():
            if name in self.ranges:
                self.ranges[name].merge(r)
            else:
                self.ranges[name] = r
        self.samples += other.samples


# ---------------------------------------------------------------- calibration data

def load_calibration_data(path: str, inputs: list) -> list[dict[str, np.ndarray]]:
    """Input sets from ``path`` (DATA.npz, samples stacked on a new leading axis, or a folder of
    .npz input sets), checked against the model's inputs (ValueInfo list): every input present,
    ranks and static dims as declared, dtypes cast only between float kinds."""
    by_name = {v.name: v for v in inputs}
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".npz"))
        if not files:
            raise InputError(f"calibration folder {path} holds no .npz input sets")
        sets = []
        for f in files:
            with np.load(f, allow_pickle=False) as d:
                sets.append(_check_set({k: d[k] for k in d.files}, by_name, f, stacked=False))
        return sets
    try:
        d = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load calibration data {path}: {e}") from None
    if not hasattr(d, "files"):
        raise InputError(f"calibration data {path}: expected an .npz with one array per model input "
                         f"({', '.join(by_name)}), got a single .npy array")
    with d:
        arrays = {k: d[k] for k in d.files}
    stacked = _check_set(arrays, by_name, path, stacked=True)
    counts = {k: a.shape[0] for k, a in stacked.items()}
    if len(set(counts.values())) != 1:
        raise InputError(f"calibration data {path}: inputs stack different sample counts {counts}")
    n = next(iter(counts.values()))
    if n == 0:
        raise InputError(f"calibration data {path}: no samples (leading axis of length 0)")
    return [{k: a[i] for k, a in stacked.items()} for i in range(n)]


def _check_set(arrays: dict, by_name: dict, where: str, stacked: bool) -> dict[str, np.ndarray]:
    missing = [n for n in by_name if n not in arrays]
    if missing:
        raise InputError(f"calibration data {where}: missing input(s) {missing}; it holds "
                         f"{sorted(arrays)}, the model's inputs are {list(by_name)}")
    unknown = sorted(set(arrays) - set(by_name))
    if unknown:
        raise InputError(f"calibration data {where}: array(s) {unknown} are not inputs of the model "
                         f"(its inputs: {list(by_name)})")
    out = {}
    for name, v in by_name.items():
        a = arrays[name]
        lead = 1 if stacked else 0
        if v.shape is not None:
            want = len(v.shape) + lead
            if a.ndim != want:
                how = "samples stacked on a new leading axis: " if stacked else ""
                raise InputError(f"calibration data {where}: input {name!r} has shape {list(a.shape)}, "
                                 f"expected rank {want} ({how}[{'n, ' if stacked else ''}"
                                 f"{', '.join(str(d) for d in v.shape)}])")
            for axis, d in enumerate(v.shape):
                if isinstance(d, int) and a.shape[axis + lead] != d:
                    raise InputError(f"calibration data {where}: input {name!r} has shape {list(a.shape)}, "
                                     f"dim {axis + lead} must be {d}")
        if a.dtype != v.dtype:
            if a.dtype.kind == "f" and np.dtype(v.dtype).kind == "f":
                a = a.astype(v.dtype)
            else:
                raise InputError(f"calibration data {where}: input {name!r} is {a.dtype.name}, "
                                 f"the model expects {np.dtype(v.dtype).name}")
        out[name] = a
    return out


# ---------------------------------------------------------------- running

def _float_outputs(node, result) -> Iterator[tuple[str, np.ndarray]]:
    for name, value in zip(node.outputs, result):
        if name and isinstance(value, np.ndarray) and value.dtype == np.float32:
            yield name, value


def observe(model, samples: list[dict[str, np.ndarray]], record: Callable[[str, np.ndarray], None],
            wanted: set[str] | None = None, feeds_too: bool = True) -> None:
    """Run ``model`` on each sample, calling ``record(name, array)`` for every float32 output
    of an op (and feed) whose name is in ``wanted`` (None: all)."""
    interp = model._interpreter

    def hook(node, result):
        for name, value in _float_outputs(node, result):
            if wanted is None or name in wanted:
                record(name, value)

    interp.observer = hook
    try:
        for feeds in samples:
            if feeds_too:
                for name, a in feeds.items():
                    if a.dtype == np.float32 and (wanted is None or name in wanted):
                        record(name, a)
            model.run(feeds)
    finally:
        interp.observer = None


def calibrate(model, samples: list[dict[str, np.ndarray]], method: str = "percentile",
              percentile: float = 99.99, wanted: set[str] | None = None, log=None) -> Calibration:
    """Ranges of the float activations of ``model`` (a Model, FP32) over ``samples``."""
    if method not in METHODS:
        raise ValueError(f"calibration method {method!r}: choose one of {', '.join(METHODS)}")
    if not 50.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (50, 100], got {percentile}")
    cal = Calibration(method, percentile)

    def record(name: str, a: np.ndarray) -> None:
        r = cal.ranges.get(name)
        if r is None:
            r = cal.ranges[name] = TensorRange(with_hist=method == "percentile")
        r.update(a)

    for i, feeds in enumerate(samples):
        observe(model, [feeds], record, wanted)
        cal.samples += 1
        if log:
            log(f"calibration sample {i + 1}/{len(samples)}: {len(cal.ranges)} tensors")
    return cal
