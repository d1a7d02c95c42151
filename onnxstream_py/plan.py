"""Planning pass: turns a parsed Graph into the list of steps the interpreter executes.

Computed here, once per model, and nowhere else: each node's op implementation (every
unsupported op reported together), fusions (attention -> SlicedAttention), when each
intermediate dies (it is freed right after its last consumer), which dying inputs an
elementwise op may overwrite in place, which inputs are weights
(fetched just before their op and released right after), and the order in which weights
will be requested, handed to the WeightsProvider for read-ahead.
"""
from __future__ import annotations

from dataclasses import dataclass, field

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


def build_plan(graph: Graph, options: RunOptions) -> Plan:
    if options.backend == "native":
        ops.load_native()
    nodes, n_attention = fuse_attention(graph, list(graph.nodes), options)
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
    fusions = {"SlicedAttention": n_attention} if n_attention else {}
    return Plan(steps, order, fusions)
