"""Op registry: (domain, ONNX op name, opset version) -> numpy implementation.

Each op is a plain function registered with ``@op("Name", since=V)``. Inputs arrive
positionally as numpy arrays (``None`` for an omitted optional input), attributes as
keyword arguments whose Python defaults are the ONNX defaults. An op that needs the
node's output count declares a keyword-only ``_noutputs`` parameter. An op that can write
its result into a dying input's buffer declares a keyword-only ``_out`` parameter: the
interpreter may pass such a buffer (writeable, shared with no other live tensor), and the
op uses it only when its result's shape and dtype are exactly the buffer's. A native op that
can keep a prepared operator across runs declares ``_cache`` (see op_cache.py): it then
receives a CacheSlot, and None for its weight inputs when the slot holds an entry. Opset versions are
registry keys: ``lookup`` returns the implementation with the highest ``since`` that is
not newer than the model's opset for that domain.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class OpImpl:
    op_type: str
    domain: str
    since: int
    fn: Callable
    wants_noutputs: bool
    wants_out: bool = False
    backend: str = "numpy"
    wants_ctx: bool = False
    wants_cache: bool = False


BACKENDS = ("numpy", "native")
_REGISTRY: dict[tuple[str, str, str], list[OpImpl]] = {}   # (backend, domain, op_type)


def _norm_domain(domain: str) -> str:
    return "" if domain in DEFAULT_DOMAINS else domain


def op(op_type: str, since: int = 1, domain: str = "", backend: str = "numpy"):
    """Register ``fn`` as the implementation of ``op_type`` from opset ``since`` on."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} for op {op_type}")

    def deco(fn: Callable) -> Callable:
        params = inspect.signature(fn).parameters
        impl = OpImpl(op_type, _norm_domain(domain), since, fn, "_noutputs" in params, "_out" in params,
                      backend, "_ctx" in params, "_cache" in params)
        versions = _REGISTRY.setdefault((backend, impl.domain, op_type), [])
        if any(v.since == since for v in versions):
            raise ValueError(f"op {op_type} (domain {domain!r}) registered twice for opset {since}")
        versions.append(impl)
        versions.sort(key=lambda v: v.since)
        return fn

    return deco


def _lookup(backend: str, op_type: str, opset: int, domain: str) -> OpImpl | None:
    best = None
    for impl in _REGISTRY.get((backend, _norm_domain(domain), op_type), []):
        if impl.since <= opset:
            best = impl
    return best


def lookup(op_type: str, opset: int, domain: str = "", backend: str = "numpy") -> OpImpl | None:
    """The implementation of ``op_type`` valid at ``opset``, or None if unsupported.

    With ``backend="native"`` a native implementation wins when one is registered for
    that opset; otherwise the numpy one is returned.
    """
    if backend != "numpy":
        impl = _lookup(backend, op_type, opset, domain)
        if impl is not None:
            return impl
    return _lookup("numpy", op_type, opset, domain)


def registered_ops(backend: str = "numpy") -> dict[tuple[str, str], list[int]]:
    """{(domain, op_type): [since versions]} for every op registered for ``backend``."""
    return {(d, t): [v.since for v in versions] for (b, d, t), versions in _REGISTRY.items() if b == backend}
