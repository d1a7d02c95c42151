"""Bad input gets one clear error naming the thing and where: never a crash or a wrong output."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxstream_py as osp
from onnxstream_py.converter import convert, convert_model_proto
from weights_providers.format import WeightsIndex

import model_builders as mb


@pytest.fixture
def converted(tmp_path):
    convert_model_proto(mb.conv_mlp(channels=16), str(tmp_path / "m"))
    return tmp_path / "m"


def test_unknown_ops_are_all_reported_at_load_time(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="ok"),
             helper.make_node("FrobnicateA", ["a"], ["b"], name="first_bad"),
             helper.make_node("FrobnicateB", ["b"], ["c"], name="second_bad"),
             helper.make_node("FrobnicateA", ["c"], ["y"], name="third_bad")]
    model = mb.make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    convert_model_proto(model, str(tmp_path / "m"))
    with pytest.raises(osp.UnsupportedOpsError) as e:
        osp.Model(str(tmp_path / "m"))
    msg = str(e.value)
    assert "2 unsupported op type(s)" in msg
    assert "FrobnicateA" in msg and "first_bad" in msg and "third_bad" in msg
    assert "FrobnicateB" in msg and "second_bad" in msg


def test_truncated_weights_file(converted):
    path = converted / "weights.bin"
    idx = WeightsIndex.read(str(path))
    last = list(idx.entries.values())[-1]
    with open(path, "r+b") as f:
        f.truncate(last.offset + last.nbytes // 2)
    with pytest.raises(osp.WeightsError) as e:
        osp.Model(str(converted), provider="nocache")
    assert repr(last.name) in str(e.value) and "weights.bin" in str(e.value) and "truncated" in str(e.value)


@pytest.mark.parametrize("provider", ["nocache", "prefetch", "ram"])
def test_flipped_byte_is_caught_by_checksum(converted, provider):
    path = converted / "weights.bin"
    entry = WeightsIndex.read(str(path))["w2"]
    with open(path, "r+b") as f:
        f.seek(entry.offset + 17)
        b = f.read(1)
        f.seek(entry.offset + 17)
        f.write(bytes([b[0] ^ 0x01]))
    x = np.ones((1, 3, 8, 8), np.float32)
    with osp.Model(str(converted), provider=provider) as m:
        with pytest.raises(osp.WeightsError) as e:
            m.run({"x": x})
    assert "'w2'" in str(e.value) and "checksum" in str(e.value) and "weights.bin" in str(e.value)


def test_weights_file_disagreeing_with_graph(converted):
    text = (converted / "graph.txt").read_text().replace("weight w2 float32 [16,16,3,3]",
                                                         "weight w2 float32 [16,16,1,9]")
    (converted / "graph.txt").write_text(text)
    with pytest.raises(osp.WeightsError, match=r"'w2'.*\[16, 16, 1, 9\].*\[16, 16, 3, 3\]"):
        osp.Model(str(converted))


def test_missing_weights_file(converted):
    os.remove(converted / "weights.bin")
    with pytest.raises(osp.WeightsError, match="weights.bin"):
        osp.Model(str(converted))


def test_missing_unknown_and_wrong_inputs(converted):
    with osp.Model(str(converted)) as m:
        with pytest.raises(osp.InputError, match="missing input 'x'"):
            m.run({})
        with pytest.raises(osp.InputError, match=r"unknown input\(s\) \['z'\]"):
            m.run({"x": np.ones((1, 3, 8, 8), np.float32), "z": np.ones(1)})
        with pytest.raises(osp.InputError, match="input 'x': dtype float64, expected float32"):
            m.run({"x": np.ones((1, 3, 8, 8))})
        with pytest.raises(osp.InputError, match="input 'x': dtype int64, expected float32"):
            m.run({"x": np.ones((1, 3, 8, 8), np.int64)})
        with pytest.raises(osp.InputError, match=r"input 'x'.*rank 3.*expected rank 4"):
            m.run({"x": np.ones((3, 8, 8), np.float32)})
        with pytest.raises(osp.InputError, match=r"input 'x'.*dim 1 must be 3"):
            m.run({"x": np.ones((1, 4, 8, 8), np.float32)})


def test_inconsistent_dynamic_dims_across_inputs(tmp_path):
    model = mb.attention(5, 7, 4)
    convert_model_proto(model, str(tmp_path / "m"))
    with osp.Model(str(tmp_path / "m")) as m:
        q = np.ones((2, 2, 5, 4), np.float32)
        kv = np.ones((3, 2, 7, 4), np.float32)
        with pytest.raises(osp.InputError, match=r"'B'.*set 'B' to 2"):
            m.run({"q": q, "k": kv, "v": kv})


@pytest.mark.parametrize("mutate,match", [
    (lambda t: t.replace("onnxstream-graph 1", "onnxstream-graph 9"), r"graph.txt:1: graph format version 9"),
    (lambda t: "hello\n" + t, r"graph.txt:1: not an onnxstream graph file"),
    (lambda t: t.replace("node Relu", "nod Relu"), r"graph.txt:\d+: unknown line kind 'nod'"),
    (lambda t: t.replace('{"pads":[1,1,1,1]}', '{"pads":[1,1,1'), r"graph.txt:\d+: .*line: 'node Conv"),
    (lambda t: t.replace("node Relu Relu_1 c1 r1", "node Relu Relu_1 nope r1"),
     r"node 'Relu_1' \(Relu\) reads 'nope'"),
    (lambda t: t.replace("weight w2 float32 [16,16,3,3]", "weight w2 float33 [16,16,3,3]"),
     r"graph.txt:\d+: unknown dtype 'float33'"),
    (lambda t: t.replace("weight w2 float32 [16,16,3,3]", "weight w2 float32 [16,x16,3,3]"),
     r"graph.txt:\d+: expected a static shape"),
    (lambda t: t[: len(t) // 2], r"graph.txt"),
])
def test_graph_file_that_does_not_parse(converted, mutate, match):
    p = converted / "graph.txt"
    p.write_text(mutate(p.read_text()))
    with pytest.raises(osp.GraphFormatError, match=match):
        osp.Model(str(converted))


def test_binary_garbage_graph_file(converted):
    (converted / "graph.txt").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(osp.GraphFormatError, match="graph.txt"):
        osp.Model(str(converted))


def test_op_failure_names_the_node(tmp_path):
    i64 = onnx.numpy_helper.from_array(np.array([7, -1], np.int64), "shape")
    model = mb.make_model([helper.make_node("Reshape", ["x", "shape"], ["y"], name="the_reshape")],
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [i64])
    convert_model_proto(model, str(tmp_path / "m"))
    with osp.Model(str(tmp_path / "m")) as m:
        assert m.run({"x": np.ones(14, np.float32)})["y"].shape == (7, 2)
        with pytest.raises(osp.OpError, match=r"node 'the_reshape' \(Reshape\).*float32\[10\]"):
            m.run({"x": np.ones(10, np.float32)})


def test_converter_errors(tmp_path):
    model = mb.conv_mlp(channels=64)
    path = tmp_path / "ext" / "model.onnx"
    path.parent.mkdir()
    onnx.save(model, str(path), save_as_external_data=True, location="data.bin", size_threshold=64)
    with pytest.raises(osp.ConversionError, match="--fix-shape nope: the model has no input 'nope'"):
        convert(str(path), str(tmp_path / "o"), fix_shapes={"nope": [1]}, log=lambda m: None)
    with pytest.raises(osp.ConversionError, match="--fix-shape x: rank 2 given"):
        convert(str(path), str(tmp_path / "o"), fix_shapes={"x": [1, 3]}, log=lambda m: None)
    with open(path.parent / "data.bin", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(osp.ConversionError, match=r"initializer '\w+'.*truncated"):
        convert(str(path), str(tmp_path / "o"), log=lambda m: None)
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(osp.ConversionError, match="cannot load ONNX model"):
        convert(str(tmp_path / "bad.onnx"), str(tmp_path / "o2"), log=lambda m: None)


def test_cli_reports_errors_in_one_line(converted, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((1, 4, 8, 8), np.float32))
    r = subprocess.run([sys.executable, "-m", "onnxstream_py", "run", str(converted),
                        "--input", f"x={tmp_path / 'x.npy'}"], capture_output=True, text=True)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "input 'x'" in r.stderr and "dim 1 must be 3" in r.stderr


def test_onnx_file_given_instead_of_converted_dir(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(mb.conv_mlp(), str(path))
    with pytest.raises(osp.EngineError, match=r"is an ONNX file; convert it once with `onnxstream convert"):
        osp.Model(str(path))
