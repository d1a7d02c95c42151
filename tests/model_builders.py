"""Small ONNX graphs built with onnx.helper for engine tests (no torch needed)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def conv_mlp(seed: int = 0, channels: int = 8) -> onnx.ModelProto:
    """x[N,3,H,W] -> Conv -> Relu -> Conv -> GlobalAveragePool -> Flatten -> Gemm -> y[N,5].

    Dynamic N, H, W; weights large enough to land in weights.bin.
    """
    rng = np.random.default_rng(seed)
    c = channels
    inits = [
        numpy_helper.from_array(rng.standard_normal((c, 3, 3, 3)).astype(np.float32) * 0.3, "w1"),
        numpy_helper.from_array(rng.standard_normal((c,)).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((c, c, 3, 3)).astype(np.float32) * 0.2, "w2"),
        numpy_helper.from_array(rng.standard_normal((5, c)).astype(np.float32), "wf"),
        numpy_helper.from_array(rng.standard_normal((5,)).astype(np.float32), "bf"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["c2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1),
    ]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)


def shape_arith() -> onnx.ModelProto:
    """Reshape driven by Shape -> Gather -> Unsqueeze -> Concat, as torch exports emit it.

    x[B,C,H,W] -> reshape to [B, C, H*W] -> transpose -> y[B, H*W, C]
    """
    i64 = lambda name, v: numpy_helper.from_array(np.array(v, dtype=np.int64), name)  # noqa: E731
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i0"], ["b"], axis=0),
        helper.make_node("Gather", ["s", "i1"], ["c"], axis=0),
        helper.make_node("Gather", ["s", "i2"], ["h"], axis=0),
        helper.make_node("Gather", ["s", "i3"], ["w"], axis=0),
        helper.make_node("Mul", ["h", "w"], ["hw"]),
        helper.make_node("Unsqueeze", ["b", "ax"], ["b1"]),
        helper.make_node("Unsqueeze", ["c", "ax"], ["c1"]),
        helper.make_node("Unsqueeze", ["hw", "ax"], ["hw1"]),
        helper.make_node("Concat", ["b1", "c1", "hw1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("Transpose", ["r"], ["y"], perm=[0, 2, 1]),
    ]
    inits = [i64("i0", 0), i64("i1", 1), i64("i2", 2), i64("i3", 3), i64("ax", [0])]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "C", "H", "W"])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)


def attention(m: int, n: int, d: int, heads: int = 2, scale_op: str = "Mul", mask: bool = False,
              seed: int = 0) -> onnx.ModelProto:
    """q,k,v [B,heads,*,d] -> softmax(q·kᵀ ∘ scale (+ mask)) · v, the way torch exports it."""
    rng = np.random.default_rng(seed)
    scale = np.array(1 / np.sqrt(d) if scale_op == "Mul" else np.sqrt(d), dtype=np.float32)
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node(scale_op, ["s", "scale"], ["s2"]),
    ]
    last = "s2"
    inits = [numpy_helper.from_array(scale, "scale")]
    if mask:
        inits.append(numpy_helper.from_array(
            np.triu(np.full((m, n), -1e4, np.float32), 1) + rng.standard_normal((m, n)).astype(np.float32),
            "mask"))
        nodes.append(helper.make_node("Add", ["s2", "mask"], ["s3"]))
        last = "s3"
    nodes += [helper.make_node("Softmax", [last], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "v"], ["y"])]
    ins = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", heads, rows, d])
           for name, rows in (("q", m), ("k", n), ("v", n))]
    return make_model(nodes, ins, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)


def embedding(vocab: int = 1000, dim: int = 16, seed: int = 0) -> onnx.ModelProto:
    """ids[B,T] int64 -> Gather(table) -> y[B,T,dim] (the text encoder's token embedding)."""
    rng = np.random.default_rng(seed)
    table = numpy_helper.from_array(rng.standard_normal((vocab, dim)).astype(np.float32), "table")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["y"], axis=0)]
    return make_model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "T"])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", dim])], [table])


def ort_run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)
