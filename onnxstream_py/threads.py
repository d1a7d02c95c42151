"""Thread count of numpy's bundled OpenBLAS, set at run time.

RunOptions.threads must take effect for library users who imported numpy long before
creating a Model, so this finds the OpenBLAS that numpy loaded and calls its
set_num_threads entry point (plain and scipy-openblas symbol spellings). On a build
without OpenBLAS it does nothing and says so once.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import warnings

_SYMBOLS = ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
            "scipy_openblas_set_num_threads", "openblas_set_num_threads64_")
_GET_SYMBOLS = ("openblas_get_num_threads", "scipy_openblas_get_num_threads64_",
                "scipy_openblas_get_num_threads", "openblas_get_num_threads64_")
_setter = None
_getter = None
_searched = False


def _find_setter():
    global _setter, _getter, _searched
    if _searched:
        return _setter
    _searched = True
    import numpy  # noqa: F401  make sure numpy's BLAS is loaded
    try:
        with open("/proc/self/maps") as f:
            libs = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
    except OSError:
        libs = []
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for sym in _SYMBOLS:
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn.argtypes = [ctypes.c_int]
                fn.restype = None
                _setter = fn
                for get in _GET_SYMBOLS:
                    _getter = getattr(lib, get, None)
                    if _getter is not None:
                        _getter.argtypes = []
                        _getter.restype = ctypes.c_int
                        break
                return fn
    return None


def set_blas_threads(n: int | None) -> bool:
    """Use ``n`` BLAS threads (None: all cores). Returns False if no OpenBLAS was found."""
    fn = _find_setter()
    if fn is None:
        warnings.warn("onnxstream_py: numpy's BLAS is not OpenBLAS; RunOptions.threads is not applied")
        return False
    fn(int(n) if n else (os.cpu_count() or 1))
    return True


@contextlib.contextmanager
def blas_threads_limited(n: int):
    """Run the block with numpy's OpenBLAS on ``n`` threads, restoring the previous count after
    (for ops that call BLAS from several threads of their own: OpenBLAS' thread count is
    process-wide, and a multi-threaded BLAS called from two threads at once serialises).
    Does nothing without OpenBLAS' getter and setter."""
    _find_setter()
    if _setter is None or _getter is None:
        yield
        return
    before = int(_getter())
    _setter(int(n))
    try:
        yield
    finally:
        _setter(before)
