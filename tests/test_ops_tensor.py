"""Shape, data-movement and indexing ops against onnxruntime, at the patterns torch exporters
emit (Reshape with 0/-1 for attention heads, Slice with INT64_MAX ends and negative axes,
Split into 2 for GEGLU, Gather of token-embedding rows, reflect Pad in VAE decoders,
shape arithmetic on int64 vectors), awkward sizes (13, 19, 127) and the dtypes the
engine supports (float32, float16, int64, int32, bool). Also checks the memory contract:
view ops share memory with their input, and no op writes into its inputs.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxstream_py import ops
from onnxstream_py.dtypes import numpy_to_onnx

from engine_runner import run_model

RNG = np.random.default_rng(0)
INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min
DTYPES = [np.float32, np.float16, np.int64, np.int32, np.bool_]


def _arr(shape, dtype=np.float32):
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return RNG.random(shape) > 0.5
    if dtype.kind in "iu":
        return RNG.integers(-50, 50, size=shape).astype(dtype)
    return RNG.standard_normal(shape).astype(dtype)


def _i64(*v):
    return np.array(v, dtype=np.int64)


def _check(op_type, inputs: dict, consts: dict | None = None, out_dtypes=None, opset=18, **attrs):
    """Run a one-node model through onnxruntime and onnxstream_py and compare every output.

    ``inputs`` become graph inputs, ``consts`` initializers (as exporters emit shapes/axes);
    dict order is the node's input order, an empty name marks an omitted optional input.
    """
    consts = consts or {}
    names = list(inputs) + list(consts)
    order = attrs.pop("order", names)
    first = next(iter(inputs.values()))
    out_dtypes = out_dtypes or [first.dtype]
    outs = [f"y{i}" for i in range(len(out_dtypes))]
    node = helper.make_node(op_type, order, outs, **attrs)
    g_in = [helper.make_tensor_value_info(n, numpy_to_onnx(v.dtype), v.shape) for n, v in inputs.items()]
    g_out = [helper.make_tensor_value_info(o, numpy_to_onnx(dt), None) for o, dt in zip(outs, out_dtypes)]
    inits = [numpy_helper.from_array(v, n) for n, v in consts.items()]
    model = helper.make_model(helper.make_graph([node], "g", g_in, g_out, inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, inputs)
    got = run_model(model, inputs)
    for g, w in zip(got, want):
        g = np.asarray(g)
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
        if w.dtype.kind == "f":
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
        else:
            np.testing.assert_array_equal(g, w)
    return got


# --------------------------------------------------------------------------- Reshape & co
@pytest.mark.parametrize("dtype", DTYPES)
def test_reshape_attention_heads(dtype):
    # [B, T, C] -> [B, T, heads, C/heads] with 0 and -1, as torch exports view().
    x = _arr((2, 13, 64), dtype)
    _check("Reshape", {"x": x}, {"s": _i64(0, 0, 8, -1)})
    _check("Reshape", {"x": x}, {"s": _i64(-1, 64)})


def test_reshape_allowzero_and_old_opset():
    x = _arr((0, 3, 4))
    _check("Reshape", {"x": x}, {"s": _i64(3, 0, 4)}, allowzero=1)
    _check("Reshape", {"x": _arr((2, 3, 4))}, {"s": _i64(0, 12)}, opset=13)


@pytest.mark.parametrize("dtype", DTYPES)
def test_transpose(dtype):
    x = _arr((2, 13, 8, 19), dtype)
    _check("Transpose", {"x": x}, perm=[0, 2, 1, 3])
    _check("Transpose", {"x": x})


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_flatten(axis):
    _check("Flatten", {"x": _arr((2, 3, 13, 5))}, axis=axis)


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_unsqueeze(opset):
    x = _arr((1, 13, 1, 19))
    if opset < 13:
        _check("Squeeze", {"x": x}, opset=opset, axes=[0, -2])
        _check("Unsqueeze", {"x": _arr((13, 19))}, opset=opset, axes=[0, -1])
    else:
        _check("Squeeze", {"x": x}, {"a": _i64(0, -2)}, opset=opset)
        _check("Unsqueeze", {"x": _arr((13, 19))}, {"a": _i64(0, -1)}, opset=opset)
    _check("Squeeze", {"x": x}, opset=opset)
    # Unsqueeze of a 0-d int64 before Concat: the classic shape-arithmetic pattern.
    _check("Unsqueeze", {"x": np.array(7, dtype=np.int64)}, {"a": _i64(0)})


# --------------------------------------------------------------------------- Concat / Split
@pytest.mark.parametrize("dtype", DTYPES)
def test_concat_channels(dtype):
    # UNet skip connection: cat([h, skip], dim=1).
    a, b = _arr((2, 19, 4, 4), dtype), _arr((2, 13, 4, 4), dtype)
    _check("Concat", {"a": a, "b": b}, axis=1)
    _check("Concat", {"a": a, "b": b.reshape(2, 13, 4, 4)[:, :, :, :]}, axis=-3)


def test_concat_shape_vectors():
    _check("Concat", {"a": _i64(2), "b": _i64(77), "c": _i64()}, {"d": _i64(8, 64)}, axis=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_split_geglu(dtype):
    # GEGLU: hidden, gate = proj(x).chunk(2, dim=-1), in the three opset spellings.
    x = _arr((2, 13, 2 * 19), dtype)
    dts = [np.dtype(dtype)] * 2
    _check("Split", {"x": x}, out_dtypes=dts, opset=11, axis=-1, split=[19, 19])
    _check("Split", {"x": x}, {"s": _i64(19, 19)}, out_dtypes=dts, opset=13, axis=-1)
    _check("Split", {"x": x}, out_dtypes=dts, opset=18, axis=-1, num_outputs=2)
    _check("Split", {"x": x}, out_dtypes=dts, opset=13, axis=2)


def test_split_uneven_num_outputs():
    x = _arr((13, 5))
    _check("Split", {"x": x}, out_dtypes=[np.dtype(np.float32)] * 3, opset=18, axis=0, num_outputs=3)
    _check("Split", {"x": x}, {"s": _i64(2, 11)}, out_dtypes=[np.dtype(np.float32)] * 2, opset=18)


# --------------------------------------------------------------------------- Slice
SLICE_CASES = {
    "int64_max_end": ((1, 77, 64), [1], [INT64_MAX], [1], None),
    "negative_axis": ((2, 13, 38), [19], [INT64_MAX], [-1], None),
    "first_half_last_axis": ((2, 13, 38), [0], [19], [-1], [1]),
    "negative_step": ((2, 13, 19), [-1], [INT64_MIN], [1], [-1]),
    "step_2_multi_axis": ((4, 13, 19), [0, 1, -3], [INT64_MAX, 12, 100], [2, 0, 1], [1, 2, 3]),
    "reverse_partial": ((127,), [100], [10], [0], [-7]),
    "clamped_starts": ((13, 19), [-100, 50], [100, 60], [0, 1], None),
    "cls_token": ((2, 197, 32), [0], [1], [1], None),
}


@pytest.mark.parametrize("name", list(SLICE_CASES))
def test_slice(name):
    shape, starts, ends, axes, steps = SLICE_CASES[name]
    consts = {"st": _i64(*starts), "en": _i64(*ends), "ax": _i64(*axes)}
    if steps is not None:
        consts["sp"] = _i64(*steps)
    _check("Slice", {"x": _arr(shape)}, consts)


@pytest.mark.parametrize("dtype", [np.float16, np.int64, np.int32, np.bool_])
def test_slice_dtypes(dtype):
    _check("Slice", {"x": _arr((13, 19), dtype)}, {"st": _i64(1, -5), "en": _i64(INT64_MAX, -1)})


def test_slice_opset1_attributes():
    _check("Slice", {"x": _arr((13, 19))}, opset=9, starts=[1, 2], ends=[1000, -1], axes=[0, 1])


# --------------------------------------------------------------------------- Expand / Tile
@pytest.mark.parametrize("dtype", DTYPES)
def test_expand_causal_mask(dtype):
    _check("Expand", {"m": _arr((1, 1, 13, 13), dtype)}, {"s": _i64(2, 1, 13, 13)})


def test_expand_bidirectional():
    _check("Expand", {"x": _arr((3, 1))}, {"s": _i64(2, 1, 6)})
    _check("Expand", {"x": _arr((3, 4))}, {"s": _i64(1, 1)})
    _check("Expand", {"x": np.array(3, dtype=np.int64)}, {"s": _i64(19)})


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.bool_])
def test_tile(dtype):
    _check("Tile", {"x": _arr((2, 3, 5), dtype)}, {"r": _i64(1, 4, 2)})


# --------------------------------------------------------------------------- Pad
PAD_CASES = {
    "reflect_vae": ((1, 3, 13, 19), "reflect", [0, 0, 1, 1, 0, 0, 1, 1]),
    "reflect_wide": ((1, 2, 13, 19), "reflect", [0, 0, 3, 2, 0, 0, 2, 5]),
    "edge": ((1, 2, 13, 19), "edge", [0, 0, 2, 1, 0, 0, 1, 2]),
    "constant_asym_downsample": ((1, 4, 13, 19), "constant", [0, 0, 0, 0, 0, 0, 1, 1]),
    "constant_negative_crop": ((2, 3, 13, 19), "constant", [0, -1, 2, -3, 1, 0, -2, 4]),
}


@pytest.mark.parametrize("name", list(PAD_CASES))
def test_pad(name):
    shape, mode, pads = PAD_CASES[name]
    _check("Pad", {"x": _arr(shape)}, {"p": _i64(*pads)}, mode=mode)


def test_pad_constant_value_and_dtypes():
    _check("Pad", {"x": _arr((13, 19))}, {"p": _i64(1, 2, 3, 4), "v": np.array(1.5, np.float32)})
    _check("Pad", {"x": _arr((13, 19), np.float16)}, {"p": _i64(1, 2, 3, 4), "v": np.array(-2, np.float16)})
    _check("Pad", {"x": _arr((13, 19), np.int64)}, {"p": _i64(0, 2, 3, 0), "v": np.array(7, np.int64)})
    _check("Pad", {"x": _arr((13, 19), np.int32)}, {"p": _i64(0, 2, 3, 0)}, mode="edge")


def test_pad_axes_and_wrap():
    x = _arr((2, 13, 19))
    _check("Pad", {"x": x}, {"p": _i64(1, 2, 3, 4), "v": np.array(0.5, np.float32), "a": _i64(-1, 1)})
    _check("Pad", {"x": x}, {"p": _i64(2, 3), "a": _i64(2)}, order=["x", "p", "", "a"], mode="reflect")
    consts = {"p": _i64(2, 3), "a": _i64(2)}
    _check("Pad", {"x": x}, consts, order=["x", "p", "", "a"], opset=19, mode="wrap")


@pytest.mark.parametrize("mode", ["reflect", "edge", "wrap"])
def test_pad_crop_and_pad_same_axis(mode):
    # Cropping happens before the non-constant modes read their borders.
    _check("Pad", {"x": _arr((3, 13, 19))}, {"p": _i64(0, -2, 3, 0, 4, -5)}, opset=19, mode=mode)


def test_pad_old_opsets():
    x = _arr((1, 3, 13, 19))
    _check("Pad", {"x": x}, opset=10, pads=[0, 0, 1, 2, 0, 0, 2, 1], mode="reflect")
    _check("Pad", {"x": x}, {"p": _i64(0, 0, 1, 2, 0, 0, 2, 1)}, opset=11, mode="edge")


# --------------------------------------------------------------------------- Shape arithmetic
@pytest.mark.parametrize("dtype", DTYPES)
def test_shape_size(dtype):
    x = _arr((2, 4, 13, 19), dtype)
    i64 = [np.dtype(np.int64)]
    _check("Shape", {"x": x}, out_dtypes=i64, opset=13)
    _check("Shape", {"x": x}, out_dtypes=i64, opset=15, start=-2)
    _check("Shape", {"x": x}, out_dtypes=i64, opset=15, start=1, end=-1)
    _check("Shape", {"x": x}, out_dtypes=i64, opset=15, start=-10, end=10)
    _check("Size", {"x": x}, out_dtypes=i64)


def test_constant_of_shape():
    s = _i64(2, 13, 19)
    _check("ConstantOfShape", {"s": s}, out_dtypes=[np.dtype(np.float32)])
    for v in (np.array([1], np.int64), np.array([-1.5], np.float16), np.array([True])):
        _check("ConstantOfShape", {"s": s}, out_dtypes=[v.dtype], value=numpy_helper.from_array(v))
    _check("ConstantOfShape", {"s": _i64()}, out_dtypes=[np.dtype(np.float32)])


@pytest.mark.parametrize("kind", ["value", "value_float", "value_floats", "value_int", "value_ints"])
def test_constant(kind):
    v = {"value": numpy_helper.from_array(_arr((13, 2), np.float16)), "value_float": 2.5,
         "value_floats": [1.0, -2.0], "value_int": 7, "value_ints": [2, 77, -1]}[kind]
    dt = {"value": np.float16, "value_float": np.float32, "value_floats": np.float32}.get(kind, np.int64)
    node = helper.make_node("Constant", [], ["y"], **{kind: v})
    g = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", numpy_to_onnx(dt), None)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 9
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})
    got = run_model(model, {})
    assert got[0].dtype == want[0].dtype and got[0].shape == want[0].shape
    np.testing.assert_array_equal(got[0], want[0])


RANGE_CASES = {
    "int64_positions": (0, 77, 1, np.int64),
    "int32_negative": (10, -13, -3, np.int32),
    "float_timestep_freqs": (0.0, 160.0, 1.0, np.float32),
    "float_fraction": (1.0, 2.0, 0.1, np.float32),
    "empty": (5, 5, 1, np.int64),
}


@pytest.mark.parametrize("name", list(RANGE_CASES))
def test_range(name):
    s, l, d, dt = RANGE_CASES[name]
    inputs = {"s": np.array(s, dt), "l": np.array(l, dt), "d": np.array(d, dt)}
    _check("Range", inputs)


# --------------------------------------------------------------------------- Identity / Dropout
@pytest.mark.parametrize("dtype", DTYPES)
def test_identity(dtype):
    _check("Identity", {"x": _arr((13, 19), dtype)})


@pytest.mark.parametrize("opset", [10, 13])
def test_dropout_inference(opset):
    x = _arr((2, 13, 19))
    _check("Dropout", {"x": x}, opset=opset)
    _check("Dropout", {"x": x}, {"r": np.array(0.3, np.float32)}, opset=13)
    # onnxruntime returns an all-False mask at opset 10; the spec and the onnx reference
    # say the inference mask is all ones, so the mask is checked against the spec.
    y, mask = _call("Dropout", x, opset=opset, _noutputs=2)
    assert y is x and mask.dtype == np.bool_ and mask.shape == x.shape and mask.all()
    _check("Dropout", {"x": x}, out_dtypes=[x.dtype, np.dtype(np.bool_)], opset=13)


def test_dropout_training_raises():
    impl = ops.lookup("Dropout", 13)
    x = _arr((3, 4))
    with pytest.raises(NotImplementedError, match="Dropout"):
        impl.fn(x, np.array(0.5, np.float32), np.array(True), _noutputs=1)
    y, mask = impl.fn(x, np.array(0.0, np.float32), np.array(True), _noutputs=2)
    assert np.array_equal(y, x) and mask.all() and mask.dtype == np.bool_


# --------------------------------------------------------------------------- Rearrangements
@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space(mode):
    _check("DepthToSpace", {"x": _arr((2, 12, 13, 7))}, blocksize=2, mode=mode)


def test_space_to_depth():
    _check("SpaceToDepth", {"x": _arr((2, 3, 12, 14))}, blocksize=2)


@pytest.mark.parametrize("upper", [0, 1])
@pytest.mark.parametrize("k", [None, 1, -2])
def test_trilu(upper, k):
    x = _arr((2, 13, 19))
    if k is None:
        _check("Trilu", {"x": x}, opset=14, upper=upper)
    else:
        _check("Trilu", {"x": x}, {"k": np.array(k, np.int64)}, opset=14, upper=upper)


def test_eyelike():
    _check("EyeLike", {"x": _arr((13, 19))})
    _check("EyeLike", {"x": _arr((5, 5), np.int64)}, out_dtypes=[np.dtype(np.float32)],
           dtype=TensorProto.FLOAT, k=-2)


def test_reverse_sequence():
    x = _arr((13, 4, 3))
    _check("ReverseSequence", {"x": x, "l": _i64(13, 1, 0, 7)}, batch_axis=1, time_axis=0)
    _check("ReverseSequence", {"x": x.transpose(1, 0, 2).copy(), "l": _i64(2, 13, 5, 1)},
           batch_axis=0, time_axis=1)


def test_compress():
    x = _arr((13, 19))
    _check("Compress", {"x": x, "c": RNG.random(19) > 0.5}, axis=-1)
    _check("Compress", {"x": x, "c": RNG.random(7) > 0.5}, axis=0)
    _check("Compress", {"x": x, "c": RNG.random(100) > 0.5})


# --------------------------------------------------------------------------- Gather family
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_gather_token_embedding(dtype):
    table = _arr((1000, 64), dtype)  # [vocab, hidden], a small CLIP token_embedding
    ids = RNG.integers(0, 1000, size=(2, 77)).astype(np.int64)
    _check("Gather", {"ids": ids}, {"w": table}, out_dtypes=[table.dtype], order=["w", "ids"], axis=0)


def test_gather_shape_arithmetic():
    # Shape -> Gather(scalar index) -> Unsqueeze -> Concat, as dynamic exports do.
    shape = _i64(2, 4, 64, 64)
    _check("Gather", {"s": shape}, {"i": np.array(0, np.int64)})
    _check("Gather", {"s": shape}, {"i": np.array(-1, np.int64)})
    _check("Gather", {"s": shape}, {"i": _i64(2, 3)})


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_axes_negative_indices(dtype):
    x = _arr((3, 13, 19), dtype)
    _check("Gather", {"x": x}, {"i": np.array([[-1, 0], [5, -13]], np.int64)}, axis=1)
    _check("Gather", {"x": x}, {"i": np.array(-2, np.int32)}, axis=-1)


def test_gather_elements():
    x = _arr((4, 13, 19))
    idx = RNG.integers(-13, 13, size=(4, 5, 19)).astype(np.int64)
    _check("GatherElements", {"x": x, "i": idx}, axis=1)
    _check("GatherElements", {"x": x, "i": RNG.integers(0, 4, size=(2, 13, 19)).astype(np.int64)}, axis=0)


def test_gather_nd():
    x = _arr((2, 5, 13, 3))
    _check("GatherND", {"x": x, "i": RNG.integers(0, 2, size=(4, 2)).astype(np.int64)})
    _check("GatherND", {"x": x, "i": RNG.integers(-5, 5, size=(2, 7, 1)).astype(np.int64)}, batch_dims=1)
    _check("GatherND", {"x": x, "i": RNG.integers(0, 3, size=(2, 5, 2)).astype(np.int64)}, batch_dims=2)


# --------------------------------------------------------------------------- Scatter family
@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_nd(reduction):
    x = _arr((13, 4, 5))
    idx = np.array([[1], [7], [1], [12]], np.int64) if reduction != "none" else _i64(1, 7, -1).reshape(3, 1)
    upd = _arr(idx.shape[:1] + (4, 5))
    _check("ScatterND", {"x": x, "i": idx, "u": upd}, reduction=reduction)


def test_scatter_nd_kv_cache_slot():
    cache = _arr((1, 8, 19, 16), np.float16)
    idx = np.array([[[0, h, 5] for h in range(8)]], np.int64)  # write position 5 of every head
    _check("ScatterND", {"c": cache, "i": idx, "u": _arr((1, 8, 16), np.float16)})


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_elements(reduction):
    x = _arr((5, 13))
    if reduction == "none":
        idx = np.stack([RNG.permutation(13)[:6] for _ in range(5)]).astype(np.int64) - 6
    else:
        idx = RNG.integers(0, 13, size=(5, 6)).astype(np.int64)
    _check("ScatterElements", {"x": x, "i": idx, "u": _arr((5, 6))}, axis=-1, reduction=reduction)


# --------------------------------------------------------------------------- NonZero / TopK / OneHot / Unique
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.bool_])
def test_nonzero(dtype):
    x = _arr((4, 13), dtype) * (RNG.random((4, 13)) > 0.5).astype(dtype)
    _check("NonZero", {"x": x}, out_dtypes=[np.dtype(np.int64)])


@pytest.mark.parametrize("largest", [0, 1])
@pytest.mark.parametrize("axis", [-1, 0])
def test_topk_with_ties(largest, axis):
    x = RNG.integers(0, 5, size=(19, 13)).astype(np.float32)  # many ties: lower index first
    _check("TopK", {"x": x}, {"k": _i64(4)}, out_dtypes=[x.dtype, np.dtype(np.int64)],
           axis=axis, largest=largest, sorted=1)


def test_topk_int_and_logits():
    x = _arr((2, 127))
    _check("TopK", {"x": x}, {"k": _i64(50)}, out_dtypes=[x.dtype, np.dtype(np.int64)])
    xi = _arr((3, 19), np.int64)
    _check("TopK", {"x": xi}, {"k": _i64(19)}, out_dtypes=[xi.dtype, np.dtype(np.int64)], largest=0)


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_onehot(axis):
    idx = np.array([[0, 3, -1], [9, -10, 12]], np.int64)  # 12 is out of range -> all off
    _check("OneHot", {"i": idx}, {"d": np.array(10, np.int64), "v": np.array([0.5, 2.0], np.float32)},
           out_dtypes=[np.dtype(np.float32)], axis=axis)
    # (indices, depth, values) dtype combos onnxruntime implements.
    _check("OneHot", {"i": idx.astype(np.int32)}, {"d": np.array([10.0], np.float32),
           "v": np.array([0, 1], np.float32)}, out_dtypes=[np.dtype(np.float32)], axis=axis)
    _check("OneHot", {"i": idx}, {"d": np.array(10, np.int64), "v": np.array([0, 1], np.int64)},
           out_dtypes=[np.dtype(np.int64)], axis=axis)
    _check("OneHot", {"i": idx.astype(np.float32)}, {"d": np.array(10.0, np.float32),
           "v": np.array([-1, 3], np.float32)}, out_dtypes=[np.dtype(np.float32)], axis=axis)


@pytest.mark.parametrize("sorted_", [0, 1])
@pytest.mark.parametrize("axis", [None, 0])
def test_unique(sorted_, axis):
    x = RNG.integers(0, 4, size=(13, 2)).astype(np.float32)
    kw = {"sorted": sorted_} if axis is None else {"sorted": sorted_, "axis": axis}
    dts = [np.dtype(np.float32)] + [np.dtype(np.int64)] * 3
    _check("Unique", {"x": x}, out_dtypes=dts, opset=11, **kw)


# --------------------------------------------------------------------------- memory contract
def _call(op_type, *args, opset=18, **kw):
    impl = ops.lookup(op_type, opset)
    if impl.wants_noutputs:
        kw.setdefault("_noutputs", 1)
    return impl.fn(*args, **kw)


def test_view_ops_share_memory():
    x = _arr((2, 13, 8, 19))
    assert np.shares_memory(_call("Reshape", x, _i64(0, 0, -1)), x)
    assert np.shares_memory(_call("Transpose", x, perm=[0, 2, 1, 3]), x)
    assert np.shares_memory(_call("Slice", x, _i64(1), _i64(INT64_MAX), _i64(-1)), x)
    assert np.shares_memory(_call("Squeeze", x[:1], _i64(0)), x)
    assert np.shares_memory(_call("Unsqueeze", x, _i64(0)), x)
    assert all(np.shares_memory(p, x) for p in _call("Split", x, num_outputs=2, axis=-1, _noutputs=2))
    assert np.shares_memory(_call("Gather", x, np.array(1, np.int64)), x)
    assert _call("Identity", x) is x


def test_no_op_writes_its_inputs():
    x = _arr((5, 13))
    ref = x.copy()
    idx = RNG.integers(0, 13, size=(5, 6)).astype(np.int64)
    _call("ScatterElements", x, idx, _arr((5, 6)), axis=1, reduction="add")
    _call("ScatterND", x, np.array([[1], [3]], np.int64), _arr((2, 13)), reduction="mul")
    _call("Pad", x, _i64(1, 1, 1, 1), mode="reflect")
    _call("ReverseSequence", x, _i64(*range(13))[:13] % 5, batch_axis=1, time_axis=0)
    assert np.array_equal(x, ref)


def test_constant_is_read_only():
    v = np.arange(4, dtype=np.float32)
    out = _call("Constant", value=v)
    assert not out.flags.writeable and v.flags.writeable


def test_errors_name_the_op():
    with pytest.raises(ValueError, match="Reshape"):
        _call("Reshape", _arr((2, 3)), _i64(4, -1))
    with pytest.raises(ValueError, match="Gather"):
        _call("Gather", _arr((2, 3)), _i64(5))
    with pytest.raises(ValueError, match="Split"):
        _call("Split", _arr((2, 3)), _i64(1, 1), axis=1, _noutputs=2)
