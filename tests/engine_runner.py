"""Run an in-memory ONNX model through onnxstream_py for tests.

``run_model`` converts the model into the streaming format in a temporary directory and
runs it with ``onnxstream_py.Model``, so every test that uses it exercises converter,
planner, interpreter and ops together. Until the converter exists it falls back to
``run_direct``, a node-by-node evaluation straight on the registry.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxstream_py import ops


def attrs_of(node: onnx.NodeProto) -> dict:
    """ONNX attributes as Python values: str for strings, ndarray for tensors."""
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [s.decode() for s in v]
        out[a.name] = v
    return out


def run_direct(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    opsets = {o.domain: o.version for o in model.opset_import}
    env = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    env.update(feeds)
    for node in model.graph.node:
        impl = ops.lookup(node.op_type, opsets.get(node.domain, opsets.get("ai.onnx", 1)), node.domain)
        if impl is None:
            raise NotImplementedError(f"{node.op_type} not registered")
        args = [env[n] if n else None for n in node.input]
        kw = attrs_of(node)
        if impl.wants_noutputs:
            kw["_noutputs"] = len(node.output)
        res = impl.fn(*args, **kw)
        if not isinstance(res, (tuple, list)):
            res = (res,)
        for name, val in zip(node.output, res):
            if name:
                env[name] = val
    return [env[o.name] for o in model.graph.output]


def run_model(model: onnx.ModelProto, feeds: dict[str, np.ndarray], tmp_path=None, **model_kwargs) -> list[np.ndarray]:
    try:
        from onnxstream_py.converter import convert_model_proto  # noqa: F401
    except ImportError:
        return run_direct(model, feeds)
    import tempfile
    import onnxstream_py
    with tempfile.TemporaryDirectory() as d:
        out_dir = d + "/model"
        convert_model_proto(model, out_dir)
        m = onnxstream_py.Model(out_dir, **model_kwargs)
        try:
            res = m.run(feeds)
        finally:
            m.close()
    return [res[o.name] for o in model.graph.output]
