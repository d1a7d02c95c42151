"""The one module that imports the compiled extension ``onnxstream_py._native``.

It wraps each C function 1:1 and turns every non-zero status into a NativeError naming
the op and the status (``_check``); nothing else in the package touches ``ffi``/``lib``
except through this module. Arrays are validated here, in Python, before any pointer
reaches C (dtype, contiguity, shape), and passed with ``ffi.from_buffer`` (no copies).
"""
from __future__ import annotations

import numpy as np

from .errors import EngineError

APT_PACKAGES = "libxnnpack-dev libpthreadpool-dev"


class NativeUnavailable(EngineError, ImportError):
    """The native extension was not built or its system libraries are missing."""


class NativeError(EngineError):
    """A native call returned an error status."""


try:
    from . import _native
except ImportError as e:   # not built, or libXNNPACK/libpthreadpool missing at run time
    raise NativeUnavailable(
        f"onnxstream_py's native extension cannot be loaded ({e}). It needs XNNPACK and "
        f"pthreadpool: `sudo apt-get install {APT_PACKAGES}`, then reinstall the package "
        f"(`pip install -e .` or `bash scripts/setup.sh`). RunOptions(backend='numpy') runs "
        f"without it.") from None

ffi = _native.ffi
lib = _native.lib

# enum xnn_status (xnnpack.h) and our own negative codes (native/osn_core.h)
_STATUS = {1: "xnn_status_uninitialized", 2: "xnn_status_invalid_parameter",
           3: "xnn_status_invalid_state", 4: "xnn_status_unsupported_parameter",
           5: "xnn_status_unsupported_hardware", 6: "xnn_status_out_of_memory",
           -1: "invalid argument", -2: "out of memory"}


def _check(status: int, what: str) -> None:
    """Raise NativeError naming ``what`` (the op and its shapes) for a non-zero status."""
    if status != 0:
        raise NativeError(f"{what}: native call failed with {_STATUS.get(status, 'status')} ({status})")


_check(lib.osn_init(), "XNNPACK initialisation")


def ptr(a: np.ndarray, ctype: str = "void *"):
    """A C pointer to a C-contiguous array's data (no copy; the array must outlive the call)."""
    if not a.flags.c_contiguous:
        raise ValueError(f"native call needs a C-contiguous array, got strides {a.strides} for {a.shape}")
    return ffi.cast(ctype, ffi.from_buffer(a, require_writable=False))


def out_ptr(a: np.ndarray, ctype: str = "void *"):
    """Like ``ptr`` for an output: the array must also be writeable."""
    if not a.flags.c_contiguous or not a.flags.writeable:
        raise ValueError(f"native output must be a writeable C-contiguous array ({a.shape}, {a.strides})")
    return ffi.cast(ctype, ffi.from_buffer(a, require_writable=True))


class ThreadPool:
    """One pthreadpool, shared by XNNPACK operators and our kernels; one per Model."""

    def __init__(self, threads: int | None = None):
        self._pool = lib.osn_pool_create(int(threads or 0))
        if self._pool == ffi.NULL:
            raise NativeError(f"could not create a thread pool of {threads or 'all'} threads")

    @property
    def handle(self):
        if self._pool is None:
            raise NativeError("thread pool used after close()")
        return self._pool

    @property
    def threads(self) -> int:
        return int(lib.osn_pool_threads(self.handle))

    def close(self) -> None:
        if self._pool is not None:
            lib.osn_pool_destroy(self._pool)
            self._pool = None

    def __del__(self):
        self.close()


def version() -> int:
    return int(lib.osn_version())
