"""W8A8 static quantization at conversion: calibrate an FP32 model, rewrite it into ONNX QDQ form.

``onnxstream convert MODEL.onnx OUT --quantize w8a8 --calibration DATA.npz`` runs:

1. the usual conversion (fold, prune) into a temporary FP32 model;
2. the plan's fusion passes (GroupNorm(+SiLU), LayerNorm, GELU/GeluMul, SiLU), written into that
   model's graph, so the quantized graph is built around the fused ops (a GroupNorm is one op
   with one output to quantize, not a chain of a dozen). Attention is left as its chain: the
   fused op's attributes are run options (slices, kernel), and the plan fuses the chain at load
   time, the Q/DQ nodes here never sit inside it (an activation x activation MatMul is not
   quantized);
3. calibration (calibrate.py) of the tensors chosen below, on the engine's native backend;
4. the rewrite, standard ONNX QDQ (what onnxruntime's ``quantize_static`` writes, so a fusion
   written for one serves both):
   - Conv / Gemm / MatMul-by-a-weight: the weight becomes int8 per output channel (symmetric,
     zero point 0, scale max|w| / 127, round half to even) + DequantizeLinear(axis = that
     channel axis); the bias stays float;
   - a quantized activation t: ``t_quantized = QuantizeLinear(t, scale, zp)`` (int8, asymmetric,
     per tensor, the calibrated range widened to hold 0) right after its producer, and each
     consumer reads its own ``DequantizeLinear`` placed right before it. One DQ per consumer
     rather than one shared: between producer and each reader only the int8 tensor is alive
     (a skip connection waits as int8), and each DQ -> op pair is a fusion pattern by itself;
   - quantized: the activation input and the output of those linear ops, and the outputs of
     the big elementwise / norm / resize / concat ops (QUANTIZED_OUTPUTS, at least
     MIN_QUANT_ELEMENTS elements as calibrated); never the graph's inputs as fed or its outputs
     (both stay float), nor the tensors of nodes matched by ``keep_fp32`` (fnmatch on node names
     or op types): such a node keeps float weights, reads its inputs as float and writes float.
5. a report (quant_report.txt in OUT): each quantized tensor's range, scale, zero point and
   its quantization error (NMSE of quantize-dequantize vs the float tensor, measured on the
   calibration data in a second pass), and each weight's.
"""
from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from weights_providers.format import WEIGHTS_FILE, WeightsWriter

from .calibrate import METHODS, Calibration, calibrate, load_calibration_data, observe
from .converter import quantize_weight_int8 as quantize_weight   # w8a32's weights: the same int8
from .errors import ConversionError
from .graph import GRAPH_FILE, Graph, Node, WeightDecl, read_graph, write_graph

MODES = ("w8a8",)
REPORT_FILE = "quant_report.txt"
LINEAR_OPS = ("Conv", "Gemm", "MatMul")
# ops whose (large) float output is stored as int8; domain "" or the plan's fused domain
QUANTIZED_OUTPUTS = {"Add", "Sub", "Mul", "Div", "Resize", "Concat", "InstanceNormalization",
                     "GroupNorm", "LayerNorm", "Silu", "Gelu", "GeluMul", "Sigmoid", "Relu"}
MIN_QUANT_ELEMENTS = 4096   # smaller elementwise outputs stay float: no memory to win, only error
QMIN, QMAX = -128, 127
MIN_OPSET = 13              # per-axis DequantizeLinear


@dataclass(frozen=True)
class QuantizeConfig:
    mode: str = "w8a8"
    calibration: str = ""                 # DATA.npz or a folder of .npz input sets
    method: str = "percentile"            # calibrate.METHODS
    percentile: float = 99.99
    keep_fp32: tuple[str, ...] = ()       # fnmatch patterns on node names or op types
    measure_error: bool = True            # second calibration pass for the per-tensor NMSE
    min_elements: int = MIN_QUANT_ELEMENTS    # smaller elementwise outputs stay float

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"--quantize {self.mode!r}: supported modes are {', '.join(MODES)}")
        if not self.calibration:
            raise ValueError(f"--quantize {self.mode} needs --calibration DATA.npz (or a folder of .npz input sets)")
        if self.method not in METHODS:
            raise ValueError(f"--calibration-method {self.method!r}: choose one of {', '.join(METHODS)}")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"--percentile must be in (50, 100], got {self.percentile}")


# ---------------------------------------------------------------- numpy quantization (the reference)

def activation_qparams(lo: float, hi: float) -> tuple[np.float32, np.int8]:
    """Asymmetric int8 (scale, zero point) of the range [lo, hi] widened to hold 0, so that 0 is
    exact (padding, ReLU zeros). Reference: onnxruntime.quantization.quant_utils.compute_scale_zp."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo <= 0.0:
        return np.float32(1.0), np.int8(0)
    scale = np.float32((hi - lo) / (QMAX - QMIN))
    zp = int(np.clip(np.rint(QMIN - lo / float(scale)), QMIN, QMAX))
    return scale, np.int8(zp)


def fake_quantize(x: np.ndarray, scale: float, zp: int) -> np.ndarray:
    """DequantizeLinear(QuantizeLinear(x)) in float32 (round half to even, saturate)."""
    q = np.clip(np.rint(x / np.float32(scale)) + zp, QMIN, QMAX)
    return ((q - zp) * np.float32(scale)).astype(np.float32)


def nmse(ref: np.ndarray, x: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    den = float(np.sum(ref * ref))
    return float(np.sum((x.astype(np.float64) - ref) ** 2)) / den if den else 0.0


# ---------------------------------------------------------------- what to quantize

def _matches(node: Node, patterns) -> bool:
    return any(fnmatch.fnmatchcase(node.name, p) or fnmatch.fnmatchcase(node.op_type, p) for p in patterns)


def weight_axis(node: Node, graph: Graph) -> int | None:
    """The output-channel axis of a linear op's weight (input 1), None when it has no weight
    there (MatMul of two activations, a Conv whose weight is computed)."""
    if len(node.inputs) < 2 or node.inputs[1] not in graph.weights or node.domain != "":
        return None
    w = graph.weights[node.inputs[1]]
    if w.dtype != np.float32 or len(w.shape) < 2:
        return None
    if node.op_type == "Conv":
        return 0              # [M, C/group, kh, kw], grouped or not
    if node.op_type == "Gemm":
        return 0 if node.attrs.get("transB", 0) else 1
    if node.op_type == "MatMul":
        return len(w.shape) - 1
    return None


def candidate_tensors(graph: Graph, keep_fp32=()) -> tuple[dict[str, str], dict[str, int]]:
    """(activation name -> why, linear node name -> weight axis) before calibration.
    Graph outputs and non-float values (found when calibrating) are excluded later."""
    outputs = {v.name for v in graph.outputs}
    tensors: dict[str, str] = {}
    weights: dict[str, int] = {}
    for n in graph.nodes:
        if _matches(n, keep_fp32):
            continue
        if n.op_type in LINEAR_OPS and n.domain == "":
            axis = weight_axis(n, graph)
            if axis is None:
                continue
            weights[n.name] = axis
            x = n.inputs[0]
            if x not in graph.weights and x not in graph.consts:
                tensors.setdefault(x, f"{n.op_type} input")
            for o in n.outputs[:1]:
                if o and o not in outputs:
                    tensors[o] = f"{n.op_type} output"
        elif n.op_type in QUANTIZED_OUTPUTS:
            o = n.outputs[0]
            if o and o not in outputs:
                tensors.setdefault(o, f"{n.op_type} output")
    return tensors, weights


# ---------------------------------------------------------------- fusion before quantizing

_IDENTITY = {"Mul": (1.0, (0, 1)), "Div": (1.0, (1,)), "Add": (0.0, (0, 1)), "Sub": (0.0, (1,))}


def drop_identities(graph: Graph, nodes: list[Node]) -> tuple[list[Node], int]:
    """Remove x * 1, x / 1, x + 0, x - 0 with a rank-0 float constant (the SD VAE's resnets
    divide by output_scale_factor = 1): exact in float, and in a QDQ graph each would be one more
    requantization of a large tensor (same range: no information, only rounding and a pass)."""
    outputs = {v.name for v in graph.outputs}
    rename: dict[str, str] = {}
    kept = []
    for n in nodes:
        ins = [rename.get(i, i) for i in n.inputs]
        rule = _IDENTITY.get(n.op_type) if n.domain == "" and len(ins) == 2 else None
        if rule is not None and n.outputs[0] not in outputs:
            value, positions = rule
            for j in positions:
                c = graph.consts.get(ins[j])
                if (c is not None and c.ndim == 0 and c.dtype == np.float32 and float(c) == value
                        and ins[1 - j] not in graph.consts):
                    rename[n.outputs[0]] = ins[1 - j]
                    break
            if n.outputs[0] in rename:
                continue
        kept.append(Node(n.op_type, n.name, ins, list(n.outputs), n.attrs, n.domain))
    return kept, len(rename)


def fuse_for_quantization(graph: Graph) -> tuple[Graph, dict[str, int]]:
    """The plan's fusion passes applied to the graph itself (attention excepted, see above),
    after dropping arithmetic identities."""
    from . import plan
    nodes, n_id = drop_identities(graph, list(graph.nodes))
    nodes, n_gn = plan.fuse_group_norm(graph, nodes)
    nodes, n_ln = plan.fuse_layer_norm(graph, nodes)
    nodes, n_gelu, n_gm = plan.fuse_gelu(graph, nodes)
    nodes, n_silu = plan.fuse_silu(graph, nodes)
    used = {n for node in nodes for n in node.inputs if n} | {v.name for v in graph.outputs}
    fused = Graph(dict(graph.opsets), graph.inputs, graph.outputs,
                  {k: v for k, v in graph.consts.items() if k in used},
                  {k: v for k, v in graph.weights.items() if k in used}, nodes, list(graph.comments))
    if any(n.domain for n in nodes):
        from .ops.attention import DOMAIN
        fused.opsets.setdefault(DOMAIN, 1)
    return fused, {k: v for k, v in (("identities dropped", n_id), ("GroupNorm", n_gn), ("LayerNorm", n_ln), ("Gelu", n_gelu),
                                     ("GeluMul", n_gm), ("Silu", n_silu)) if v}


# ---------------------------------------------------------------- the rewrite

@dataclass
class QuantReport:
    activations: list[dict] = field(default_factory=list)
    weights: list[dict] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = list(self.header)
        lines.append("")
        lines.append(f"{len(self.activations)} quantized activations (int8 per tensor, asymmetric):")
        lines.append(f"{'nmse':>10} {'lo':>11} {'hi':>11} {'scale':>11} {'zp':>4} {'elements':>10}  tensor (why)")
        for r in sorted(self.activations, key=lambda r: -r["nmse"] if r["nmse"] == r["nmse"] else 0):
            lines.append(f"{r['nmse']:10.3e} {r['lo']:11.4g} {r['hi']:11.4g} {r['scale']:11.4g} {r['zp']:4d} "
                         f"{r['elements']:10d}  {r['name']} ({r['why']})")
        lines.append("")
        lines.append(f"{len(self.weights)} quantized weights (int8 per output channel, symmetric):")
        lines.append(f"{'nmse':>10} {'axis':>4} {'max|w|':>10}  weight [shape] (node)")
        for r in sorted(self.weights, key=lambda r: -r["nmse"]):
            lines.append(f"{r['nmse']:10.3e} {r['axis']:4d} {r['amax']:10.4g}  {r['name']} {r['shape']} ({r['node']})")
        if self.kept:
            lines.append("")
            lines.append("kept float (--keep-fp32 or not quantizable): " + ", ".join(self.kept))
        return "\n".join(lines) + "\n"


def _qdq_names(t: str) -> tuple[str, str, str]:
    return t + "_quantized", t + "_scale", t + "_zero_point"


def rewrite_qdq(graph: Graph, qparams: dict[str, tuple[np.float32, np.int8]], weight_axes: dict[str, int],
                keep_fp32=()) -> tuple[Graph, dict[str, tuple[str, int]]]:
    """The QDQ graph (weights not yet written): returns it and, per new int8 weight, (its float
    source, axis). Scales of activations are inline consts; a weight's scale and zero point are
    [C] tensors (weights when larger than the inline limit, as the writer decides)."""
    consts = dict(graph.consts)
    new_w: dict[str, tuple[str, int]] = {}
    weights: dict[str, WeightDecl] = {}
    nodes: list[Node] = []
    quantized_outputs = set(qparams)
    dq_count: dict[str, int] = {}

    def add_q(t: str) -> None:
        q, s, z = _qdq_names(t)
        scale, zp = qparams[t]
        consts[s] = np.asarray(scale, np.float32).reshape(())
        consts[z] = np.asarray(zp, np.int8).reshape(())
        nodes.append(Node("QuantizeLinear", t + "/QuantizeLinear", [t, s, z], [q], {}))

    def add_dq(t: str) -> str:
        k = dq_count[t] = dq_count.get(t, 0) + 1
        q, s, z = _qdq_names(t)
        out = f"{t}_DequantizeLinear_Output_{k}"
        nodes.append(Node("DequantizeLinear", f"{t}/DequantizeLinear_{k}", [q, s, z], [out], {}))
        return out

    for v in graph.inputs:
        if v.name in quantized_outputs:
            add_q(v.name)
    for n in graph.nodes:
        kept = _matches(n, keep_fp32)
        ins = list(n.inputs)
        if not kept:
            seen: dict[str, str] = {}
            for j, name in enumerate(ins):
                if name in quantized_outputs:
                    if name not in seen:
                        seen[name] = add_dq(name)
                    ins[j] = seen[name]
            axis = weight_axes.get(n.name)
            if axis is not None and not kept:
                w = ins[1]
                decl = graph.weights[w]
                q, s, z = _qdq_names(w)
                if q not in weights:
                    weights[q] = WeightDecl(q, np.dtype(np.int8), decl.shape, np.dtype(np.int8))
                    c = decl.shape[axis]
                    weights[s] = WeightDecl(s, np.dtype(np.float32), (c,), np.dtype(np.float32))
                    weights[z] = WeightDecl(z, np.dtype(np.int8), (c,), np.dtype(np.int8))
                    new_w[q] = (w, axis)
                k = dq_count[w] = dq_count.get(w, 0) + 1
                out = f"{w}_DequantizeLinear_Output_{k}"
                nodes.append(Node("DequantizeLinear", f"{w}/DequantizeLinear_{k}", [q, s, z], [out], {"axis": axis}))
                ins[1] = out
        nodes.append(Node(n.op_type, n.name, ins, list(n.outputs), dict(n.attrs), n.domain))
        for o in n.outputs:
            if o in quantized_outputs:
                add_q(o)
    # weights in order of first use; float ones keep their declaration
    ordered: dict[str, WeightDecl] = {}
    for n in nodes:
        for name in n.inputs:
            if name in weights and name not in ordered:
                ordered[name] = weights[name]
            elif name in graph.weights and name not in ordered:
                ordered[name] = graph.weights[name]
    for v in graph.outputs:
        if v.name in graph.weights and v.name not in ordered:
            ordered[v.name] = graph.weights[v.name]
    used = {name for n in nodes for name in n.inputs if name} | {v.name for v in graph.outputs}
    opsets = dict(graph.opsets)
    out = Graph(opsets, list(graph.inputs), list(graph.outputs),
                {k: v for k, v in consts.items() if k in used}, ordered, nodes, list(graph.comments))
    return out, new_w


def write_quantized(graph: Graph, new_w: dict[str, tuple[str, int]], source, out_dir: str,
                    report: QuantReport, node_of: dict[str, str]) -> int:
    """Write graph.txt and weights.bin of the QDQ graph, reading float weights one at a time
    from ``source`` (a WeightsProvider of the FP32 model). Returns the weight bytes written."""
    os.makedirs(out_dir, exist_ok=True)
    specs = [(w.name, w.stored_dtype, w.shape) for w in graph.weights.values()]
    writer = WeightsWriter(os.path.join(out_dir, WEIGHTS_FILE), specs)
    pending: dict[str, np.ndarray] = {}      # scales and zero points computed with their weight
    try:
        for name in graph.weights:
            if name in pending:
                writer.write(name, pending.pop(name))
            elif name in new_w:
                src, axis = new_w[name]
                w = np.asarray(source.get(src), dtype=np.float32)
                q, scale = quantize_weight(w, axis)
                shape = [1] * w.ndim
                shape[axis] = -1
                err = nmse(w, q.astype(np.float32) * scale.reshape(shape))
                report.weights.append({"name": src, "shape": list(w.shape), "axis": axis, "nmse": err,
                                       "amax": float(np.abs(w).max()), "node": node_of.get(src, "?")})
                _, s, z = _qdq_names(src)
                pending[s], pending[z] = scale, np.zeros(scale.shape, np.int8)
                writer.write(name, q)
                source.release(src)
                del w, q
            else:
                writer.write(name, source.get(name))
                source.release(name)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    write_graph(graph, os.path.join(out_dir, GRAPH_FILE))
    return sum(e.nbytes for e in writer.entries.values())


# ---------------------------------------------------------------- measuring the error

def tensor_errors(model, samples, qparams: dict[str, tuple[np.float32, np.int8]]) -> dict[str, float]:
    """NMSE of fake_quantize(t) vs t per quantized tensor, over the samples (second pass)."""
    acc = {t: [0.0, 0.0] for t in qparams}
    chunk = 1 << 22

    def record(name: str, a: np.ndarray) -> None:
        scale, zp = qparams[name]
        flat = a.reshape(-1)
        for s in range(0, flat.size, chunk):
            x = flat[s:s + chunk]
            d = fake_quantize(x, scale, int(zp)) - x
            acc[name][0] += float(np.dot(d, d))
            acc[name][1] += float(np.dot(x, x))

    observe(model, samples, record, set(qparams))
    return {t: (e / r if r else 0.0) for t, (e, r) in acc.items()}


# ---------------------------------------------------------------- the conversion

def convert_quantized(model_path: str, out_dir: str, config: QuantizeConfig,
                      fix_shapes: dict | None = None, log=print):
    """Convert ``model_path`` into a W8A8 QDQ model in ``out_dir``; returns the ConvertReport."""
    from .converter import convert
    from .model import Model
    from .options import RunOptions
    import weights_providers as wp

    t0 = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="onnxstream-quantize-")
    try:
        fp32_dir = os.path.join(tmp, "fp32")
        report = convert(model_path, fp32_dir, fix_shapes=fix_shapes, log=log)
        graph = read_graph(os.path.join(fp32_dir, GRAPH_FILE))
        if graph.opset_for("") < MIN_OPSET:
            raise ConversionError(f"--quantize {config.mode}: the model's opset is {graph.opset_for('')}; "
                                  f"per-channel DequantizeLinear needs opset >= {MIN_OPSET}")
        graph, fusions = fuse_for_quantization(graph)
        write_graph(graph, os.path.join(fp32_dir, GRAPH_FILE))
        samples = load_calibration_data(config.calibration, graph.inputs)
        candidates, weight_axes = candidate_tensors(graph, config.keep_fp32)
        log(f"quantize: fused {fusions or 'nothing'}; calibrating {len(candidates)} tensors on "
            f"{len(samples)} sample(s) ({config.method}"
            f"{f' {config.percentile}' if config.method == 'percentile' else ''})")
        options = RunOptions(backend="native")
        with Model(fp32_dir, provider="nocache", options=options) as model:
            cal: Calibration = calibrate(model, samples, config.method, config.percentile,
                                         set(candidates), log=log)
            qparams, rows = {}, []
            for t, why in candidates.items():
                r = cal.ranges.get(t)
                if r is None or r.count == 0:
                    continue      # not a float32 tensor, or inside a run-time fusion
                if not why.startswith(LINEAR_OPS) and r.count < config.min_elements * cal.samples:
                    continue
                lo, hi = cal.range(t)
                scale, zp = activation_qparams(lo, hi)
                qparams[t] = (scale, zp)
                rows.append({"name": t, "why": why, "lo": lo, "hi": hi, "scale": float(scale), "zp": int(zp),
                             "elements": r.count // max(cal.samples, 1), "min": r.min, "max": r.max})
            errors = tensor_errors(model, samples, qparams) if config.measure_error else {}
        for row in rows:
            row["nmse"] = errors.get(row["name"], float("nan"))
        qgraph, new_w = rewrite_qdq(graph, qparams, weight_axes, config.keep_fp32)
        if hasattr(qgraph, "precision"):
            qgraph.precision = config.mode
        pct = f" percentile={config.percentile}" if config.method == "percentile" else ""
        qgraph.comments = [
            f"converted by onnxstream_py --quantize {config.mode}; {len(qgraph.nodes)} ops, "
            f"{len(qgraph.weights)} weights in {WEIGHTS_FILE}",
            f"precision {config.mode}: int8 weights per output channel (symmetric), int8 activations per tensor "
            f"(asymmetric), ONNX QDQ form",
            f"calibration method={config.method}{pct} samples={cal.samples} "
            f"data={os.path.basename(os.path.normpath(config.calibration))}"]
        qreport = QuantReport(activations=rows)
        kept = [n.name for n in graph.nodes if _matches(n, config.keep_fp32)]
        qreport.kept = kept
        node_of = {graph.nodes[i].inputs[1]: graph.nodes[i].name for i in range(len(graph.nodes))
                   if graph.nodes[i].name in weight_axes}
        if os.path.abspath(out_dir) == os.path.abspath(fp32_dir):
            raise ConversionError("output directory clashes with the temporary FP32 model")
        source = wp.DiskNoCache(os.path.join(fp32_dir, WEIGHTS_FILE))
        try:
            weight_bytes = write_quantized(qgraph, new_w, source, out_dir, qreport, node_of)
        finally:
            source.close()
        qreport.header = [
            f"onnxstream w8a8 quantization of {model_path}",
            f"calibration: {config.calibration}, method {config.method}{pct}, {cal.samples} sample(s)",
            f"fusions before quantizing: {fusions or 'none'}; keep_fp32: {list(config.keep_fp32) or 'none'}",
            f"weights: {weight_bytes / 2**20:.1f} MiB (FP32 model: {report.weight_bytes / 2**20:.1f} MiB)",
        ]
        text = qreport.text()
        with open(os.path.join(out_dir, REPORT_FILE), "w", encoding="utf-8") as f:
            f.write(text)
        log(text)
        report.nodes_out = len(qgraph.nodes)
        report.weights = len(qgraph.weights)
        report.weight_bytes = weight_bytes
        report.inline_consts = len(qgraph.consts)
        report.seconds = time.perf_counter() - t0
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
