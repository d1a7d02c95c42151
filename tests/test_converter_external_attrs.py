"""Tensor attributes held as external data (optimum's SD 1.5 export stores Constant values,
e.g. /time_proj/Constant_1's, in unet/model.onnx_data): the converter reads them from the
model's folder, whatever the current directory."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxstream_py
from onnxstream_py.converter import convert


def test_constant_value_in_external_data(tmp_path, monkeypatch):
    c = np.arange(40, dtype=np.float32).reshape(8, 5) / 7
    nodes = [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(c, "cval")),
             helper.make_node("Add", ["x", "c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    src = tmp_path / "export"
    src.mkdir()
    onnx.save_model(model, str(src / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx_data", size_threshold=0, convert_attribute=True)
    stored = onnx.load(str(src / "model.onnx"), load_external_data=False)
    assert stored.graph.node[0].attribute[0].t.data_location == TensorProto.EXTERNAL
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    convert(str(src / "model.onnx"), str(tmp_path / "out"), log=lambda m: None)
    x = np.ones((8, 5), np.float32)
    with onnxstream_py.Model(str(tmp_path / "out")) as m:
        np.testing.assert_array_equal(m.run({"x": x})["y"], x + c)
