"""Planning pass: turns a parsed Graph into the list of steps the interpreter executes.

Computed here, once per model, and nowhere else: each node's op implementation (every
unsupported op reported together), fusions (torch's GroupNorm chains -> GroupNorm, older
exporters' LayerNorm / GELU / SiLU chains -> LayerNorm, Gelu, GeluMul, Silu, GEGLU
projections -> GegluLinear, attention
-> SlicedAttention), when each intermediate dies (it is freed right after its last consumer), which dying inputs an
elementwise op may overwrite in place, which inputs are weights
(fetched just before their op and released right after), and the order in which weights
will be requested, handed to the WeightsProvider for read-ahead.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import ops
from .errors import UnsupportedOpsError
from .graph import Graph, Node
from .ops.attention import DOMAIN as FUSED_DOMAIN
from .options import RunOptions


@dataclass
class Step:
    node: Node
    impl: ops.OpImpl
    kwargs: dict                          # attributes (+ _noutputs) passed to the op
    weight_inputs: frozenset[int]         # positions of inputs that are weights
    row_gather: bool = False              # Gather rows of a weight table: fetch only those rows
    free_after: tuple[str, ...] = ()      # intermediates whose last use is this step
    donors: tuple[int, ...] = ()          # inputs dying here whose buffer the op may write into
    narrow_after: tuple[str, ...] = ()    # activation_storage="fp16": store these as float16 after this step
    widen_before: tuple[str, ...] = ()    # ... and back to float32 before this one (a reader)


@dataclass
class Plan:
    steps: list[Step]
    weight_order: list[str]               # weights in request order (rows-only fetches excluded)
    fusions: dict[str, int] = field(default_factory=dict)
    options: RunOptions | None = None     # what it was planned with (the interpreter reads its run-time knobs)
    dequant_weights: dict = field(default_factory=dict)   # plan_weight_dequant: weight -> DequantWeight


def _consumer_counts(nodes: list[Node]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in nodes:
        for name in n.inputs:
            if name:
                counts[name] = counts.get(name, 0) + 1
    return counts


def _is_scalar_const(graph: Graph, name: str) -> bool:
    if name in graph.consts:
        return graph.consts[name].size == 1
    w = graph.weights.get(name)
    return w is not None and len(w.shape) <= 1 and (not w.shape or w.shape[0] == 1)


def fuse_attention(graph: Graph, nodes: list[Node], options: RunOptions) -> tuple[list[Node], int]:
    """Replace MatMul -> [Mul|Div] -> [Add] -> Softmax(-1) -> MatMul chains by SlicedAttention."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.outputs if o}
    counts = _consumer_counts(nodes)
    outputs = {v.name for v in graph.outputs}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for name in n.inputs:
            if name:
                consumers.setdefault(name, []).append(i)

    def private(name: str) -> bool:     # used once, by the chain, and not a graph output
        return counts.get(name, 0) == 1 and name not in outputs

    def prod(name: str, *types: str) -> int | None:
        i = producer.get(name)
        if i is not None and nodes[i].op_type in types and nodes[i].domain == "":
            return i
        return None

    removed: set[int] = set()
    replace: dict[int, Node] = {}
    for si, sm in enumerate(nodes):
        if sm.op_type != "Softmax" or sm.domain != "":
            continue
        if sm.attrs.get("axis", -1 if graph.opset_for("") >= 13 else 1) != -1:
            continue
        out = sm.outputs[0]
        users = consumers.get(out, [])
        if not private(out) or len(users) != 1:
            continue
        pv_i = users[0]
        pv = nodes[pv_i]
        if pv.op_type != "MatMul" or pv.domain != "" or pv.inputs[0] != out or pv_i in removed:
            continue
        chain = [si, pv_i]
        x = sm.inputs[0]
        mask = ""
        i = prod(x, "Add")
        if i is not None and private(x):
            a, b = nodes[i].inputs
            if prod(a, "MatMul", "Mul", "Div") is not None and private(a):
                x, mask = a, b
            elif prod(b, "MatMul", "Mul", "Div") is not None and private(b):
                x, mask = b, a
            else:
                continue
            chain.append(i)
        scale, scale_op = "", ""
        i = prod(x, "Mul", "Div")
        if i is not None and private(x):
            a, b = nodes[i].inputs
            if nodes[i].op_type == "Mul" and _is_scalar_const(graph, a) and prod(b, "MatMul") is not None:
                x, scale = b, a
            elif _is_scalar_const(graph, b) and prod(a, "MatMul") is not None:
                x, scale = a, b
            else:
                continue
            scale_op = nodes[i].op_type.lower()
            chain.append(i)
        qk_i = prod(x, "MatMul")
        if qk_i is None or not private(x) or any(c in removed for c in chain + [qk_i]):
            continue
        chain.append(qk_i)
        q, kt = nodes[qk_i].inputs
        fused = Node("SlicedAttention", pv.name + "/sliced_attention",
                     [q, kt, pv.inputs[1], scale, mask], list(pv.outputs),
                     {"scale_op": scale_op, "slices": options.attention_slices,
                      "slice_bytes": options.attention_slice_bytes, "attention": options.attention}, FUSED_DOMAIN)
        while fused.inputs and not fused.inputs[-1]:
            fused.inputs.pop()
        removed.update(chain)
        replace[pv_i] = fused
    new_nodes = [replace.get(i, n) for i, n in enumerate(nodes) if i not in removed or i in replace]
    return new_nodes, len(replace)


def fuse_group_norm(graph: Graph, nodes: list[Node]) -> tuple[list[Node], int]:
    """Replace torch's GroupNorm export by onnxstream:GroupNorm (ops/fused.py):

        x -> Reshape([0|N, G, -1]) -> InstanceNormalization(s, b) -> Reshape(Shape(x) | const)
          [-> Mul(gamma)] [-> Add(beta)] [-> y * Sigmoid(y)]

    gamma, beta, s and b must be weights or constants (weights stay inputs, so the provider
    streams them); every intermediate must be private to the chain. The op's definition is
    the chain's (ops/fused.py), so shapes unknown here are checked when it runs.
    """
    producer = {o: i for i, n in enumerate(nodes) for o in n.outputs if o}
    counts = _consumer_counts(nodes)
    outputs = {v.name for v in graph.outputs}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for name in dict.fromkeys(n.inputs):
            if name:
                consumers.setdefault(name, []).append(i)

    def private(name: str) -> bool:     # used once, by the chain, and not a graph output
        return counts.get(name, 0) == 1 and name not in outputs

    def standard(i: int | None, op_type: str) -> bool:
        return i is not None and nodes[i].op_type == op_type and nodes[i].domain == ""

    def constant(name: str) -> bool:
        return bool(name) and (name in graph.consts or name in graph.weights)

    def const_equals(name: str, value: float, size: int) -> bool:
        v = graph.consts.get(name)
        return v is not None and np.size(v) == size and bool(np.all(np.asarray(v) == value))

    def single_user(name: str) -> int | None:
        users = consumers.get(name, [])
        return users[0] if private(name) and len(users) == 1 else None

    removed: set[int] = set()
    replace: dict[int, Node] = {}
    for ii, inorm in enumerate(nodes):
        if not standard(ii, "InstanceNormalization") or len(inorm.inputs) != 3:
            continue
        # Reshape x -> [0 | N, G, -1]
        r1_i = producer.get(inorm.inputs[0])
        if not standard(r1_i, "Reshape") or not private(inorm.inputs[0]):
            continue
        r1 = nodes[r1_i]
        if len(r1.inputs) != 2 or r1.inputs[1] not in graph.consts:
            continue
        target = np.asarray(graph.consts[r1.inputs[1]]).reshape(-1).tolist()
        if (len(target) != 3 or target[2] != -1 or target[1] <= 0 or target[0] < 0
                or (target[0] == 0 and r1.attrs.get("allowzero", 0))):
            continue
        x, groups, batch = r1.inputs[0], int(target[1]), int(target[0])
        # InstanceNormalization's scale/bias: dropped when constant ones/zeros, else folded
        s_name, b_name = inorm.inputs[1], inorm.inputs[2]
        if not (constant(s_name) and constant(b_name)):
            continue
        s_name = "" if const_equals(s_name, 1.0, groups) else s_name
        b_name = "" if const_equals(b_name, 0.0, groups) else b_name
        # Reshape back to x's shape: Shape(x) or a constant target
        r2_i = single_user(inorm.outputs[0])
        if not standard(r2_i, "Reshape") or nodes[r2_i].inputs[0] != inorm.outputs[0] or len(nodes[r2_i].inputs) != 2:
            continue
        r2 = nodes[r2_i]
        chain = [r1_i, ii, r2_i]
        attrs = {"num_groups": groups, "epsilon": inorm.attrs.get("epsilon", 1e-5), "batch": batch}
        tgt = r2.inputs[1]
        if tgt in graph.consts:
            shape = np.asarray(graph.consts[tgt]).reshape(-1).tolist()
            if r2.attrs.get("allowzero", 0) and 0 in shape:
                continue
            attrs["shape"] = [int(d) for d in shape]
        else:
            sh_i = producer.get(tgt)
            if (not standard(sh_i, "Shape") or nodes[sh_i].inputs[0] != x
                    or nodes[sh_i].attrs.get("start", 0) != 0 or "end" in nodes[sh_i].attrs):
                continue
            if private(tgt):
                chain.append(sh_i)            # the Shape feeds only this Reshape: it goes too
        out = r2.outputs[0]
        gamma = beta = ""
        for op_type in ("Mul", "Add"):
            i = single_user(out)
            if not standard(i, op_type) or len(nodes[i].inputs) != 2:
                continue
            a, b = nodes[i].inputs
            other = b if a == out else a
            if not constant(other):
                continue
            if op_type == "Mul":
                gamma = other
            else:
                beta = other
            chain.append(i)
            out = nodes[i].outputs[0]
        # SiLU: out * Sigmoid(out), the Mul's operands in either order
        users = consumers.get(out, [])
        if counts.get(out, 0) == 2 and len(users) == 2 and out not in outputs:
            sig_i = next((i for i in users if standard(i, "Sigmoid")), None)
            mul_i = next((i for i in users if standard(i, "Mul")), None)
            if (sig_i is not None and mul_i is not None and private(nodes[sig_i].outputs[0])
                    and sorted(nodes[mul_i].inputs) == sorted([out, nodes[sig_i].outputs[0]])):
                attrs["silu"] = 1
                chain += [sig_i, mul_i]
                out = nodes[mul_i].outputs[0]
        if any(i in removed for i in chain):
            continue
        last = producer[out]
        fused = Node("GroupNorm", nodes[last].name + "/group_norm", [x, gamma, beta, s_name, b_name], [out],
                     attrs, FUSED_DOMAIN)
        while fused.inputs and not fused.inputs[-1]:
            fused.inputs.pop()
        removed.update(chain)
        replace[last] = fused
    new_nodes = [replace.get(i, n) for i, n in enumerate(nodes) if i not in removed or i in replace]
    return new_nodes, len(replace)


class _ChainIndex:
    """Who produces and who reads each value of a node list, for the pattern fusions below
    (fuse_layer_norm, fuse_gelu, fuse_silu): a chain may only swallow values that are private
    to it (read once, by the chain, and not graph outputs) and constants it knows the value of."""

    def __init__(self, graph: Graph, nodes: list[Node]):
        self.graph, self.nodes = graph, nodes
        self.producer = {o: i for i, n in enumerate(nodes) for o in n.outputs if o}
        self.counts = _consumer_counts(nodes)
        self.outputs = {v.name for v in graph.outputs}
        self.consumers: dict[str, list[int]] = {}
        for i, n in enumerate(nodes):
            for name in dict.fromkeys(n.inputs):
                if name:
                    self.consumers.setdefault(name, []).append(i)

    def private(self, name: str, uses: int = 1) -> bool:
        return self.counts.get(name, 0) == uses and name not in self.outputs

    def node(self, name: str, *op_types: str) -> int | None:
        """The standard-domain producer of ``name`` when its type is one of op_types."""
        i = self.producer.get(name)
        if i is not None and self.nodes[i].op_type in op_types and self.nodes[i].domain == "":
            return i
        return None

    def user(self, name: str, *op_types: str) -> int | None:
        """The single reader of a private ``name`` when its type is one of op_types."""
        users = self.consumers.get(name, [])
        if not self.private(name) or len(users) != 1:
            return None
        n = self.nodes[users[0]]
        return users[0] if n.op_type in op_types and n.domain == "" else None

    def scalar(self, name: str) -> float | None:
        """The value of a one-element float constant, else None."""
        v = self.graph.consts.get(name)
        if v is None or np.size(v) != 1 or np.asarray(v).dtype.kind != "f":
            return None
        return float(np.asarray(v).reshape(-1)[0])

    def rank(self, name: str) -> int:
        return int(np.ndim(self.graph.consts[name])) if name in self.graph.consts else 0

    def other(self, i: int, name: str) -> str | None:
        """The other operand of a binary node i whose one operand is ``name``."""
        ins = self.nodes[i].inputs
        if len(ins) != 2 or name not in ins or ins[0] == ins[1]:
            return None
        return ins[1] if ins[0] == name else ins[0]

    def scalar_operand(self, i: int, name: str, value: float, rtol: float = 0.0) -> str | None:
        """The constant operand of node i (whose other operand is ``name``) when it equals value
        within rtol; None otherwise."""
        c = self.other(i, name)
        v = None if c is None else self.scalar(c)
        return c if v is not None and abs(v - value) <= rtol * abs(value) else None


def _replace_chains(nodes: list[Node], removed: set[int], replace: dict[int, Node]) -> list[Node]:
    return [replace.get(i, n) for i, n in enumerate(nodes) if i not in removed or i in replace]


def _reduce_axes(graph: Graph, node: Node):
    """(axes tuple | None for all, ok) of a ReduceMean with keepdims=1, axes an attribute or a
    constant input; ok is False for anything else (noop_with_empty_axes, unknown axes)."""
    if node.attrs.get("keepdims", 1) != 1 or node.attrs.get("noop_with_empty_axes", 0):
        return None, False
    if len(node.inputs) > 1 and node.inputs[1]:
        if node.inputs[1] not in graph.consts:
            return None, False
        axes = np.asarray(graph.consts[node.inputs[1]]).reshape(-1).tolist()
    else:
        axes = node.attrs.get("axes")
    return (tuple(int(a) for a in axes) if axes else None), True


def fuse_layer_norm(graph: Graph, nodes: list[Node]) -> tuple[list[Node], int]:
    """Replace older exporters' LayerNorm by onnxstream:LayerNorm (ops/fused.py):

        mean = ReduceMean(x, axes); d = Sub(x, mean); v = ReduceMean(Pow(d, 2) | Mul(d, d), axes)
        y = Div(d, Sqrt(Add(v, eps))) [-> Mul(gamma)] [-> Add(beta)]

    Both ReduceMeans keep dims and share axes; eps and the exponent are constants (2 exactly);
    gamma/beta are weights or constants; every intermediate is private to the chain. Whether
    the axes are x's trailing dims and gamma/beta per column is known only at run time: the
    op checks and otherwise runs the chain.
    """
    ix = _ChainIndex(graph, nodes)
    removed: set[int] = set()
    replace: dict[int, Node] = {}
    for si, sq in enumerate(nodes):
        if sq.op_type != "Sqrt" or sq.domain != "" or len(sq.inputs) != 1:
            continue
        ve = sq.inputs[0]
        add_i = ix.node(ve, "Add")
        if add_i is None or not ix.private(ve):
            continue
        var = next((n for n in nodes[add_i].inputs if ix.node(n, "ReduceMean") is not None), None)
        eps_name = None if var is None else ix.other(add_i, var)
        eps = None if eps_name is None else ix.scalar(eps_name)
        if eps is None or not ix.private(var):
            continue
        rv_i = ix.node(var, "ReduceMean")
        axes, ok = _reduce_axes(graph, nodes[rv_i])
        p = nodes[rv_i].inputs[0]
        p_i = ix.node(p, "Pow", "Mul")
        if not ok or p_i is None or not ix.private(p):
            continue
        pn = nodes[p_i]
        if pn.op_type == "Pow":
            d, square = pn.inputs[0], "pow"
            if len(pn.inputs) != 2 or ix.scalar(pn.inputs[1]) != 2.0:
                continue
        else:
            d, square = pn.inputs[0], "mul"
            if len(pn.inputs) != 2 or pn.inputs[1] != d:
                continue
        sub_i = ix.node(d, "Sub")
        if sub_i is None or not ix.private(d, 3 if square == "mul" else 2):
            continue
        x, mean = nodes[sub_i].inputs
        rm_i = ix.node(mean, "ReduceMean")
        if rm_i is None or not ix.private(mean) or nodes[rm_i].inputs[0] != x:
            continue
        if _reduce_axes(graph, nodes[rm_i]) != (axes, True):
            continue
        div_i = ix.user(sq.outputs[0], "Div")
        if div_i is None or nodes[div_i].inputs != [d, sq.outputs[0]]:
            continue
        if sorted(ix.consumers.get(d, [])) != sorted([p_i, div_i]):
            continue
        chain = [rm_i, sub_i, p_i, rv_i, add_i, si, div_i]
        out = nodes[div_i].outputs[0]
        params = {"Mul": "", "Add": ""}
        for op_type in ("Mul", "Add"):
            i = ix.user(out, op_type)
            other = None if i is None else ix.other(i, out)
            if other is None or not (other in graph.consts or other in graph.weights):
                continue
            params[op_type] = other
            chain.append(i)
            out = nodes[i].outputs[0]
        if any(i in removed for i in chain):
            continue
        last = ix.producer[out]
        fused = Node("LayerNorm", nodes[last].name + "/layer_norm", [x, params["Mul"], params["Add"]], [out],
                     {"axes": None if axes is None else list(axes), "epsilon": eps, "square": square},
                     FUSED_DOMAIN)
        if fused.attrs["axes"] is None:
            del fused.attrs["axes"]
        while fused.inputs and not fused.inputs[-1]:
            fused.inputs.pop()
        removed.update(chain)
        replace[last] = fused
    return _replace_chains(nodes, removed, replace), len(replace)


_SQRT2 = float(np.sqrt(2.0))
_GELU_RTOL = 1e-6   # float32 spellings of sqrt(2), sqrt(2/pi), 0.044715 are within ~3e-8 relative


def _gelu_product(ix: _ChainIndex, a: str, x: str) -> tuple[list[int], str, list[str]] | None:
    """The tail of a Gelu chain from a = 1 + erf(..) (or 1 + tanh(..)): the product x * a * 0.5
    in any of the orders exporters write it: ((x a) 0.5), ((a 0.5) x), ((0.5 x) a).
    Returns (nodes, output, constants) or None."""
    nodes = ix.nodes
    m1 = ix.user(a, "Mul")
    f1 = None if m1 is None else ix.other(m1, a)
    if f1 is None:
        return None
    out1 = nodes[m1].outputs[0]
    if f1 == x:                                   # (x a) 0.5
        m2 = ix.user(out1, "Mul")
        c = None if m2 is None else ix.scalar_operand(m2, out1, 0.5)
        return None if c is None else ([m1, m2], nodes[m2].outputs[0], [c])
    if ix.scalar(f1) == 0.5:                      # (a 0.5) x
        m2 = ix.user(out1, "Mul")
        return None if m2 is None or ix.other(m2, out1) != x else ([m1, m2], nodes[m2].outputs[0], [f1])
    h = ix.node(f1, "Mul")                        # (0.5 x) a
    if h is None or not ix.private(f1) or x not in nodes[h].inputs:
        return None
    c = ix.scalar_operand(h, x, 0.5)
    return None if c is None else ([h, m1], out1, [c])


def fuse_gelu(graph: Graph, nodes: list[Node], gelu_mul: bool = True) -> tuple[list[Node], int, int]:
    """Replace exported GELU by onnxstream:Gelu (ops/fused.py), erf and tanh forms:

        erf:  Div(x, sqrt 2) | Mul(x, 1/sqrt 2) -> Erf -> Add(1) -> x * . * 0.5 (any order)
        tanh: Pow(x, 3) | x*x*x -> Mul(0.044715) -> Add(x) -> Mul(sqrt(2/pi)) -> Tanh -> Add(1)
              -> x * . * 0.5

    Constants must have those values (to 1e-6 relative; 1, 0.5 and 3 exactly) and every
    intermediate must be private. With ``gelu_mul``, a Gelu whose only reader is a Mul with
    another tensor (the SD UNet's GEGLU, h * gelu(gate)) becomes onnxstream:GeluMul, and so
    does the Gelu op (opset 20) in that position. Returns (nodes, Gelu count, GeluMul count).
    """
    ix = _ChainIndex(graph, nodes)
    removed: set[int] = set()
    replace: dict[int, Node] = {}
    for ei, e in enumerate(nodes):
        if e.op_type not in ("Erf", "Tanh") or e.domain != "" or len(e.inputs) != 1 or not ix.private(e.inputs[0]):
            continue
        u = e.inputs[0]
        consts: list[str] = []
        if e.op_type == "Erf":
            i = ix.node(u, "Div", "Mul")
            if i is None:
                continue
            x = nodes[i].inputs[0]
            if nodes[i].op_type == "Div":
                c = ix.scalar_operand(i, x, _SQRT2, _GELU_RTOL) if nodes[i].inputs[1] != x else None
            else:
                x = next((n for n in nodes[i].inputs if ix.scalar(n) is None), "")
                c = ix.scalar_operand(i, x, 1 / _SQRT2, _GELU_RTOL)
            if c is None:
                continue
            chain, consts, approximate = [i], [c], "none"
        else:
            i = ix.node(u, "Mul")
            v = None
            if i is not None:
                v = next((n for n in nodes[i].inputs if ix.scalar(n) is None), None)
            c1 = None if v is None else ix.scalar_operand(i, v, float(np.sqrt(2 / np.pi)), _GELU_RTOL)
            add_i = None if c1 is None or not ix.private(v) else ix.node(v, "Add")
            if add_i is None:
                continue
            # Add(x, w) with w = Mul(p, 0.044715), p = Pow(x, 3) | Mul(x, Mul(x, x)) | Mul(Mul(x, x), x)
            found = None
            for w in nodes[add_i].inputs:
                wi = ix.node(w, "Mul")
                x = ix.other(add_i, w)
                if wi is None or x is None or not ix.private(w):
                    continue
                p = next((n for n in nodes[wi].inputs if ix.scalar(n) is None), None)
                c2 = None if p is None else ix.scalar_operand(wi, p, 0.044715, _GELU_RTOL)
                pi = None if c2 is None or not ix.private(p) else ix.node(p, "Pow", "Mul")
                if pi is None:
                    continue
                pn = nodes[pi]
                if pn.op_type == "Pow":
                    if pn.inputs[0] == x and len(pn.inputs) == 2 and ix.scalar(pn.inputs[1]) == 3.0:
                        found = (x, [pi, wi], [c2, pn.inputs[1]])
                else:
                    sq = ix.other(pi, x)
                    si = None if sq is None or not ix.private(sq) else ix.node(sq, "Mul")
                    if si is not None and nodes[si].inputs == [x, x]:
                        found = (x, [si, pi, wi], [c2])
                if found:
                    break
            if found is None:
                continue
            x, chain, consts = found
            chain, consts, approximate = chain + [add_i, i], consts + [c1], "tanh"
        one_i = ix.user(e.outputs[0], "Add")
        one = None if one_i is None else ix.scalar_operand(one_i, e.outputs[0], 1.0)
        if one is None:
            continue
        tail = _gelu_product(ix, nodes[one_i].outputs[0], x)
        if tail is None:
            continue
        chain += [ei, one_i] + tail[0]
        consts += [one] + tail[2]
        out = tail[1]
        if any(i in removed for i in chain) or len(set(chain)) != len(chain):
            continue
        attrs = {"approximate": approximate, "const_rank": max(ix.rank(c) for c in consts)}
        fused = Node("Gelu", nodes[ix.producer[out]].name + "/gelu", [x], [out], attrs, FUSED_DOMAIN)
        removed.update(chain)
        replace[ix.producer[out]] = fused
    n_gelu = len(replace)
    n_mul = n_standard = 0
    if gelu_mul:
        # the chains fused above, and the Gelu op itself (opset 20) with an approximate we run
        sources = list(replace.items()) + [
            (i, Node("Gelu", n.name, list(n.inputs), list(n.outputs), {"approximate": n.attrs.get("approximate", "none"),
                                                                       "const_rank": 0}, FUSED_DOMAIN))
            for i, n in enumerate(nodes)
            if n.op_type == "Gelu" and n.domain == "" and i not in removed and len(n.inputs) == 1
            and n.attrs.get("approximate", "none") in ("none", "tanh")]
        for last, g in sources:
            out = g.outputs[0]
            mi = ix.user(out, "Mul")
            m = None if mi is None else ix.other(mi, out)
            if m is None or mi in removed:
                continue
            replace[mi] = Node("GeluMul", nodes[mi].name + "/gelu_mul", [g.inputs[0], m], list(nodes[mi].outputs),
                               dict(g.attrs), FUSED_DOMAIN)
            n_standard += replace.pop(last, None) is None
            removed.update([last, mi])
            n_mul += 1
    return _replace_chains(nodes, removed, replace), n_gelu - (n_mul - n_standard), n_mul


def fuse_geglu_linear(graph: Graph, nodes: list[Node]) -> tuple[list[Node], int]:
    """Replace GEGLU's projection, split and product by onnxstream:GegluLinear (ops/fused.py):

        p = MatMul(x, W) [-> Add(bias)];  a = Slice(p, ...);  g = Slice(p, ...);  GeluMul(g, a)

    with W a 2-D weight, p read only by the two Slices and by Shape nodes (the exporter's
    split point, Shape(p)[-1] / 2, which become onnxstream:MatMulShape of x), every other
    intermediate private. The Slices' parameters stay inputs: the op checks at run time that
    they halve the last axis and otherwise runs the replaced ops. Runs after fuse_gelu."""
    ix = _ChainIndex(graph, nodes)
    removed: set[int] = set()
    replace: dict[int, Node] = {}
    for gi, gm in enumerate(nodes):
        if gm.op_type != "GeluMul" or gm.domain != FUSED_DOMAIN or len(gm.inputs) != 2:
            continue
        g, a = gm.inputs
        if not (ix.private(g) and ix.private(a)) or g == a:
            continue
        si_g, si_a = ix.node(g, "Slice", "Split"), ix.node(a, "Slice", "Split")
        if si_g is None or si_a is None:
            continue
        split = nodes[si_g].op_type == "Split"
        if split:
            # Split(p) into [a, g] (either order) in equal halves; that its axis is the last
            # one (ranks are not known here) is checked by the op, as for Slices
            sp = nodes[si_g]
            if si_a != si_g or len(sp.outputs) != 2 or graph.opset_for("") < 13:
                continue
            sizes = sp.inputs[1] if len(sp.inputs) > 1 else ""
            if sizes and (sizes not in graph.consts or np.asarray(graph.consts[sizes]).reshape(-1).size != 2
                          or len(set(np.asarray(graph.consts[sizes]).reshape(-1).tolist())) != 1):
                continue
            if not sizes and sp.attrs.get("num_outputs", 2) != 2:
                continue
        elif (nodes[si_a].op_type != "Slice" or si_g == si_a or graph.opset_for("") < 10
              or nodes[si_g].inputs[0] != nodes[si_a].inputs[0]):
            continue
        p = nodes[si_g].inputs[0]
        if any(p in nodes[s].inputs[1:] for s in (si_g, si_a)):
            continue
        readers = ix.consumers.get(p, [])
        shapes = [i for i in readers if nodes[i].op_type == "Shape" and nodes[i].domain == ""]
        if (p in ix.outputs or sorted(readers) != sorted(shapes + sorted({si_g, si_a}))
                or ix.counts.get(p) != len(readers)):
            continue
        bias, mm = "", ix.node(p, "MatMul")
        add = None
        if mm is None:
            add = ix.node(p, "Add")
            if add is None:
                continue
            for j, name in enumerate(nodes[add].inputs):
                mm = ix.node(name, "MatMul")
                if mm is not None and ix.private(name):
                    bias = nodes[add].inputs[1 - j]
                    break
            else:
                continue
            decl = graph.weights.get(bias)
            if decl is None or len(decl.shape) != 1:
                continue
        x, w = nodes[mm].inputs
        decl = graph.weights.get(w)
        if decl is None or len(decl.shape) != 2 or x == w or (bias and decl.shape[1] != graph.weights[bias].shape[0]):
            continue
        chain = sorted({mm, si_g, si_a, gi} | ({add} if add is not None else set()))
        if any(i in removed or i in replace for i in chain + shapes):
            continue

        if split:
            if sizes and 2 * int(np.asarray(graph.consts[sizes]).reshape(-1)[0]) != decl.shape[1]:
                continue
            # the halves as the equivalent Slices' parameters: [0, H) and [H, 2H) of the axis
            h = decl.shape[1] // 2
            first, second = "geglu/0", f"geglu/{h}"
            graph.consts.setdefault(first, np.array([0], np.int64))
            graph.consts.setdefault(second, np.array([h], np.int64))
            graph.consts.setdefault(f"geglu/{2 * h}", np.array([2 * h], np.int64))
            axis = f"geglu/axis{int(sp.attrs.get('axis', 0))}"
            graph.consts.setdefault(axis, np.array([int(sp.attrs.get("axis", 0))], np.int64))
            ranges = {0: [first, second, axis, ""], 1: [second, f"geglu/{2 * h}", axis, ""]}
            a_params = ranges[nodes[si_a].outputs.index(a)]
            g_params = ranges[nodes[si_g].outputs.index(g)]
        else:
            def slice_params(s):
                params = list(nodes[s].inputs[1:5])
                return params + [""] * (4 - len(params))
            a_params, g_params = slice_params(si_a), slice_params(si_g)
        replace[gi] = Node("GegluLinear", gm.name + "/geglu_linear", [x, w, bias] + a_params + g_params,
                           list(gm.outputs), dict(gm.attrs), FUSED_DOMAIN)
        for s in shapes:
            sn = nodes[s]
            attrs = {"n": int(decl.shape[1])}
            attrs.update({k: int(v) for k, v in sn.attrs.items() if k in ("start", "end")})
            replace[s] = Node("MatMulShape", sn.name + "/matmul_shape", [x], list(sn.outputs), attrs, FUSED_DOMAIN)
        removed.update(chain)
    new_nodes = [replace.get(i, n) for i, n in enumerate(nodes) if i not in removed or i in replace]
    return new_nodes, sum(n.op_type == "GegluLinear" for n in replace.values())


def fuse_silu(graph: Graph, nodes: list[Node]) -> tuple[list[Node], int]:
    """Replace x * Sigmoid(x) (SiLU) and x * Sigmoid(alpha x) (QuickGELU, alpha a scalar
    constant) by onnxstream:Silu (ops/fused.py). Runs after fuse_group_norm, which takes the
    SiLUs that follow a GroupNorm; one it left (the normalised value, or its affine, has
    other readers) stays as exported: that is fuse_group_norm's decision, not this pass's."""
    ix = _ChainIndex(graph, nodes)

    def after_group_norm(x: str) -> bool:
        i = ix.producer.get(x)
        for _ in range(3):          # GroupNorm [-> Mul(gamma)] [-> Add(beta)]
            if i is None:
                return False
            n = nodes[i]
            if n.op_type == "GroupNorm" and n.domain == FUSED_DOMAIN:
                return True
            if n.op_type not in ("Mul", "Add") or n.domain != "":
                return False
            src = [v for v in n.inputs if not (v in graph.consts or v in graph.weights)]
            i = ix.producer.get(src[0]) if len(src) == 1 else None
        return False

    removed: set[int] = set()
    replace: dict[int, Node] = {}
    for si, s in enumerate(nodes):
        if s.op_type != "Sigmoid" or s.domain != "" or len(s.inputs) != 1:
            continue
        mi = ix.user(s.outputs[0], "Mul")
        x = None if mi is None else ix.other(mi, s.outputs[0])
        if x is None or after_group_norm(x):
            continue
        t = s.inputs[0]
        chain, attrs = [si, mi], {}
        if t != x:
            ai = ix.node(t, "Mul")
            c = None if ai is None or not ix.private(t) else ix.other(ai, x)
            alpha = None if c is None else ix.scalar(c)
            if alpha is None:
                continue
            chain.append(ai)
            attrs = {"alpha": alpha, "const_rank": ix.rank(c)}
        if any(i in removed for i in chain):
            continue
        replace[mi] = Node("Silu", nodes[mi].name + "/silu", [x], list(nodes[mi].outputs), attrs, FUSED_DOMAIN)
        removed.update(chain)
    return _replace_chains(nodes, removed, replace), len(replace)


def fuse_qdq(graph: Graph, nodes: list[Node]) -> tuple[list[Node], dict[str, int]]:
    """W8A8: fold a QDQ graph's DequantizeLinear -> op -> QuantizeLinear patterns into quantized
    fused ops that read and write the int8 tensors (ops/qfused.py, ops/native_int8.py):

        DQ(x_q) , DQ(w_q int8 weight, per output channel) [, bias] -> Conv [-> Q]   => QConv
        DQ(a_q) , DQ(w_q [K, N] axis 1) -> MatMul [-> Q]                            => QLinear
        DQ(a_q) , DQ(w_q) [, C] -> Gemm(alpha = beta = 1, transA = 0) [-> Q]         => QLinear
        DQ(x_q) [, other inputs] -> any other op -> Q                               => QDQ
        QDQ(GroupNorm | nearest Resize) read only by a QConv                        => QPrologueConv

    An activation's DQ/Q must be per tensor with an int8 zero point (constants); a weight's DQ
    must read an int8 weight with a scale per output channel (or one) and zero points that are
    absent, zero constants, or int8 weights (checked when the op runs). The Q must be the only
    reader of the op's output; without it only Conv/MatMul/Gemm fuse (their float output
    computed from int8 without a full float input). A DQ left without readers is dropped;
    every other Q/DQ stays and runs as the plain op (correct, not lean).
    Reference: onnxruntime's QDQ format (quantize_static, QuantFormat.QDQ); quantize.py.
    """
    ix = _ChainIndex(graph, nodes)

    def const(name: str):
        return graph.consts.get(name) if name else None

    def per_tensor_i8(scale: str, zp: str) -> bool:
        s, z = const(scale), const(zp)
        return (s is not None and np.size(s) == 1 and np.asarray(s).dtype == np.float32
                and z is not None and np.size(z) == 1 and np.asarray(z).dtype == np.int8)

    def dq_activation(name: str) -> list[str] | None:
        i = ix.node(name, "DequantizeLinear")
        if i is None or len(nodes[i].inputs) != 3:
            return None
        x, s, z = nodes[i].inputs
        if x in graph.weights or x in graph.consts or not per_tensor_i8(s, z):
            return None
        return [x, s, z]

    def shape_of(name: str):
        if name in graph.weights:
            return tuple(graph.weights[name].shape)
        c = const(name)
        return None if c is None else np.shape(c)

    def dtype_of(name: str):
        if name in graph.weights:
            return np.dtype(graph.weights[name].dtype)
        c = const(name)
        return None if c is None else np.asarray(c).dtype

    def dq_weight(name: str, axis: int, rank: int, qdtype=np.int8) -> list[str] | None:
        i = ix.node(name, "DequantizeLinear")
        if i is None or len(nodes[i].inputs) not in (2, 3):
            return None
        ins = list(nodes[i].inputs) + [""] * (3 - len(nodes[i].inputs))
        w, s, z = ins
        shape = shape_of(w)
        if shape is None or len(shape) != rank or dtype_of(w) != np.dtype(qdtype):
            return None
        s_shape = shape_of(s)
        if s_shape is None or dtype_of(s) != np.float32:
            return None
        if int(np.prod(s_shape, dtype=np.int64)) != 1:
            if len(s_shape) != 1 or nodes[i].attrs.get("axis", 1) % rank != axis or s_shape[0] != shape[axis]:
                return None
        if z:
            zc = const(z)
            if zc is not None and np.any(np.asarray(zc)):
                return None
            if dtype_of(z) != np.dtype(qdtype):
                return None
        return [w, s, z]

    def bias_inputs(name: str, n: int | None) -> list[str] | None:
        """[b, b_scale, b_zp] of a float bias (weight or constant) or a DQ of an int32 one."""
        if not name:
            return ["", "", ""]
        if name in graph.weights or name in graph.consts:
            shape = shape_of(name)
            ok = dtype_of(name) == np.float32 and len(shape) == 1 and (n is None or shape[0] == n)
            return [name, "", ""] if ok else None
        q = dq_weight(name, 0, 1, np.int32)
        return q

    def output_q(node: Node) -> list[str] | None:
        """[q_output, y_scale, y_zp] when the node's single output is read by one per-tensor
        int8 QuantizeLinear only; None otherwise."""
        if len(node.outputs) != 1:
            return None
        qi = ix.user(node.outputs[0], "QuantizeLinear")
        if qi is None:
            return None
        q = nodes[qi]
        if len(q.inputs) != 3 or not per_tensor_i8(q.inputs[1], q.inputs[2]) or q.attrs.get("saturate", 1) != 1:
            return None
        return [q.outputs[0], q.inputs[1], q.inputs[2], qi]

    removed: set[int] = set()
    replace: dict[int, Node] = {}
    counts = {"QConv": 0, "QLinear": 0, "QDQ": 0}
    for i, n in enumerate(nodes):
        if n.domain not in ("", FUSED_DOMAIN) or n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(n.outputs) != 1 or not n.inputs:
            continue
        q = output_q(n)
        fused = None
        if n.domain == "" and n.op_type in ("Conv", "MatMul", "Gemm") and len(n.inputs) >= 2:
            x = dq_activation(n.inputs[0])
            if n.op_type == "Conv":
                w = dq_weight(n.inputs[1], 0, 4)
                cout = shape_of(w[0])[0] if w else None
                b = bias_inputs(n.inputs[2] if len(n.inputs) > 2 else "", cout)
                attrs = dict(n.attrs)
                op_type = "QConv"
            elif n.op_type == "MatMul":
                w = dq_weight(n.inputs[1], 1, 2)
                b, attrs, op_type = ["", "", ""], {"weight_kn": 1}, "QLinear"
            else:
                a = n.attrs
                trans_b = int(a.get("transB", 0))
                ok = float(a.get("alpha", 1.0)) == 1.0 and int(a.get("transA", 0)) == 0
                c = n.inputs[2] if len(n.inputs) > 2 else ""
                ok = ok and (not c or float(a.get("beta", 1.0)) == 1.0)
                w = dq_weight(n.inputs[1], 0 if trans_b else 1, 2) if ok else None
                ncols = None if w is None else shape_of(w[0])[0 if trans_b else 1]
                b = bias_inputs(c, ncols) if ok else None
                attrs, op_type = {"weight_kn": 0 if trans_b else 1}, "QLinear"
            if x is None or w is None or b is None:
                continue
            out = [q[0]] if q else list(n.outputs)
            ys = q[1:3] if q else ["", ""]
            fused = Node(op_type, n.name + "/" + op_type.lower(), x + w + b + ys, out, attrs, FUSED_DOMAIN)
        elif q is not None:
            ins, qin = [], []
            for name in n.inputs:
                dq = dq_activation(name) if name else None
                if dq is not None:
                    ins += dq
                    qin.append(1)
                else:
                    ins.append(name)
                    qin.append(0)
            if not any(qin):
                continue
            op_type = "QDQ"
            fused = Node("QDQ", n.name + "/qdq", ins + q[1:3], [q[0]],
                         {"op_type": n.op_type, "op_domain": n.domain, "op_opset": graph.opset_for(n.domain),
                          "op_attrs": dict(n.attrs), "qin": qin, "qout": 1}, FUSED_DOMAIN)
        if fused is None or (q and q[3] in removed):
            continue
        replace[i] = fused
        if q:
            removed.add(q[3])
        counts[op_type] += 1
    # a QuantizeLinear left alone (its producer has no int8 form) runs as the lean QDQ op too:
    # Identity -> Q, quantized block by block in float32 (the reference op keeps float64
    # temporaries of the whole tensor)
    for i, n in enumerate(nodes):
        if (i not in removed and i not in replace and n.op_type == "QuantizeLinear" and n.domain == ""
                and len(n.inputs) == 3 and per_tensor_i8(n.inputs[1], n.inputs[2]) and n.attrs.get("saturate", 1) == 1):
            replace[i] = Node("QDQ", n.name + "/qdq", list(n.inputs), list(n.outputs),
                              {"op_type": "Identity", "op_domain": "", "op_opset": graph.opset_for(""),
                               "op_attrs": {}, "qin": [0], "qout": 1}, FUSED_DOMAIN)
            counts["Quantize"] = counts.get("Quantize", 0) + 1
    nodes = _replace_chains(nodes, removed, replace)
    # DequantizeLinear nodes nobody reads any more
    used = {name for n in nodes for name in n.inputs if name} | {v.name for v in graph.outputs}
    nodes = [n for n in nodes if not (n.op_type == "DequantizeLinear" and n.domain == ""
                                      and n.outputs[0] not in used)]
    nodes, counts["QPrologueConv"] = _merge_conv_prologues(graph, nodes)
    counts["QConv"] -= counts["QPrologueConv"]
    counts["QDQ"] -= counts["QPrologueConv"]
    return nodes, {k: v for k, v in counts.items() if v}


def _merge_conv_prologues(graph: Graph, nodes: list[Node]) -> tuple[list[Node], int]:
    """QDQ(GroupNorm | nearest Resize) -> QConv, where the int8 tensor between them has no other
    reader, becomes one onnxstream:QPrologueConv: the native op then makes the convolution's
    input one band of rows at a time and the full-size tensor between them never exists (the
    SD VAE decoder's 256 x 512 x 512 GroupNorm output and upsampled tensor: 64 MiB each)."""
    ix = _ChainIndex(graph, nodes)
    removed: set[int] = set()
    replace: dict[int, Node] = {}
    for ci, conv in enumerate(nodes):
        if conv.op_type != "QConv" or conv.domain != FUSED_DOMAIN:
            continue
        pi = ix.producer.get(conv.inputs[0])
        if pi is None or pi in removed or not ix.private(conv.inputs[0]):
            continue
        pro = nodes[pi]
        if pro.op_type != "QDQ" or pro.domain != FUSED_DOMAIN or not pro.attrs.get("qout", 1):
            continue
        a = pro.attrs
        kind = (a["op_domain"], a["op_type"])
        qin = list(a.get("qin", ()))
        if not qin or qin[0] != 1 or any(qin[1:]):
            continue
        nearest = (kind in (("", "Resize"), ("", "Upsample"))
                   and (a.get("op_attrs") or {}).get("mode", "nearest") == "nearest")
        if kind != (FUSED_DOMAIN, "GroupNorm") and not nearest:
            continue
        attrs = {k: v for k, v in conv.attrs.items()}
        attrs.update(prologue={k: a[k] for k in ("op_type", "op_domain", "op_opset", "op_attrs", "qin", "qout")},
                     n_prologue=len(pro.inputs))
        replace[ci] = Node("QPrologueConv", conv.name + "/prologue", list(pro.inputs) + list(conv.inputs[3:]),
                           list(conv.outputs), attrs, FUSED_DOMAIN)
        removed.add(pi)
    return _replace_chains(nodes, removed, replace), len(replace)


# A value whose next reader is more than this many steps away is stored as float16 meanwhile
# (activation_storage="fp16"). The SD 1.5 UNet's skip connections wait 300-2000 steps; the
def plan_weight_dequant(graph: Graph, nodes: list[Node]):
    """Drop each DequantizeLinear of a stored 8-bit weight (w8a32, or a QDQ model's weight no
    int8 kernel took) and declare its output a float32 weight fetched dequantized
    (weight_dequant.py): its readers then get an ordinary weight - read just before the op,
    released after, in row chunks with DiskNoCache - instead of a full float activation.
    Needs a per-tensor or per-axis float32 scale and zero point (constants or weights).
    Returns (graph with those weights declared, nodes, {weight name: DequantWeight})."""
    from .weight_dequant import DequantWeight, graph_view
    outputs = {v.name for v in graph.outputs}
    dequant: dict[str, DequantWeight] = {}
    kept = []
    q8 = (np.dtype(np.int8), np.dtype(np.uint8))

    def param(name: str):
        """(dtype, size, ndim) of a const or weight, None otherwise."""
        if name in graph.consts:
            a = graph.consts[name]
            return a.dtype, a.size, a.ndim
        if name in graph.weights:
            w = graph.weights[name]
            return w.dtype, int(np.prod(w.shape, dtype=np.int64)), len(w.shape)
        return None

    for node in nodes:
        ins = list(node.inputs) + ["", ""]
        src = graph.weights.get(ins[0])
        scale = param(ins[1]) if ins[1] else None
        zp = param(ins[2]) if ins[2] else None
        ok = (node.op_type == "DequantizeLinear" and node.domain == "" and len(node.outputs) == 1
              and node.outputs[0] not in outputs and node.outputs[0] not in graph.weights
              and src is not None and src.dtype in q8 and len(src.shape) >= 1
              and not node.attrs.get("block_size", 0) and node.attrs.get("output_dtype", 0) in (0, 1)
              and scale is not None and scale[0] == np.float32 and (not ins[2] or zp is not None))
        if ok:
            rank = len(src.shape)
            axis = node.attrs.get("axis", 1) if graph.opset_for("") >= 13 else 0
            per_tensor = scale[1] == 1 and scale[2] <= 1
            ok = per_tensor or (scale[2] == 1 and -rank <= axis < rank and scale[1] == src.shape[axis % rank])
            ok = ok and (zp is None or (zp[0] == src.dtype and zp[1] == scale[1]))
        if not ok:
            kept.append(node)
            continue
        axis = 0 if per_tensor else axis % rank
        dequant[node.outputs[0]] = DequantWeight(node.outputs[0], ins[0], ins[1], ins[2], axis, tuple(src.shape))
    if not dequant:
        return graph, nodes, dequant
    return graph_view(graph, dequant), kept, dequant


# residual around a transformer block ~40-60 (also worth it at 64x64: 5 MB each); a resnet's
# shortcut ~10-20 (left alone: converting twice would cost more than it saves).
FP16_STORAGE_MIN_GAP = 32


def plan_activation_storage(graph: Graph, steps: list[Step], min_gap: int = FP16_STORAGE_MIN_GAP) -> int:
    """Mark intermediates to keep as float16 between two uses more than ``min_gap`` steps apart
    (producer -> first reader, or reader -> next reader): ``narrow_after`` at the earlier step,
    ``widen_before`` at the later one. The interpreter narrows only float32 arrays of at least
    64 KiB, so dtypes and shapes unknown here are decided when it runs. Feeds and graph
    outputs' final values are never narrowed (a feed is the caller's; an output is returned
    after its last reader). Returns the number of narrowings planned."""
    skip = set(graph.weights) | set(graph.consts) | {v.name for v in graph.inputs}
    events: dict[str, list[int]] = {}
    for i, step in enumerate(steps):
        for o in step.node.outputs:
            if o and o not in skip:
                events.setdefault(o, []).append(i)
    for i, step in enumerate(steps):
        for name in dict.fromkeys(step.node.inputs):
            if name in events and events[name][-1] != i:
                events[name].append(i)
    narrow: dict[int, list[str]] = {}
    widen: dict[int, list[str]] = {}
    count = 0
    for name, at in events.items():
        for a, b in zip(at, at[1:]):
            if b - a > min_gap:
                narrow.setdefault(a, []).append(name)
                widen.setdefault(b, []).append(name)
                count += 1
    for i, step in enumerate(steps):
        step.narrow_after = tuple(narrow.get(i, ()))
        step.widen_before = tuple(widen.get(i, ()))
    return count


def build_plan(graph: Graph, options: RunOptions) -> Plan:
    if options.backend == "native":
        ops.load_native()
    nodes = list(graph.nodes)
    # 8-bit weights become float weights before the fusions look for weights (a w8a32 UNet's
    # GEGLU projection then fuses too), unless the int8 fusion (fuse_qdq) wants their
    # DequantizeLinear nodes: then after it, for the weights it left.
    int8_fusion = (options.backend == "native" and options.precision in ("auto", "w8a8")
                   and any(n.op_type == "QuantizeLinear" and n.domain == "" for n in nodes))
    dequant: dict = {}
    if not int8_fusion:
        graph, nodes, dequant = plan_weight_dequant(graph, nodes)   # from here on graph declares them
    nodes, n_group_norm = fuse_group_norm(graph, nodes)
    nodes, n_layer_norm = fuse_layer_norm(graph, nodes)
    nodes, n_gelu, n_gelu_mul = fuse_gelu(graph, nodes)
    nodes, n_geglu = fuse_geglu_linear(graph, nodes)
    n_gelu_mul -= n_geglu
    nodes, n_silu = fuse_silu(graph, nodes)
    nodes, n_attention = fuse_attention(graph, nodes, options)
    n_qdq: dict[str, int] = {}
    if options.backend == "native" and getattr(options, "precision", "auto") in ("auto", "w8a8"):
        nodes, n_qdq = fuse_qdq(graph, nodes)
    if int8_fusion:
        graph, nodes, dequant = plan_weight_dequant(graph, nodes)
    missing: dict[str, list[str]] = {}
    steps: list[Step] = []
    for node in nodes:
        impl = ops.lookup(node.op_type, graph.opset_for(node.domain), node.domain, options.backend)
        if impl is None:
            key = f"{node.domain}:{node.op_type}" if node.domain else node.op_type
            missing.setdefault(f"{key} (opset {graph.opset_for(node.domain)})", []).append(node.name)
            continue
        kwargs = dict(node.attrs)
        if impl.wants_noutputs:
            kwargs["_noutputs"] = len(node.outputs)
        weights = frozenset(i for i, name in enumerate(node.inputs) if name in graph.weights)
        row_gather = (node.op_type == "Gather" and node.domain == "" and 0 in weights
                      and 1 not in weights and kwargs.get("axis", 0) == 0
                      and node.inputs[1] not in graph.consts)
        steps.append(Step(node, impl, kwargs, weights, row_gather))
    if missing:
        raise UnsupportedOpsError(missing)

    # Lifetimes: an intermediate (or feed) dies right after its last consumer.
    keep = {v.name for v in graph.outputs}
    last_use: dict[str, int] = {}
    for i, step in enumerate(steps):
        for name in step.node.inputs:
            if name and name not in graph.weights and name not in graph.consts:
                last_use[name] = i
    dead_at: dict[int, list[str]] = {}
    for name, i in last_use.items():
        if name not in keep:
            dead_at.setdefault(i, []).append(name)
    produced_unused: dict[int, list[str]] = {}
    for i, step in enumerate(steps):
        for o in step.node.outputs:
            if o and o not in last_use and o not in keep:
                produced_unused.setdefault(i, []).append(o)   # optional outputs nobody reads
    fed = {v.name for v in graph.inputs}
    for i, step in enumerate(steps):
        step.free_after = tuple(dead_at.get(i, []) + produced_unused.get(i, []))
        if step.impl.wants_out:
            dying = set(dead_at.get(i, ())) - fed
            names = step.node.inputs
            step.donors = tuple(j for j, n in enumerate(names) if n in dying and names.count(n) == 1)

    if options.activation_storage == "fp16":
        plan_activation_storage(graph, steps)

    order = [step.node.inputs[j] for step in steps for j in sorted(step.weight_inputs)
             if not (step.row_gather and j == 0)]
    order = [s for n in order for s in (dequant[n].sources(graph) if n in dequant else (n,))]
    fusions = {name: k for name, k in (("GroupNorm", n_group_norm), ("SlicedAttention", n_attention),
                                       ("LayerNorm", n_layer_norm), ("Gelu", n_gelu), ("GeluMul", n_gelu_mul),
                                       ("GegluLinear", n_geglu), ("Silu", n_silu)) if k}
    fusions.update(n_qdq)
    return Plan(steps, order, fusions, options, dequant)
