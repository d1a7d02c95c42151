"""Native SlicedAttention: the numpy op's blocks and GEMMs, with each score block's softmax
done in place by the C kernel on the model's pool (two passes over the block instead of
numpy's five). Twin: ops/attention.py SlicedAttention."""
from __future__ import annotations

import numpy as np

from .. import native
from .attention import DOMAIN, _softmax_last_inplace, sliced_attention
from .registry import op


@op("SlicedAttention", domain=DOMAIN, backend="native")
def SlicedAttention(q, kt, v, scale=None, mask=None, *, scale_op="", slices=0, slice_bytes=16 << 20, _ctx):
    pool = _ctx.pool

    def softmax_inplace(s: np.ndarray) -> None:
        if s.dtype == np.float32 and s.flags.c_contiguous and s.size:
            native.softmax_f32(s, out=s, pool=pool)
        else:
            _softmax_last_inplace(s)

    return sliced_attention(q, kt, v, scale, mask, scale_op, slices, slice_bytes, softmax_inplace)
