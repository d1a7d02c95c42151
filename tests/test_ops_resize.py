"""Resize and Upsample against onnxruntime: nearest 2x as the SD VAE decoder and YOLO use
it, bilinear/bicubic as torchvision-style exports use it, every coordinate mode and
nearest rounding on awkward sizes (13, 19), float16 and uint8; plus a tracemalloc check
that integer-factor nearest upsampling allocates only its output.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnxstream_py import ops
from onnxstream_py.dtypes import numpy_to_onnx

from engine_runner import run_model

RNG = np.random.default_rng(0)


def _resize_model(x, opset, op_type="Resize", roi=None, scales=None, sizes=None, **attrs):
    """One Resize/Upsample node; roi/scales/sizes are initializers ("" when absent).
    Upsample and Resize-10 take (X, scales) only.
    """
    inits, names = [], ["x"]
    legacy = op_type == "Upsample" or opset < 11
    slots = (("scales", scales),) if legacy else (("roi", roi), ("scales", scales), ("sizes", sizes))
    for name, v in slots:
        if v is None:
            names.append("")
            continue
        inits.append(numpy_helper.from_array(np.asarray(v), name))
        names.append(name)
    while names[-1] == "":
        names.pop()
    t = numpy_to_onnx(x.dtype)
    node = helper.make_node(op_type, names, ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", t, x.shape)],
                              [helper.make_tensor_value_info("y", t, None)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _compare(model, x, rtol=1e-5, atol=1e-5):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})[0]
    got = run_model(model, {"x": x})[0]
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    if want.dtype == np.float16:
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=2e-3, atol=2e-3)
    elif want.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    else:
        np.testing.assert_array_equal(got, want)


def _img(shape, dtype=np.float32):
    if np.dtype(dtype).kind in "iu":
        return RNG.integers(0, 255, shape).astype(dtype)
    return RNG.standard_normal(shape).astype(dtype)


F32 = np.float32


# --------------------------------------------------------------------------- nearest
@pytest.mark.parametrize("ctm,nearest_mode", [("half_pixel", "round_prefer_floor"),  # ONNX defaults (SD VAE)
                                              ("asymmetric", "floor"),  # torch nn.Upsample export (YOLO)
                                              ("align_corners", "round_prefer_ceil"),
                                              ("pytorch_half_pixel", "ceil")])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.uint8])
def test_nearest_2x(ctm, nearest_mode, dtype):
    x = _img((1, 16, 13, 19), dtype)
    m = _resize_model(x, 13, scales=np.array([1, 1, 2, 2], F32), mode="nearest",
                      coordinate_transformation_mode=ctm, nearest_mode=nearest_mode)
    _compare(m, x)


@pytest.mark.parametrize("ctm", ["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel",
                                 "tf_half_pixel_for_nn"])
@pytest.mark.parametrize("nearest_mode", ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"])
# Sizes chosen so that no source coordinate is an exact .0/.5 tie: there floor/ceil and
# round_* depend on the last ulp, and we compute coordinates in float64 like the ONNX
# reference while onnxruntime uses float32.
@pytest.mark.parametrize("sizes", [(19, 13), (8, 30), (13, 19)])
def test_nearest_sizes(ctm, nearest_mode, sizes):
    x = _img((2, 3, 13, 19))
    m = _resize_model(x, 11, roi=np.zeros(0, F32), scales=np.zeros(0, F32),
                      sizes=np.array((2, 3) + sizes, np.int64), mode="nearest",
                      coordinate_transformation_mode=ctm, nearest_mode=nearest_mode)
    _compare(m, x)


@pytest.mark.parametrize("scales", [(1, 1, 3, 2), (1, 1, 0.5, 0.5), (1, 1, 1.5, 0.75), (2, 1, 1, 2)])
def test_nearest_scales_fractional_and_batch_axis(scales):
    x = _img((2, 5, 12, 16))
    m = _resize_model(x, 13, scales=np.array(scales, F32), mode="nearest")
    _compare(m, x)


def test_nearest_rank5_and_rank3():
    x = _img((1, 2, 4, 5, 6))
    _compare(_resize_model(x, 13, scales=np.array([1, 1, 2, 2, 2], F32), mode="nearest"), x)
    x = _img((2, 19, 13))
    _compare(_resize_model(x, 13, scales=np.array([1, 1, 2], F32), mode="nearest",
                           coordinate_transformation_mode="asymmetric", nearest_mode="floor"), x)


# --------------------------------------------------------------------------- linear / cubic
@pytest.mark.parametrize("ctm", ["half_pixel", "align_corners", "pytorch_half_pixel", "asymmetric"])
@pytest.mark.parametrize("sizes", [(26, 38), (19, 13), (7, 5), (1, 19)])
def test_bilinear_sizes(ctm, sizes):
    x = _img((2, 3, 13, 19))
    m = _resize_model(x, 13, sizes=np.array((2, 3) + sizes, np.int64), mode="linear",
                      coordinate_transformation_mode=ctm)
    _compare(m, x)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_bilinear_2x_scales(dtype):
    x = _img((1, 32, 16, 16), dtype)
    _compare(_resize_model(x, 13, scales=np.array([1, 1, 2, 2], F32), mode="linear"), x)


@pytest.mark.parametrize("ctm", ["half_pixel", "align_corners", "pytorch_half_pixel", "asymmetric"])
@pytest.mark.parametrize("a,exclude_outside", [(-0.75, 0), (-0.5, 1)])
@pytest.mark.parametrize("sizes", [(26, 38), (9, 7)])
def test_bicubic(ctm, a, exclude_outside, sizes):
    x = _img((1, 3, 13, 19))
    m = _resize_model(x, 13, sizes=np.array((1, 3) + sizes, np.int64), mode="cubic",
                      coordinate_transformation_mode=ctm, cubic_coeff_a=a, exclude_outside=exclude_outside)
    _compare(m, x, atol=2e-5)


def test_trilinear_rank5():
    x = _img((1, 2, 5, 6, 7))
    _compare(_resize_model(x, 13, scales=np.array([1, 1, 2, 1.5, 0.5], F32), mode="linear"), x)


@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_tf_crop_and_resize_extrapolation(mode):
    x = _img((1, 2, 13, 19))
    roi = np.array([0, 0, -0.2, 0.3, 1, 1, 0.8, 1.4], F32)
    m = _resize_model(x, 13, roi=roi, sizes=np.array([1, 2, 9, 11], np.int64), mode=mode,
                      coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=7.5)
    _compare(m, x)


# --------------------------------------------------------------------------- opset variants
@pytest.mark.parametrize("policy", ["stretch", "not_larger", "not_smaller"])
def test_opset18_axes_and_keep_aspect_ratio(policy):
    x = _img((1, 3, 13, 19))
    m = _resize_model(x, 18, sizes=np.array([40, 30], np.int64), mode="linear", axes=[2, 3],
                      keep_aspect_ratio_policy=policy)
    _compare(m, x)
    m = _resize_model(x, 18, scales=np.array([2.0, 3.0], F32), mode="nearest", axes=[3, 2])
    _compare(m, x)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_opset18_antialias_downsample(mode):
    x = _img((1, 2, 19, 26))
    m = _resize_model(x, 18, sizes=np.array([1, 2, 7, 9], np.int64), mode=mode, antialias=1)
    _compare(m, x, atol=2e-5)


def test_opset19_half_pixel_symmetric():
    x = _img((1, 2, 13, 19))
    m = _resize_model(x, 19, scales=np.array([1, 1, 1.7, 0.6], F32), mode="linear",
                      coordinate_transformation_mode="half_pixel_symmetric")
    _compare(m, x)


# Fractional scales are exact binary fractions: with 1.7, y / 1.7 hits integers where
# float32 (onnxruntime) and float64 (us, the ONNX reference) floor differently.
@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("scales", [(1, 1, 2, 2), (1, 1, 2.5, 3), (1, 1, 0.75, 0.5)])
def test_resize10(mode, scales):
    x = _img((1, 3, 13, 19))
    _compare(_resize_model(x, 10, op_type="Resize", scales=np.array(scales, F32), mode=mode), x)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("scales", [(1, 1, 2, 2), (1, 1, 2.5, 3), (1, 1, 1.25, 1)])
def test_upsample9(mode, scales):
    x = _img((1, 3, 13, 19))
    _compare(_resize_model(x, 9, op_type="Upsample", scales=np.array(scales, F32), mode=mode), x)


def test_upsample7_scales_attribute():
    x = _img((1, 3, 5, 7))
    node = helper.make_node("Upsample", ["x"], ["y"], mode="nearest", scales=[1.0, 1.0, 2.0, 3.0])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, x.shape)],
                              [helper.make_tensor_value_info("y", 1, None)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)])
    m.ir_version = 8
    _compare(m, x)


def test_bad_inputs_raise_clear_errors():
    fn = ops.lookup("Resize", 13).fn
    x = _img((1, 1, 4, 4))
    with pytest.raises(ValueError, match="Resize"):
        fn(x, None, None, None)
    with pytest.raises(ValueError, match="scales"):
        fn(x, None, np.array([2, 2], F32))
    with pytest.raises(ValueError, match="mode"):
        fn(x, None, np.array([1, 1, 2, 2], F32), mode="area")


# --------------------------------------------------------------------------- memory
def test_nearest_2x_allocates_only_the_output():
    x = _img((1, 64, 64, 64))
    fn = ops.lookup("Resize", 13).fn
    scales = np.array([1, 1, 2, 2], F32)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        y = fn(x, None, scales)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 1.05 * y.nbytes, f"peak {peak / 2**20:.1f} MiB for a {y.nbytes / 2**20:.1f} MiB output"
    np.testing.assert_array_equal(y, np.repeat(np.repeat(x, 2, axis=2), 2, axis=3))
