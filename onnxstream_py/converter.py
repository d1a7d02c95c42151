"""ONNX model -> streaming format (graph.txt + weights.bin), one tensor at a time.

The converter is the only part of the engine that imports onnx. It keeps the model's
dynamic dimensions, folds Constant nodes and every constant subgraph with the engine's
own ops (so no onnx-simplifier step is needed), folds shape arithmetic where shapes are
static (all of it once ``fix_shapes`` pins the inputs), drops dead nodes, and writes the
weights in order of first use. Initializers held as external data are read one at a time
from their data file, so peak memory stays near the largest tensor, not the model size.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from weights_providers.format import WEIGHTS_FILE, WeightsWriter

from . import ops
from .dtypes import numpy_to_onnx, onnx_to_numpy
from .errors import ConversionError
from .graph import GRAPH_FILE, Graph, Node, ValueInfo, WeightDecl, write_graph

INLINE_MAX_ELEMENTS = 16          # constants this small are written into graph.txt
SPILL_BYTES = 1 << 20             # folded results larger than this wait on disk, not in RAM
INFER_MAX_ROUNDS = 8              # shape-inference/fold rounds before giving up on a fixpoint
NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                    "Multinomial", "Bernoulli"}
FP16_MAX = 65504.0
# fp16-storage keeps tensors under this many elements in float32 (biases, norm scales and
# shifts, the timestep embedding's frequency table: ~1 MiB of the SD 1.5 UNet's 3.3 GB). The table
# decides it: sin(999 * f) with f rounded to float16 moves the argument by up to ~0.5 rad. With
# every tensor in float16 the UNet's output NMSE vs FP32 was 1.9e-5; with these kept, 3.7e-7
# (measured on the synthetic SD 1.5 UNet at 64x64 latents).
FP16_MIN_ELEMENTS = 4096
# --precision: what convert stores (graph.PRECISIONS; w8a8 is --quantize's). See docs/FORMAT.md.
CONVERT_PRECISIONS = ("fp32", "fp16-storage", "w8a32")
# w8a32: linear-op weights with fewer elements stay float32 (int8 would save a few KiB and
# cost a DequantizeLinear each); also keeps biases, norms and small projections exact.
W8_MIN_ELEMENTS = 4096
W8_MAX = 127          # symmetric int8 range [-127, 127] (XNNPACK's qc8 weights use the same)


@dataclass
class ConvertReport:
    nodes_in: int = 0
    nodes_out: int = 0
    folded: int = 0
    weights: int = 0
    weight_bytes: int = 0
    inline_consts: int = 0
    seconds: float = 0.0
    unsupported: list[str] = field(default_factory=list)

    def summary(self) -> str:
        s = (f"{self.nodes_in} nodes -> {self.nodes_out} after folding {self.folded}; "
             f"{self.weights} weights ({self.weight_bytes / 2**20:.1f} MiB), "
             f"{self.inline_consts} inline constants; {self.seconds:.1f} s")
        if self.unsupported:
            s += "\nwarning: ops the engine does not support yet: " + ", ".join(self.unsupported)
        return s


# ---------------------------------------------------------------- constant values

class _Const:
    """A constant tensor: its dtype/shape now, its value on demand (loaded, kept, or spilled)."""

    __slots__ = ("dtype", "shape", "_load", "_value")

    def __init__(self, dtype: np.dtype, shape: tuple[int, ...], load: Callable[[], np.ndarray] | None = None,
                 value: np.ndarray | None = None):
        self.dtype, self.shape, self._load, self._value = np.dtype(dtype), tuple(shape), load, value

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def value(self) -> np.ndarray:
        if self._value is not None:
            return self._value
        v = self._load()
        if self.size * self.dtype.itemsize <= SPILL_BYTES:
            self._value = v     # small: keep it, folding may read it many times
        return v


def _initializer_const(t: onnx.TensorProto, base_dir: str) -> _Const:
    try:
        dtype = onnx_to_numpy(t.data_type)
    except TypeError as e:
        raise ConversionError(f"initializer {t.name!r}: {e}") from None
    shape = tuple(int(d) for d in t.dims)
    if t.data_location == onnx.TensorProto.EXTERNAL:
        info = {e.key: e.value for e in t.external_data}
        path = os.path.join(base_dir, info["location"])
        offset = int(info.get("offset", 0))
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count * dtype.itemsize
        if "length" in info and int(info["length"]) < nbytes:
            raise ConversionError(f"initializer {t.name!r}: external data length {info['length']} "
                                  f"< {nbytes} bytes needed for {dtype.name}{list(shape)}")

        def load(path=path, offset=offset, count=count):
            try:
                a = np.fromfile(path, dtype=dtype.newbyteorder("<"), count=count, offset=offset)
            except OSError as e:
                raise ConversionError(f"initializer {t.name!r}: cannot read {path}: {e}") from None
            if a.size != count:
                raise ConversionError(f"initializer {t.name!r}: {path} is truncated "
                                      f"(read {a.size} of {count} elements at offset {offset})")
            return a.astype(dtype, copy=False).reshape(shape)

        return _Const(dtype, shape, load)
    def load_inline(t=t):
        value = numpy_helper.to_array(t)
        return (value if value.dtype == dtype else value.astype(dtype)).reshape(shape)

    # Decoded on demand: a large inline initializer exists twice (proto bytes + array) only
    # while it is folded or written, not for the whole conversion.
    return _Const(dtype, shape, load=load_inline)


def _spill(value: np.ndarray, tmp_dir: str, key: int) -> _Const:
    if value.nbytes <= SPILL_BYTES:
        return _Const(value.dtype, value.shape, value=value)
    path = os.path.join(tmp_dir, f"{key}.npy")
    np.save(path, value)
    return _Const(value.dtype, value.shape, load=lambda: np.load(path))


# ---------------------------------------------------------------- attributes

def _attrs(node: onnx.NodeProto, base_dir: str = "") -> dict:
    """A node's attributes as Python values. Tensor attributes may hold external data (optimum's
    SD export keeps Constant values in unet/model.onnx_data): read from base_dir, where onnx
    checks that the location stays inside it."""
    out = {}
    for a in node.attribute:
        if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            raise ConversionError(f"node {node.name!r} ({node.op_type}): attribute {a.name!r} holds a "
                                  f"subgraph; control flow is not supported")
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8")
        elif isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v, base_dir)
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [s.decode("utf-8") for s in v]
        elif isinstance(v, list) and v and isinstance(v[0], onnx.TensorProto):
            v = [numpy_helper.to_array(x, base_dir) for x in v]
        out[a.name] = v
    return out


def _constant_node_value(node: Node) -> np.ndarray:
    a = node.attrs
    if "value" in a:
        return np.asarray(a["value"])
    if "value_float" in a:
        return np.array(a["value_float"], dtype=np.float32)
    if "value_floats" in a:
        return np.array(a["value_floats"], dtype=np.float32)
    if "value_int" in a:
        return np.array(a["value_int"], dtype=np.int64)
    if "value_ints" in a:
        return np.array(a["value_ints"], dtype=np.int64)
    raise ConversionError(f"Constant node {node.name!r}: unsupported attribute(s) {sorted(a)}")


# ---------------------------------------------------------------- value infos

def _value_info(vi: onnx.ValueInfoProto, fixed: dict[str, list[int]] | None = None) -> ValueInfo:
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise ConversionError(f"graph value {vi.name!r} is not a tensor (sequences/maps are not supported)")
    try:
        dtype = onnx_to_numpy(tt.elem_type)
    except TypeError as e:
        raise ConversionError(f"graph input/output {vi.name!r}: {e}") from None
    if fixed and vi.name in fixed:
        return ValueInfo(vi.name, dtype, tuple(fixed[vi.name]))
    if not tt.HasField("shape"):
        return ValueInfo(vi.name, dtype, None)
    dims = []
    for i, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.dim_param:
            dims.append(re.sub(r"[^A-Za-z0-9_.]", "_", d.dim_param))
        else:
            dims.append(f"{vi.name.replace(',', '_')}_d{i}")
    return ValueInfo(vi.name, dtype, tuple(dims))


# ---------------------------------------------------------------- converter

def resolve_precision(precision: str | None, fp16: bool) -> str:
    """The convert precision from ``precision`` and the older ``fp16`` flag (its alias)."""
    if fp16:
        if precision not in (None, "fp16-storage"):
            raise ConversionError(f"--fp16 (= --precision fp16-storage) contradicts --precision {precision}")
        return "fp16-storage"
    precision = precision or "fp32"
    if precision not in CONVERT_PRECISIONS:
        raise ConversionError(f"convert precision {precision!r} is not one of {', '.join(CONVERT_PRECISIONS)}"
                              f"{' (w8a8 is --quantize w8a8 --calibration ...)' if precision == 'w8a8' else ''}")
    return precision


def quantize_weight_int8(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel int8 of float w along ``axis`` (w8a32, docs/FORMAT.md "Precision"):
    (q int8 like w, scale float32 [w.shape[axis]]), scale = max|w| / 127 per channel (1 for an
    all-zero channel), q = clip(round_half_even(w / scale), -127, 127)."""
    w = np.asarray(w, dtype=np.float32)
    axis %= w.ndim
    other = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.max(np.abs(w), axis=other) if other else np.abs(w)
    scale = np.where(amax > 0, amax / np.float32(W8_MAX), np.float32(1.0)).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -W8_MAX, W8_MAX).astype(np.int8)
    return q, scale


def _linear_weight_axis(node: Node, rank: int) -> int | None:
    """The output-channel axis of input 1 of a Conv / MatMul / Gemm (None for other ops)."""
    if node.domain != "" or rank < 2:
        return None
    if node.op_type == "Conv":
        return 0
    if node.op_type == "MatMul":
        return rank - 1
    if node.op_type == "Gemm" and rank == 2:
        return 0 if node.attrs.get("transB", 0) else 1
    return None


class _Converter:
    def __init__(self, model: onnx.ModelProto, base_dir: str, precision: str,
                 fix_shapes: dict[str, list[int]] | None, log):
        self.log = log
        self.precision = precision
        self.fp16 = precision == "fp16-storage"
        self.report = ConvertReport(nodes_in=len(model.graph.node))
        if model.functions:
            from onnx import inliner
            model = inliner.inline_local_functions(model)
        self.opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}
        g = model.graph
        self.consts: dict[str, _Const] = {}
        for t in g.initializer:
            self.consts[t.name] = _initializer_const(t, base_dir)
        for t in g.sparse_initializer:
            raise ConversionError(f"sparse initializer {t.values.name!r} is not supported")
        self.fixed = self._check_fix_shapes(g, dict(fix_shapes or {}))
        self.inputs = [_value_info(vi, self.fixed) for vi in g.input if vi.name not in self.consts]
        self.outputs = [_value_info(vi) for vi in g.output]
        self.nodes: list[Node] = []
        seen_names: set[str] = set()
        for i, n in enumerate(g.node):
            name = n.name or f"{n.op_type}_{i}"
            if name in seen_names:
                name = f"{name}__{i}"
            seen_names.add(name)
            self.nodes.append(Node(n.op_type, name, list(n.input), list(n.output), _attrs(n, base_dir),
                                   "" if n.domain == "ai.onnx" else n.domain))
        self.tmp_dir = tempfile.mkdtemp(prefix="onnxstream-convert-")
        self._spills = 0

    def _check_fix_shapes(self, g: onnx.GraphProto, fix: dict[str, list[int]]) -> dict[str, list[int]]:
        inputs = {vi.name: vi for vi in g.input if vi.name not in self.consts}
        for name, want in fix.items():
            if name not in inputs:
                raise ConversionError(f"--fix-shape {name}: the model has no input {name!r} "
                                      f"(inputs: {', '.join(inputs)})")
            declared = inputs[name].type.tensor_type.shape.dim
            if len(declared) != len(want):
                raise ConversionError(f"--fix-shape {name}: rank {len(want)} given, the input has "
                                      f"rank {len(declared)}")
            for i, (d, w) in enumerate(zip(declared, want)):
                if d.HasField("dim_value") and d.dim_value != w:
                    raise ConversionError(f"--fix-shape {name}: dim {i} is {d.dim_value} in the model, "
                                          f"{w} given")
        return fix

    # ---- folding
    def _opset(self, domain: str) -> int:
        return self.opsets.get(domain, 1)

    def _set_const(self, name: str, value: np.ndarray) -> None:
        self._spills += 1
        self.consts[name] = _spill(np.asarray(value), self.tmp_dir, self._spills)

    def _try_fold(self, node: Node, shapes: dict[str, tuple]) -> bool:
        if node.op_type == "Constant" and node.domain == "":
            self._set_const(node.outputs[0], _constant_node_value(node))
            return True
        if node.op_type in NONDETERMINISTIC or node.domain not in ("",):
            return False
        if (node.op_type == "DequantizeLinear" and node.inputs[0] in self.consts
                and self.consts[node.inputs[0]].size > INLINE_MAX_ELEMENTS):
            return False      # a QDQ model's int8 weight stays int8 (4x smaller; int8 kernels read it)
        if node.op_type in ("Shape", "Size") and node.inputs[0] not in self.consts:
            shape = shapes.get(node.inputs[0])
            if shape is None or any(not isinstance(d, int) for d in shape):
                return False
            full = np.array(shape, dtype=np.int64)
            if node.op_type == "Size":
                self._set_const(node.outputs[0], np.array(int(np.prod(full)), dtype=np.int64))
                return True
            impl = ops.lookup("Shape", self._opset(""))
            if impl is None:
                return False
            dummy = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape=tuple(shape),
                                                    strides=(0,) * len(shape))
            self._set_const(node.outputs[0], impl.fn(dummy, **node.attrs))
            return True
        if node.op_type in ("Gather", "Slice") and node.inputs[0] in self._shape_of:
            return self._fold_shape_part(node, shapes)
        if not all((not n) or n in self.consts for n in node.inputs):
            return False
        impl = ops.lookup(node.op_type, self._opset(node.domain), node.domain)
        if impl is None:
            return False
        args = [self.consts[n].value() if n else None for n in node.inputs]
        kw = dict(node.attrs)
        if impl.wants_noutputs:
            kw["_noutputs"] = len(node.outputs)
        in_bytes = sum(a.nbytes for a in args if a is not None)
        try:
            with np.errstate(all="ignore"):
                res = impl.fn(*args, **kw)
        except Exception as e:  # noqa: BLE001  an op that fails on constants fails at run time too
            self.log(f"note: could not fold {node.op_type} {node.name!r}: {e}")
            return False
        res = res if isinstance(res, (tuple, list)) else (res,)
        out_bytes = sum(np.asarray(r).nbytes for r in res)
        if out_bytes > 2 * in_bytes + 65536:
            return False          # e.g. Expand/ConstantOfShape to a big tensor: cheaper to compute
        for name, r in zip(node.outputs, res):
            if name:
                r = np.asarray(r)
                # a view (Reshape, Slice, ...) would keep its whole base alive: own the data
                self._set_const(name, r.copy() if r.base is not None else r)
        return True

    def _fold_shape_part(self, node: Node, shapes: dict[str, tuple]) -> bool:
        """Gather/Slice of a Shape whose picked dimensions are static folds, even when other
        dimensions are dynamic: exporters compute e.g. the GEGLU split point as
        Shape(x)[-1] // 2 (the UNet's feed-forward), and a constant split point lets the plan
        fuse that projection (plan.fuse_geglu_linear)."""
        if not all((not n) or n in self.consts for n in node.inputs[1:]):
            return False
        shape_node = self._shape_of[node.inputs[0]]
        shape = shapes.get(shape_node.inputs[0])
        if shape is None:
            return False
        rank = len(shape)
        start, end = shape_node.attrs.get("start", 0), shape_node.attrs.get("end", rank)
        start, end = (max(0, min(rank, v + rank if v < 0 else v)) for v in (start, end))
        # the Shape output as positions into x's dims; fold when every picked one is static
        positions = np.arange(start, end, dtype=np.int64)
        impl = ops.lookup(node.op_type, self._opset(node.domain), node.domain)
        if impl is None:
            return False
        args = [positions] + [self.consts[n].value() if n else None for n in node.inputs[1:]]
        try:
            picked = np.asarray(impl.fn(*args, **node.attrs))
        except Exception:  # noqa: BLE001  left for run time, which reports it
            return False
        dims = [shape[int(p)] for p in picked.reshape(-1)]
        if any(not isinstance(d, int) for d in dims):
            return False
        self._set_const(node.outputs[0], np.array(dims, dtype=np.int64).reshape(picked.shape))
        return True

    def _fold_pass(self, shapes: dict[str, tuple]) -> bool:
        self._shape_of = {n.outputs[0]: n for n in self.nodes
                          if n.op_type == "Shape" and n.domain == "" and n.inputs[0] not in self.consts}
        kept, folded = [], 0
        for node in self.nodes:
            if self._try_fold(node, shapes):
                folded += 1
            else:
                kept.append(node)
        self.nodes = kept
        self.report.folded += folded
        return folded > 0

    def _infer_shapes(self) -> dict[str, tuple]:
        """Static shapes of the remaining graph's values via onnx shape inference."""
        graph_inputs, inits = [], []
        used = {n for node in self.nodes for n in node.inputs if n}
        for name in used:
            c = self.consts.get(name)
            if c is None:
                continue
            if c.size <= 4096:
                inits.append(numpy_helper.from_array(np.ascontiguousarray(c.value()), name))
            else:
                graph_inputs.append(onnx.helper.make_tensor_value_info(name, numpy_to_onnx(c.dtype),
                                                                       list(c.shape)))
        for v in self.inputs:
            graph_inputs.append(onnx.helper.make_tensor_value_info(
                v.name, numpy_to_onnx(v.dtype),
                None if v.shape is None else [d if isinstance(d, int) else str(d) for d in v.shape]))
        nodes = [onnx.helper.make_node(n.op_type, n.inputs, n.outputs, name=n.name, domain=n.domain)
                 for n in self.nodes]
        for proto_node, n in zip(nodes, self.nodes):
            for k, v in n.attrs.items():
                proto_node.attribute.append(onnx.helper.make_attribute(k, v))
        g = onnx.helper.make_graph(nodes, "g", graph_inputs, [], initializer=inits)
        m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid(d, v)
                                                     for d, v in self.opsets.items()])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                inferred = shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
        except Exception as e:  # noqa: BLE001  inference is an optimisation, never required
            self.log(f"note: shape inference failed ({e}); shape arithmetic stays dynamic")
            return {}
        shapes: dict[str, tuple] = {}
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
            tt = vi.type.tensor_type
            if tt.HasField("shape"):
                shapes[vi.name] = tuple(int(d.dim_value) if d.HasField("dim_value") else None
                                        for d in tt.shape.dim)
        return shapes

    def fold(self) -> None:
        self._fold_pass({})
        for _ in range(INFER_MAX_ROUNDS):
            if not any(n.op_type in ("Shape", "Size") for n in self.nodes):
                break
            if not self._fold_pass(self._infer_shapes()):
                break

    def prune(self) -> None:
        """Drop nodes whose outputs nothing needs (dead after folding)."""
        needed = {v.name for v in self.outputs}
        kept = []
        for node in reversed(self.nodes):
            if any(o in needed for o in node.outputs if o):
                kept.append(node)
                needed.update(n for n in node.inputs if n)
        self.nodes = kept[::-1]

    # ---- w8a32
    def quantize_weights(self) -> int:
        """w8a32: each large float32 weight read only as input 1 of Conv/MatMul/Gemm (with one
        output-channel axis for all its readers) becomes int8 + DequantizeLinear, the
        DequantizeLinear placed just before its first reader. The int8 values are computed
        when written (write), one weight at a time. Returns the number of weights quantized."""
        readers: dict[str, list[tuple[int, Node, int]]] = {}
        for i, node in enumerate(self.nodes):
            for j, name in enumerate(node.inputs):
                if name in self.consts:
                    readers.setdefault(name, []).append((i, node, j))
        graph_outputs = {v.name for v in self.outputs}
        self._w8: dict[str, tuple[_Const, int]] = {}   # int8 weight name -> (float weight, axis)
        if self._opset("") < 13:
            # per-axis DequantizeLinear arrived in opset 13; raising the model's opset would
            # change other ops' meaning (Squeeze, Split, ReduceSum take axes as inputs from 13)
            raise ConversionError(f"--precision w8a32 needs opset >= 13 (per-axis DequantizeLinear); "
                                  f"this model is opset {self._opset('')}")
        insert_at: dict[int, list[Node]] = {}
        for name, uses in readers.items():
            c = self.consts[name]
            if c.dtype != np.float32 or c.size < W8_MIN_ELEMENTS or name in graph_outputs:
                continue
            axes = {_linear_weight_axis(node, len(c.shape)) if j == 1 else None for _, node, j in uses}
            if len(axes) != 1 or None in axes:
                continue
            axis = axes.pop()
            q_name, s_name, z_name = f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"
            if any(n in self.consts for n in (q_name, s_name, z_name)):
                continue       # a model that already has these names: leave that weight float
            cout = c.shape[axis]
            self.consts[q_name] = _Const(np.int8, c.shape, load=lambda: None)   # filled in write()
            self.consts[s_name] = _Const(np.float32, (cout,), load=lambda: None)
            self.consts[z_name] = _Const(np.int8, (cout,), value=np.zeros(cout, np.int8))
            self._w8[q_name] = (self.consts.pop(name), axis)    # name is now DequantizeLinear's output
            first = min(i for i, _, _ in uses)
            insert_at.setdefault(first, []).append(
                Node("DequantizeLinear", f"{name}_DequantizeLinear", [q_name, s_name, z_name], [name],
                     {"axis": axis}))
        nodes = []
        for i, node in enumerate(self.nodes):
            nodes.extend(insert_at.get(i, ()))
            nodes.append(node)
        self.nodes = nodes
        return len(self._w8)

    def _quantized_value(self, name: str, cache: dict) -> np.ndarray:
        """The int8 weight or its scale, quantizing the float weight once for both."""
        if name not in cache:
            cache.clear()
            q_name = name if name in self._w8 else name[:-len("_scale")] + "_quantized"
            source, axis = self._w8[q_name]
            q, scale = quantize_weight_int8(source.value(), axis)
            cache[q_name], cache[q_name[:-len("_quantized")] + "_scale"] = q, scale
        return cache[name]

    # ---- writing
    def write(self, out_dir: str) -> ConvertReport:
        os.makedirs(out_dir, exist_ok=True)
        self._w8 = getattr(self, "_w8", {})
        w8_values = {n[:-len("_quantized")] + "_scale" for n in self._w8} | set(self._w8)
        w8_cache: dict[str, np.ndarray] = {}
        order: list[str] = []
        seen: set[str] = set()
        for node in self.nodes:
            for n in node.inputs:
                if n and n in self.consts and n not in seen:
                    seen.add(n)
                    order.append(n)
        for v in self.outputs:
            if v.name in self.consts and v.name not in seen:
                seen.add(v.name)
                order.append(v.name)
        for n in order:          # a small w8a32 scale goes inline: compute it now
            if n in w8_values and self.consts[n].size <= INLINE_MAX_ELEMENTS:
                self.consts[n] = _Const(np.float32, self.consts[n].shape, value=self._quantized_value(n, w8_cache))
        inline = [n for n in order if self.consts[n].size <= INLINE_MAX_ELEMENTS]
        weights = [n for n in order if self.consts[n].size > INLINE_MAX_ELEMENTS]
        if self.fp16:
            stored = {n: self._fp16_ok(n) for n in weights}
        else:
            stored = {n: self.consts[n].dtype for n in weights}
        specs = [(n, stored[n], self.consts[n].shape) for n in weights]
        weights_path = os.path.join(out_dir, WEIGHTS_FILE)
        writer = WeightsWriter(weights_path, specs)
        try:
            for n in weights:
                value = self._quantized_value(n, w8_cache) if n in w8_values else self.consts[n].value()
                writer.write(n, value.astype(stored[n], copy=False))
            writer.close()
        except BaseException:
            writer.abort()
            raise
        graph = Graph(
            opsets=dict(self.opsets),
            inputs=self.inputs,
            outputs=self.outputs,
            consts={n: self.consts[n].value() for n in inline},
            weights={n: WeightDecl(n, self.consts[n].dtype, self.consts[n].shape, stored[n]) for n in weights},
            nodes=self.nodes,
            comments=[f"converted by onnxstream_py{'' if self.precision == 'fp32' else ' --precision ' + self.precision}; "
                      f"{len(self.nodes)} ops, {len(weights)} weights in {WEIGHTS_FILE}"],
            precision=self.precision,
        )
        write_graph(graph, os.path.join(out_dir, GRAPH_FILE))
        r = self.report
        r.nodes_out = len(self.nodes)
        r.weights = len(weights)
        r.weight_bytes = sum(e.nbytes for e in writer.entries.values())
        r.inline_consts = len(inline)
        r.unsupported = sorted({n.op_type for n in self.nodes
                                if ops.lookup(n.op_type, self._opset(n.domain), n.domain) is None})
        return r

    def _fp16_ok(self, name: str) -> np.dtype:
        """float32 weights are stored as float16 unless a finite value would overflow or the
        tensor is small (FP16_MIN_ELEMENTS)."""
        c = self.consts[name]
        if c.dtype != np.float32 or c.size < FP16_MIN_ELEMENTS:
            return c.dtype
        v = c.value()
        finite = v[np.isfinite(v)]
        if finite.size and float(np.abs(finite).max()) > FP16_MAX:
            self.log(f"note: {name!r} keeps float32 (values beyond float16's range)")
            return c.dtype
        return np.dtype(np.float16)

    def cleanup(self) -> None:
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def convert_model_proto(model: onnx.ModelProto, out_dir: str, base_dir: str = ".", fp16: bool = False,
                        fix_shapes: dict[str, list[int]] | None = None, log=None,
                        precision: str | None = None) -> ConvertReport:
    """Convert an in-memory ModelProto (external data, if any, resolved against base_dir).
    ``precision``: "fp32" (default), "fp16-storage" (``fp16=True`` is its alias) or "w8a32"."""
    t0 = time.perf_counter()
    conv = _Converter(model, base_dir, resolve_precision(precision, fp16), fix_shapes, log or (lambda m: None))
    try:
        conv.fold()
        conv.prune()
        if conv.precision == "w8a32":
            conv.quantize_weights()
        report = conv.write(out_dir)
    finally:
        conv.cleanup()
    report.seconds = time.perf_counter() - t0
    return report


def convert(model_path: str, out_dir: str, fp16: bool = False,
            fix_shapes: dict[str, list[int]] | None = None, log=_stderr, quantize=None,
            precision: str | None = None) -> ConvertReport:
    """Convert ``model_path`` (an .onnx file, with external data beside it) into ``out_dir``;
    with ``quantize`` (a quantize.QuantizeConfig), calibrated and rewritten in QDQ form."""
    if quantize is not None and precision not in (None, "fp32"):
        raise ConversionError(f"--precision {precision} and --quantize are exclusive")
    if quantize is not None:
        if fp16:
            raise ConversionError("--fp16 and --quantize are exclusive (a quantized model's float "
                                  "weights are its biases and norms: a few KiB)")
        from .quantize import convert_quantized
        return convert_quantized(model_path, out_dir, quantize, fix_shapes, log)
    try:
        model = onnx.load(model_path, load_external_data=False)
    except Exception as e:  # noqa: BLE001  onnx raises several types for bad files
        raise ConversionError(f"cannot load ONNX model {model_path}: {e}") from None
    return convert_model_proto(model, out_dir, os.path.dirname(os.path.abspath(model_path)), fp16,
                               fix_shapes, log, precision)


def parse_fix_shape(spec: str) -> tuple[str, list[int]]:
    """'NAME=d0,d1,...' -> (NAME, [d0, d1, ...])."""
    name, eq, dims = spec.rpartition("=")
    if not eq or not name:
        raise ValueError(f"--fix-shape {spec!r}: expected NAME=d0,d1,...")
    try:
        values = [int(d) for d in dims.split(",")] if dims else []
    except ValueError:
        raise ValueError(f"--fix-shape {spec!r}: dimensions must be integers") from None
    if any(v < 0 for v in values):
        raise ValueError(f"--fix-shape {spec!r}: dimensions must be >= 0")
    return name, values
