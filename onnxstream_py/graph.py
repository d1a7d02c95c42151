"""The graph file (``graph.txt``) of a converted model: data classes, writer and parser.

One declaration or op per line, so two conversions diff line by line and a person can
read what the engine will run. Weights are only declared here (name, dtype, shape);
their bytes, offsets and checksums live in ``weights.bin`` (weights_providers.format).
Specification: docs/FORMAT.md. This module imports numpy and the standard library only.

    onnxstream-graph 1
    precision fp16-storage
    opset ai.onnx 17
    input sample float32 [batch,4,height,width]
    output out_sample float32 [batch,4,height,width]
    const /Constant_output_0 int64 [2] [1,-1]
    weight conv_in.weight float32 [320,4,3,3] float16
    node Conv /conv_in/Conv sample,conv_in.weight,conv_in.bias /conv_in/Conv_output_0 {"pads":[1,1,1,1]}
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from weights_providers.format import decode_name, dtype_from_name, encode_name, format_shape, parse_shape

GRAPH_FILE = "graph.txt"
GRAPH_MAGIC = "onnxstream-graph"
GRAPH_VERSION = 1
MISSING = "~"   # an omitted optional input
EMPTY = "-"     # an empty name list
UNKNOWN_RANK = "?"
# What the weights are (a property of the file, see docs/FORMAT.md "Precision"): fp32 (no line),
# fp16-storage (float weights stored as float16), w8a32 (int8 weights + DequantizeLinear),
# w8a8 (QDQ on weights and activations). A file without the line is fp32.
PRECISIONS = ("fp32", "fp16-storage", "w8a32", "w8a8")


class GraphFormatError(Exception):
    """graph.txt does not parse: names the file, the line number and what is wrong."""


Dim = int | str  # a static size, or the name of a dynamic dimension ("?" when unnamed)


@dataclass(frozen=True)
class ValueInfo:
    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...] | None     # None: rank unknown (written "?")


@dataclass(frozen=True)
class WeightDecl:
    name: str
    dtype: np.dtype          # dtype the ops see
    shape: tuple[int, ...]
    stored_dtype: np.dtype   # dtype in weights.bin (float16 when converted with --fp16)


@dataclass
class Node:
    op_type: str
    name: str
    inputs: list[str]        # "" for an omitted optional input
    outputs: list[str]
    attrs: dict = field(default_factory=dict)
    domain: str = ""


@dataclass
class Graph:
    opsets: dict[str, int]
    inputs: list[ValueInfo]
    outputs: list[ValueInfo]
    consts: dict[str, np.ndarray]
    weights: dict[str, WeightDecl]   # in order of first use
    nodes: list[Node]
    comments: list[str] = field(default_factory=list)
    precision: str = "fp32"          # one of PRECISIONS

    def opset_for(self, domain: str) -> int:
        if domain in ("", "ai.onnx"):
            return self.opsets.get("", self.opsets.get("ai.onnx", 1))
        return self.opsets.get(domain, 1)


# ---------------------------------------------------------------- values <-> JSON

def _tensor_to_json(a: np.ndarray) -> dict:
    return {"__tensor__": [a.dtype.name, list(a.shape), a.ravel().tolist()]}


def _json_default(o):
    if isinstance(o, np.ndarray):
        return _tensor_to_json(o)
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"cannot write attribute value of type {type(o).__name__}")


def _json_hook(d: dict):
    if "__tensor__" in d and len(d) == 1:
        dtype, shape, values = d["__tensor__"]
        return np.array(values, dtype=dtype_from_name(dtype)).reshape(shape)
    return d


def dump_attrs(attrs: dict) -> str:
    return json.dumps(attrs, separators=(",", ":"), default=_json_default, sort_keys=True)


def load_attrs(text: str) -> dict:
    return json.loads(text, object_hook=_json_hook)


# ---------------------------------------------------------------- writer

def _names(names: list[str]) -> str:
    if not names:
        return EMPTY
    return ",".join(encode_name(n) if n else MISSING for n in names)


def _dims(shape) -> str:
    return UNKNOWN_RANK if shape is None else format_shape(shape)


def write_graph(graph: Graph, path: str) -> None:
    lines = [f"{GRAPH_MAGIC} {GRAPH_VERSION}"]
    lines += [f"# {c}" for c in graph.comments]
    if graph.precision not in PRECISIONS:
        raise ValueError(f"graph precision {graph.precision!r} is not one of {', '.join(PRECISIONS)}")
    if graph.precision != "fp32":
        lines.append(f"precision {graph.precision}")
    for domain, version in sorted(graph.opsets.items()):
        lines.append(f"opset {domain or 'ai.onnx'} {version}")
    for v in graph.inputs:
        lines.append(f"input {encode_name(v.name)} {v.dtype.name} {_dims(v.shape)}")
    for v in graph.outputs:
        lines.append(f"output {encode_name(v.name)} {v.dtype.name} {_dims(v.shape)}")
    for name, a in graph.consts.items():
        values = json.dumps(a.ravel().tolist(), separators=(",", ":"))
        lines.append(f"const {encode_name(name)} {a.dtype.name} {_dims(a.shape)} {values}")
    for w in graph.weights.values():
        stored = f" {w.stored_dtype.name}" if w.stored_dtype != w.dtype else ""
        lines.append(f"weight {encode_name(w.name)} {w.dtype.name} {_dims(w.shape)}{stored}")
    for n in graph.nodes:
        op = f"{n.domain}:{n.op_type}" if n.domain else n.op_type
        lines.append(f"node {op} {encode_name(n.name)} {_names(n.inputs)} {_names(n.outputs)} "
                     f"{dump_attrs(n.attrs)}")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


# ---------------------------------------------------------------- parser

def _parse_names(token: str) -> list[str]:
    if token == EMPTY:
        return []
    return ["" if t == MISSING else decode_name(t) for t in token.split(",")]


def _parse_dims(token: str) -> tuple[Dim, ...] | None:
    if token == UNKNOWN_RANK:
        return None
    out: list[Dim] = []
    for d in parse_shape(token):
        try:
            out.append(int(d))
        except ValueError:
            if not d:
                raise ValueError(f"empty dimension in {token!r}") from None
            out.append(d)
    return tuple(out)


def _parse_static(token: str) -> tuple[int, ...]:
    dims = _parse_dims(token)
    if dims is None or not all(isinstance(d, int) and d >= 0 for d in dims):
        raise ValueError(f"expected a static shape, got {token!r}")
    return dims  # type: ignore[return-value]


def _parse_line(kind: str, rest: str, g: Graph) -> None:
    if kind == "precision":
        if rest.strip() not in PRECISIONS:
            raise ValueError(f"unknown precision {rest.strip()!r} (known: {', '.join(PRECISIONS)})")
        g.precision = rest.strip()
    elif kind == "opset":
        domain, version = rest.split()
        g.opsets["" if domain == "ai.onnx" else domain] = int(version)
    elif kind in ("input", "output"):
        name, dtype, shape = rest.split()
        v = ValueInfo(decode_name(name), dtype_from_name(dtype), _parse_dims(shape))
        (g.inputs if kind == "input" else g.outputs).append(v)
    elif kind == "const":
        name, dtype, shape, values = rest.split(maxsplit=3)
        dt, dims = dtype_from_name(dtype), _parse_static(shape)
        arr = np.array(json.loads(values), dtype=dt)
        if arr.size != int(np.prod(dims, dtype=np.int64)):
            raise ValueError(f"const has {arr.size} values for shape {list(dims)}")
        g.consts[decode_name(name)] = arr.reshape(dims)
    elif kind == "weight":
        f = rest.split()
        if len(f) not in (3, 4):
            raise ValueError(f"expected 'weight NAME DTYPE SHAPE [STORED_DTYPE]', got {len(f)} fields")
        dt = dtype_from_name(f[1])
        stored = dtype_from_name(f[3]) if len(f) == 4 else dt
        name = decode_name(f[0])
        g.weights[name] = WeightDecl(name, dt, _parse_static(f[2]), stored)
    elif kind == "node":
        op, name, ins, outs, attrs = rest.split(maxsplit=4)
        domain, _, op_type = op.rpartition(":")
        g.nodes.append(Node(op_type, decode_name(name), _parse_names(ins), _parse_names(outs),
                            load_attrs(attrs), domain))
    else:
        raise ValueError(f"unknown line kind {kind!r}")


def read_graph(path: str, text: str | None = None) -> Graph:
    """Parse the graph file ``path``; ``text``, when given, is its content (fetched over HTTP)."""
    try:
        if text is None:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except OSError as e:
        raise GraphFormatError(f"cannot read graph file {path}: {e}") from None
    except UnicodeDecodeError as e:
        raise GraphFormatError(f"{path}: not UTF-8 text ({e})") from None
    lines = text.split("\n")
    head = lines[0].split()
    if len(head) != 2 or head[0] != GRAPH_MAGIC:
        raise GraphFormatError(f"{path}:1: not an onnxstream graph file (first line {lines[0][:60]!r})")
    if head[1] != str(GRAPH_VERSION):
        raise GraphFormatError(f"{path}:1: graph format version {head[1]}, this reader knows {GRAPH_VERSION}")
    g = Graph({}, [], [], {}, {}, [])
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        if line.startswith("#"):
            g.comments.append(line[1:].strip())
            continue
        kind, _, rest = line.partition(" ")
        try:
            _parse_line(kind, rest, g)
        except (ValueError, TypeError, json.JSONDecodeError) as e:
            raise GraphFormatError(f"{path}:{lineno}: {e} (line: {line[:120]!r})") from None
    _check_graph(g, path)
    return g


def _check_graph(g: Graph, path: str) -> None:
    """Every name a node reads must be produced earlier, fed, a const or a weight."""
    known = {v.name for v in g.inputs} | set(g.consts) | set(g.weights)
    for i, n in enumerate(g.nodes):
        for name in n.inputs:
            if name and name not in known:
                raise GraphFormatError(
                    f"{path}: node {n.name!r} ({n.op_type}) reads {name!r}, which no earlier node, "
                    f"input, const or weight defines")
        known.update(o for o in n.outputs if o)
    for v in g.outputs:
        if v.name not in known:
            raise GraphFormatError(f"{path}: graph output {v.name!r} is never produced")
