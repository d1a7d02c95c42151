"""Planning pass: turns a parsed Graph into the list of steps the interpreter executes.

Computed here, once per model, and nowhere else: each node's op implementation (every
unsupported op reported together), fusions (torch's GroupNorm chains -> GroupNorm, attention
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


@dataclass
class Plan:
    steps: list[Step]
    weight_order: list[str]               # weights in request order (rows-only fetches excluded)
    fusions: dict[str, int] = field(default_factory=dict)


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
                      "slice_bytes": options.attention_slice_bytes}, FUSED_DOMAIN)
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


def build_plan(graph: Graph, options: RunOptions) -> Plan:
    if options.backend == "native":
        ops.load_native()
    nodes, n_group_norm = fuse_group_norm(graph, list(graph.nodes))
    nodes, n_attention = fuse_attention(graph, nodes, options)
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

    order = [step.node.inputs[j] for step in steps for j in sorted(step.weight_inputs)
             if not (step.row_gather and j == 0)]
    fusions = {name: k for name, k in (("GroupNorm", n_group_norm), ("SlicedAttention", n_attention)) if k}
    return Plan(steps, order, fusions)
