"""Channels-last activations, carried by strides.

An activation keeps its ONNX (NCHW) shape everywhere, but its memory may be NHWC: it is then
the ``transpose(0, 3, 1, 2)`` view of a C-contiguous [N, H, W, C] buffer. Native ops that
prefer channels-last (XNNPACK's convolution, GroupNorm) detect that layout from the strides,
work on the buffer without a transpose, and hand their output back in the same layout, so a
chain of convolution-family ops never transposes between them.

Trade-off: no plan pass decides layouts and nothing else in the engine needs to know. Every
numpy op is correct on any strides, so a consumer that needs NCHW pays one copy at most
(numpy makes it, e.g. a Reshape that cannot be a view), which is the transpose the producer
saved. Elementwise ufuncs keep their input's memory order, so bias adds and activations
between convolutions stay channels-last.
"""
from __future__ import annotations

import numpy as np


def is_nhwc(a) -> bool:
    """True for a rank-4 array whose memory is a C-contiguous [N, H, W, C] buffer (and which is
    not also plain C-contiguous, as happens when C == 1 or H * W == 1)."""
    return (isinstance(a, np.ndarray) and a.ndim == 4 and not a.flags.c_contiguous
            and a.transpose(0, 2, 3, 1).flags.c_contiguous)


def nhwc_buffer(a: np.ndarray) -> np.ndarray:
    """The [N, H, W, C] C-contiguous view of an NCHW-shaped channels-last array (or of any array
    ``is_nhwc`` accepts); raises if the memory is not laid out that way."""
    v = a.transpose(0, 2, 3, 1)
    if not v.flags.c_contiguous:
        raise ValueError(f"array of shape {a.shape} and strides {a.strides} is not channels-last")
    return v


def nhwc_empty(shape, dtype) -> np.ndarray:
    """An uninitialised array of NCHW ``shape`` whose memory is NHWC."""
    n, c, h, w = shape
    return np.empty((n, h, w, c), dtype).transpose(0, 3, 1, 2)


def as_nhwc(a: np.ndarray) -> np.ndarray:
    """The [N, H, W, C] contiguous buffer holding ``a`` (NCHW shape): a view when ``a`` is
    already channels-last, else one transposing copy."""
    v = a.transpose(0, 2, 3, 1)
    return v if v.flags.c_contiguous else np.ascontiguousarray(v)
