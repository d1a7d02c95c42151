"""Numpy reference implementations of ONNX ops, grouped by family.

Importing this package registers every op; the interpreter only calls ``lookup``.
"""
import importlib
import pkgutil

from .registry import BACKENDS, OpImpl, lookup, op, registered_ops
from . import attention, elementwise, reduce, tensor, indexing, linalg, conv, pool, norm, resize, fused, quant  # noqa: F401  (registration)

__all__ = ["BACKENDS", "OpImpl", "load_native", "lookup", "op", "registered_ops"]
_native_loaded = False


def load_native() -> None:
    """Register the native implementations (ops/native_*.py). Raises NativeUnavailable
    (naming the apt packages) when the extension or its system libraries are missing."""
    global _native_loaded
    if _native_loaded:
        return
    from .. import native  # noqa: F401  fails here, clearly, if the extension is missing
    for m in pkgutil.iter_modules(__path__):
        if m.name.startswith("native_"):
            importlib.import_module(f"{__name__}.{m.name}")
    _native_loaded = True
