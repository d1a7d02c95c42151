"""CRC-32 throughput: each native path (native/osn_crc32.c) against zlib.crc32, GB/s.

The weights file checks every tensor with CRC-32 (the HTTP provider on every fetch: 3.4 GB per
SD 1.5 UNet run). Buffers of 1 MiB (the HTTP provider's socket piece, in cache) and 100 MiB
(from memory); each timed for about half a second after one warm-up call.

    python3 scripts/bench_crc.py
"""
from __future__ import annotations

import os
import sys
import time
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from onnxstream_py import native  # noqa: E402

PATHS = {0: "table (portable C)", 1: "PCLMULQDQ, 128-bit", 2: "VPCLMULQDQ, 512-bit (AVX-512)"}


def rate(fn, buf, seconds: float = 0.5) -> float:
    fn(buf)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn(buf)
        n += 1
    return n * len(buf) / (time.perf_counter() - t0) / 1e9


def main() -> None:
    level = native.crc32_level()
    print(f"this CPU's widest path: {level} ({PATHS[level]})\n")
    print("| implementation | 1 MiB GB/s | 100 MiB GB/s |")
    print("|---|---:|---:|")
    bufs = [memoryview(np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8)) for n in (1 << 20, 100 << 20)]
    for lv in range(level + 1):
        rates = [rate(lambda b, lv=lv: native.crc32(b, 0, lv), b, 0.2 if lv == 0 else 0.5) for b in bufs]
        print(f"| native, {PATHS[lv]} | {rates[0]:.1f} | {rates[1]:.1f} |")
    rates = [rate(zlib.crc32, b) for b in bufs]
    print(f"| zlib.crc32 (zlib {zlib.ZLIB_RUNTIME_VERSION}) | {rates[0]:.1f} | {rates[1]:.1f} |")


if __name__ == "__main__":
    main()
