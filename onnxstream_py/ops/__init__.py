"""Numpy reference implementations of ONNX ops, grouped by family.

Importing this package registers every op; the interpreter only calls ``lookup``.
"""
from .registry import OpImpl, lookup, op, registered_ops
from . import attention, elementwise, reduce, tensor, indexing, linalg, conv, pool, norm, resize  # noqa: F401  (registration)

__all__ = ["OpImpl", "lookup", "op", "registered_ops"]
