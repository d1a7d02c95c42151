"""The native CRC-32 (native/osn_crc32.c, used by the HTTP provider) against its twin zlib.crc32."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

native = pytest.importorskip("onnxstream_py.native")


@pytest.mark.parametrize("start", [0, 0x12345678, 0xFFFFFFFF])
def test_crc32_matches_zlib_on_every_tail_length(start):
    rng = np.random.default_rng(0)
    for n in list(range(0, 200)) + [1000, 4099, 65536 + 13, (1 << 20) + 7]:
        a = rng.integers(0, 256, n + 3, dtype=np.uint8)
        for off in (0, 1, 3):                          # unaligned starts
            view = a[off:off + n]
            assert native.crc32(view, start) == zlib.crc32(view.tobytes(), start), (n, off)


def test_crc32_continues_and_accepts_buffers():
    data = np.random.default_rng(1).standard_normal(12345).astype(np.float32)
    raw = data.tobytes()
    assert native.crc32(data) == zlib.crc32(raw)
    assert native.crc32(memoryview(raw)[100:], native.crc32(raw[:100])) == zlib.crc32(raw)
    assert native.crc32(b"") == 0 and native.crc32(b"", 7) == 7
    assert isinstance(native.crc32_fast(), bool)


def test_crc32_bad_input():
    with pytest.raises(ValueError, match="C-contiguous"):
        native.crc32(np.zeros((4, 4), np.uint8)[:, ::2])
    with pytest.raises(ValueError, match="32-bit"):
        native.crc32(b"abc", -1)
