"""Linear-algebra ops (MatMul, Gemm, Einsum) on numpy's BLAS-backed matmul.

Trade-off: float32/float64 go straight to BLAS with the result written into one
preallocated output. float16 has no BLAS path in numpy, so it is computed in float32 over
blocks of rows of A (bounded temporaries, one float32 copy of B) and stored as float16.
A float16 weight next to a float32 activation (the engine's fp16-weights mode) is cast to
float32; the output always has A's dtype.
Reference: https://onnx.ai/onnx/operators/onnx__MatMul.html, onnx__Gemm.html, onnx__Einsum.html
"""
from __future__ import annotations

import re

import numpy as np

from .registry import op

# Bytes of float32 rows of A (and of the product) converted per block on the float16 path.
FP16_BLOCK_BYTES = 8 << 20


def _is_half(*arrays) -> bool:
    return any(a.dtype == np.float16 for a in arrays)


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """numpy matmul semantics (1-D promotion, batch broadcast) with the output in a's dtype.

    a: [..., M, K] or [K]; b: [..., K, N] or [K]; out: optional preallocated result.
    """
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"MatMul: inputs {a.shape} and {b.shape} must have rank >= 1")
    ka = a.shape[-1]
    kb = b.shape[-2] if b.ndim >= 2 else b.shape[0]
    if ka != kb:
        raise ValueError(f"MatMul: inner dimensions differ: A {a.shape} has K={ka}, B {b.shape} has K={kb}")
    dtype = a.dtype
    if a.dtype.kind != "f" or not _is_half(a, b):
        if b.dtype != dtype:
            b = b.astype(dtype)  # e.g. a float64 weight next to a float32 activation
        return np.asarray(np.matmul(a, b, out=out))
    # float16 anywhere: float32 compute over blocks of rows of A.
    b32 = b.astype(np.float32)
    if a.ndim == 1:
        return np.asarray(np.matmul(a.astype(np.float32), b32).astype(dtype))
    shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2],)
    if b.ndim >= 2:
        shape += (b.shape[-1],)
    if out is None:
        out = np.empty(shape, dtype=dtype)
    m = a.shape[-2]
    row_bytes = 4 * max(a.shape[-1], b.shape[-1] if b.ndim >= 2 else 1) * max(1, int(np.prod(shape[:-2], dtype=np.int64)))
    rows = max(1, FP16_BLOCK_BYTES // row_bytes)
    for r0 in range(0, m, rows):
        r1 = min(m, r0 + rows)
        blk = np.matmul(a[..., r0:r1, :].astype(np.float32), b32)
        if b.ndim >= 2:
            out[..., r0:r1, :] = blk
        else:
            out[..., r0:r1] = blk
    return out


@op("MatMul", since=1)
def MatMul(a, b):
    return matmul(a, b)


def _gemm(a, b, c, alpha, beta, trans_a, trans_b):
    """Y = alpha * A' @ B' + beta * C with C broadcast to [M, N] (unidirectional)."""
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"Gemm: A {a.shape} and B {b.shape} must be 2-D")
    a2 = a.T if trans_a else a
    b2 = b.T if trans_b else b
    if a2.shape[1] != b2.shape[0]:
        raise ValueError(f"Gemm: A' {a2.shape} @ B' {b2.shape}: inner dimensions differ "
                         f"(transA={trans_a}, transB={trans_b})")
    y = matmul(a2, b2)
    if y.dtype.kind != "f":
        # Integer Gemm (opset 11+): exact in float64 for the sizes ONNX tests, cast back.
        acc = alpha * y.astype(np.float64)
        if c is not None:
            acc = acc + beta * c
        return np.asarray(acc.astype(a.dtype))
    work = y if y.dtype != np.float16 else y.astype(np.float32)
    if alpha != 1.0:
        work *= np.asarray(alpha, dtype=work.dtype)
    if c is not None and beta != 0.0:
        try:
            np.broadcast_shapes(c.shape, work.shape)
        except ValueError:
            raise ValueError(f"Gemm: C {c.shape} does not broadcast to the output {work.shape}") from None
        if beta == 1.0:
            work += c
        else:
            work += np.asarray(beta, dtype=work.dtype) * c.astype(work.dtype)
    return work if work.dtype == a.dtype else np.asarray(work.astype(a.dtype))


@op("Gemm", since=1)
def Gemm1(a, b, c, *, alpha=1.0, beta=1.0, broadcast=0, transA=0, transB=0):
    return _gemm(a, b, c, alpha, beta, transA, transB)


@op("Gemm", since=7)
def Gemm7(a, b, c, *, alpha=1.0, beta=1.0, transA=0, transB=0):
    return _gemm(a, b, c, alpha, beta, transA, transB)


@op("Gemm", since=11)
def Gemm11(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):
    return _gemm(a, b, c, alpha, beta, transA, transB)


_EINSUM_TERM = re.compile(r"^[A-Za-z]*(\.\.\.)?[A-Za-z]*$")


@op("Einsum", since=12)
def Einsum(*inputs, equation):
    """Reference: Einsum spec; terms are letters with an optional '...', '->' optional."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(inputs) or not all(_EINSUM_TERM.match(t) for t in terms + ([rhs] if arrow else [])):
        raise ValueError(f"Einsum: equation {equation!r} does not fit {len(inputs)} inputs "
                         f"{[x.shape for x in inputs]}")
    dtype = inputs[0].dtype
    args = [x.astype(np.float32) if x.dtype == np.float16 else x for x in inputs]
    res = np.einsum(eq, *args, optimize=len(args) > 1)
    return np.asarray(res, dtype=dtype)
