"""Run an in-memory ONNX model through onnxstream_py for tests.

``run_model`` converts the model into the streaming format in a temporary directory and
runs it with ``onnxstream_py.Model``, so every test that uses it exercises converter,
planner, interpreter and ops together, on the backend asked for.
"""
from __future__ import annotations

import tempfile

import numpy as np
import onnx

import onnxstream_py
from onnxstream_py.converter import convert_model_proto


def run_model(model: onnx.ModelProto, feeds: dict[str, np.ndarray], backend: str | None = None,
              **model_kwargs) -> list[np.ndarray]:
    """Outputs of ``model`` on ``feeds``, in graph output order.

    ``backend`` ("numpy" or "native") sets RunOptions.backend; other keyword arguments go
    to ``onnxstream_py.Model`` (e.g. ``options=RunOptions(...)``, ``provider=...``).
    """
    if backend is not None:
        model_kwargs["options"] = onnxstream_py.RunOptions(backend=backend)
    with tempfile.TemporaryDirectory() as d:
        out_dir = d + "/model"
        convert_model_proto(model, out_dir)
        with onnxstream_py.Model(out_dir, **model_kwargs) as m:
            res = m.run(feeds)
    return [res[o.name] for o in model.graph.output]
