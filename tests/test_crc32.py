"""The native CRC-32 (native/osn_crc32.c, used by the HTTP provider) against its twin zlib.crc32."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

native = pytest.importorskip("onnxstream_py.native")


# every path this CPU has: 0 the table, 1 PCLMULQDQ (64-byte steps), 2 VPCLMULQDQ (256-byte steps)
LEVELS = list(range(native.crc32_level() + 1))


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("start", [0, 0x12345678, 0xFFFFFFFF])
def test_crc32_matches_zlib_on_every_tail_length(start, level):
    """Lengths around every step size (16, 64, 256 bytes) and big ones, unaligned starts."""
    rng = np.random.default_rng(0)
    for n in list(range(0, 600)) + [1000, 4099, 65536 + 13, (1 << 20) + 7]:
        a = rng.integers(0, 256, n + 3, dtype=np.uint8)
        for off in (0, 1, 3):                          # unaligned starts
            view = a[off:off + n]
            assert native.crc32(view, start, level) == zlib.crc32(view.tobytes(), start), (n, off)


def test_crc32_continues_and_accepts_buffers():
    data = np.random.default_rng(1).standard_normal(12345).astype(np.float32)
    raw = data.tobytes()
    assert native.crc32(data) == zlib.crc32(raw)
    assert native.crc32(memoryview(raw)[100:], native.crc32(raw[:100])) == zlib.crc32(raw)
    assert native.crc32(b"") == 0 and native.crc32(b"", 7) == 7
    assert isinstance(native.crc32_fast(), bool) and native.crc32_fast() == (native.crc32_level() > 0)


def test_crc32_bad_input():
    with pytest.raises(ValueError, match="C-contiguous"):
        native.crc32(np.zeros((4, 4), np.uint8)[:, ::2])
    with pytest.raises(ValueError, match="32-bit"):
        native.crc32(b"abc", -1)


@pytest.mark.parametrize("len_b", [0, 1, 3, 4, 15, 64, 4099, 1 << 20, (1 << 20) + 7])
def test_crc32_combine_matches_zlib_of_the_concatenation(len_b):
    """The CRC of a tensor fetched as parallel ranges, from the ranges' CRCs (weights_providers.http)."""
    from weights_providers.http import crc32_combine
    rng = np.random.default_rng(len_b)
    for len_a in (0, 1, 77, 5000):
        a = rng.integers(0, 256, len_a, dtype=np.uint8).tobytes()
        b = rng.integers(0, 256, len_b, dtype=np.uint8).tobytes()
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b), (len_a, len_b)
