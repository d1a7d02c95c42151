"""Giving the C allocator's free memory back to the OS (glibc's malloc_trim, through ctypes).

numpy's arrays come from malloc. glibc serves a request of at least M_MMAP_THRESHOLD bytes
with its own mapping, unmapped on free, but it raises that threshold to the size of each
mapped block freed, up to 32 MiB: after the first large array dies, arrays below 32 MiB come
from the heap, and a freed heap block stays in the process (RSS) until reused. Streaming a
model frees and allocates tens of MB per op, so that retained memory was ~60 MiB of the
SD 1.5 UNet's streaming peak RSS. ``malloc_trim(0)`` returns every free heap page.

Measured alternatives (UNet, DiskNoCache with weight slicing, peak RSS over 2 runs, under
load): fixing the threshold at 256 KiB (``mallopt(M_MMAP_THRESHOLD)``: every large array its
own mapping) 133 MiB, but ~400k more page faults per run (+1.2 s of system time per run);
trimming after every op that freed something (over 16 MiB held) 151 MiB for +2.5 s of system
time; trimming only when more than 48 MiB is held beyond the live tensors (the interpreter's
policy) 145-151 MiB for no measurable system time (Ram provider: 70 trims, 66 ms, in the
first run while it fills; 6 trims, 8 ms, in later runs). Without trimming: 190 MiB.

Arenas: glibc gives each thread that allocates its own arena (up to 8 per core), and memory
freed into one arena serves only that arena. Since the Winograd GEMMs' XNNPACK operators are
created (their weights packed) on the pool's threads, the UNet's DiskNoCache peak RSS rose
from 148-153 to 160-162 MiB; with one arena for the process (``limit_arenas``, set by the
interpreter together with the trim policy) it is 150-153 MiB again (148-149 with
MALLOC_ARENA_MAX=1 from the process's start). The engine allocates a
few times per op, so a shared arena's lock is never contended measurably.
"""
from __future__ import annotations

import ctypes
import platform

_libc = None


def _glibc():
    global _libc
    if _libc is None:
        _libc = False
        if platform.system() == "Linux":
            try:
                lib = ctypes.CDLL(None)
                if hasattr(lib, "gnu_get_libc_version") and hasattr(lib, "malloc_trim"):
                    lib.malloc_trim.argtypes = [ctypes.c_size_t]
                    lib.malloc_trim.restype = ctypes.c_int
                    _libc = lib
            except OSError:
                pass
    return _libc


def available() -> bool:
    """Whether the C library is glibc (other allocators have their own policies)."""
    return bool(_glibc())


M_ARENA_MAX = -8     # mallopt parameter (glibc malloc.h)


def limit_arenas(count: int = 1) -> bool:
    """Let at most ``count`` malloc arenas exist from now on (threads that have not allocated
    yet share them); False if the C library is not glibc."""
    lib = _glibc()
    if not lib or not hasattr(lib, "mallopt"):
        return False
    return bool(lib.mallopt(M_ARENA_MAX, int(count)))


def trim() -> bool:
    """Give free heap pages back to the OS now (glibc malloc_trim(0)); False if unavailable."""
    lib = _glibc()
    if not lib:
        return False
    lib.malloc_trim(0)
    return True
