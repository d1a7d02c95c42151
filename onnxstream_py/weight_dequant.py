"""Weights stored as 8-bit integers, served to the ops as float32: the fetch side of w8a32.

A w8a32 model (and the weights of a QDQ model that no int8 kernel takes) stores a Conv/MatMul/
Gemm weight W as an int8 weight plus ``W = DequantizeLinear(W_quantized, W_scale, W_zero_point)``.
Run as written, that DequantizeLinear would make W an activation: a full float32 copy alive
until its reader, no chunked reads, no operator cache. Instead the plan
(plan.plan_weight_dequant) drops such a node and declares W a weight that the interpreter
fetches through ``DequantProvider``: the op sees an ordinary float weight, read just before it
and released right after, and with a provider that reads row ranges (DiskNoCache) a large W
is read and dequantized one chunk of rows at a time. Trade-off: a weight read by several ops
is dequantized once per read (the int8 bytes are a quarter of the float ones, and the C
kernel runs at memory speed), and the float copy is never kept.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .graph import Graph, WeightDecl
from .ops import quant


@dataclass(frozen=True)
class DequantWeight:
    name: str                 # the float32 weight the ops read (the DequantizeLinear's output)
    source: str               # the 8-bit weight in weights.bin, same shape
    scale: str                # float32 scale: a const or a weight, one element or [shape[axis]]
    zero_point: str           # "" or a const / weight of the source's dtype, shaped like scale
    axis: int                 # non-negative quantization axis
    shape: tuple[int, ...]

    def sources(self, graph: Graph) -> list[str]:
        """The stored weights one fetch reads, in request order."""
        return [n for n in (self.source, self.scale, self.zero_point) if n and n in graph.weights]


def graph_view(graph: Graph, dequant: dict[str, DequantWeight]) -> Graph:
    """``graph`` (shallow copy) with each dequantized weight declared as a float32 weight."""
    extra = {n: WeightDecl(n, np.dtype(np.float32), d.shape, np.dtype(np.float32)) for n, d in dequant.items()}
    return replace(graph, weights={**graph.weights, **extra})


class DequantProvider:
    """Wraps a WeightsProvider: the names in ``dequant`` are served dequantized (whole or by
    rows); every other name and hook passes through to ``inner``."""

    def __init__(self, inner, dequant: dict[str, DequantWeight], graph: Graph, ctx=None):
        self._inner = inner
        self._dequant = dequant
        self._graph = graph
        self._ctx = ctx

    def __getattr__(self, attr):            # reads_row_ranges, index, plan, restart, close, ...
        return getattr(self._inner, attr)

    def _param(self, name: str) -> np.ndarray | None:
        if not name:
            return None
        if name in self._graph.consts:
            return self._graph.consts[name]
        a = np.array(self._inner.get(name))   # a few bytes per channel: copied, released at once
        self._inner.release(name)
        return a

    def _dequantize(self, d: DequantWeight, q: np.ndarray, scale, zp) -> np.ndarray:
        scale = np.asarray(scale)
        zp = None if zp is None else np.asarray(zp)
        if (self._ctx is not None and q.dtype in (np.int8, np.uint8) and scale.dtype == np.float32
                and q.flags.c_contiguous and (zp is None or zp.dtype == q.dtype)):
            from . import native
            return native.dequantize_8bit_f32(q, scale.reshape(-1), None if zp is None else zp.reshape(-1),
                                              d.axis, pool=self._ctx.pool)
        return quant.dequantize(q, scale, zp, axis=d.axis, out_dtype=np.float32,
                                name=f"DequantizeLinear of weight {d.name!r}")

    def get(self, name: str) -> np.ndarray:
        d = self._dequant.get(name)
        if d is None:
            return self._inner.get(name)
        q = self._inner.get(d.source)
        try:
            return self._dequantize(d, q, self._param(d.scale), self._param(d.zero_point))
        finally:
            del q
            self._inner.release(d.source)

    def get_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        d = self._dequant.get(name)
        if d is None:
            return self._inner.get_rows(name, rows)
        rows = np.asarray(rows, dtype=np.int64)
        flat = rows.reshape(-1)          # rows of axis 0, so the quantization axis keeps its index
        q = self._inner.get_rows(d.source, flat)
        scale, zp = self._param(d.scale), self._param(d.zero_point)
        if d.axis == 0 and np.size(scale) > 1:     # per output channel: the rows' own scales
            scale = np.asarray(scale).reshape(-1)[flat]
            zp = None if zp is None else np.asarray(zp).reshape(-1)[flat]
        y = self._dequantize(d, np.ascontiguousarray(q), scale, zp)
        return y.reshape(rows.shape + tuple(d.shape[1:]))

    def release(self, name: str) -> None:
        if name not in self._dequant:        # a dequantized weight's sources were released in get
            self._inner.release(name)

    def drop(self, name: str) -> None:
        d = self._dequant.get(name)
        for n in ([d.source] if d is not None else [name]):
            self._inner.drop(n)
