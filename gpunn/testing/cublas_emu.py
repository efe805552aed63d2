"""A column-major interpreter of cuBLAS's GEMM, the emulated CUDA backend's ``blas``.

``gemm(op_a, op_b, m, n, k, A, lda, B, ldb, C, ldc)`` reads its arguments exactly as cuBLAS
does: A, B and C are flat device buffers (NumPy arrays here), each operand a column-major
matrix at the start of its buffer with leading dimension ``ld``, and C = op(A) op(B). So the
row-major-to-column-major marshalling of gpunn/ops/gemm.py is checked in CI: a wrong
transpose flag, size or leading dimension reads the wrong elements (and a too-small buffer
or leading dimension is refused, as cuBLAS would fault or return INVALID_VALUE).

The product itself is NumPy's: ``matmul(op(B)^T, op(A)^T, out=C^T)``, which for the
arguments gemm.py passes is the very product of the row-major operands the NumPy body
computes (same views, same strides), so the emulated CUDA path keeps NumPy's bits.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

__all__ = ["EmulatedCublas", "CublasArgumentError"]


class CublasArgumentError(ValueError):
    """Arguments cuBLAS would reject (CUBLAS_STATUS_INVALID_VALUE) or that would fault."""


def _matrix(buf, rows, cols, ld, what):
    """Column-major (rows, cols) view at the start of ``buf`` with leading dimension ld."""
    if not isinstance(buf, np.ndarray) or not buf.flags.c_contiguous:
        raise CublasArgumentError(f"gemm: {what} must be a contiguous device buffer")
    if ld < max(1, rows):
        raise CublasArgumentError(f"gemm: ld{what.lower()} = {ld} < max(1, {rows}) rows")
    need = 0 if rows == 0 or cols == 0 else (cols - 1) * ld + rows
    if need > buf.size:
        raise CublasArgumentError(f"gemm: {what} as a {rows} x {cols} matrix with ld {ld} "
                                  f"needs {need} elements, its buffer has {buf.size}")
    isz = buf.itemsize
    return as_strided(buf.reshape(-1), shape=(rows, cols), strides=(isz, ld * isz),
                      writeable=True)


class EmulatedCublas:
    """cuBLAS GEMM semantics on NumPy buffers (float32 and float64, alpha = 1, beta = 0
    unless given)."""

    capturable = True

    def gemm(self, op_a, op_b, m, n, k, A, lda, B, ldb, C, ldc, alpha=1.0, beta=0.0):
        for name, v in (("op_a", op_a), ("op_b", op_b)):
            if v not in (0, 1):
                raise CublasArgumentError(f"gemm: {name} must be CUBLAS_OP_N (0) or _T (1), "
                                          f"got {v!r}")
        for name, v in (("m", m), ("n", n), ("k", k)):
            if int(v) != v or v < 0:
                raise CublasArgumentError(f"gemm: {name} must be a non-negative int, got {v!r}")
        dt = C.dtype
        if dt not in (np.dtype(np.float32), np.dtype(np.float64)) or A.dtype != dt \
                or B.dtype != dt:
            raise CublasArgumentError(f"gemm: A, B, C must share float32 or float64, got "
                                      f"{A.dtype}, {B.dtype}, {C.dtype}")
        if not C.flags.writeable:
            raise CublasArgumentError("gemm: C is read-only")
        for name, x in (("A", A), ("B", B)):
            if np.may_share_memory(C, x):
                raise CublasArgumentError(f"gemm: C overlaps {name} (cuBLAS leaves that "
                                          "undefined)")
        a = _matrix(A, m if op_a == 0 else k, k if op_a == 0 else m, lda, "A")
        b = _matrix(B, k if op_b == 0 else n, n if op_b == 0 else k, ldb, "B")
        c = _matrix(C, m, n, ldc, "C")
        op_a_mat = a.T if op_a else a              # (m, k)
        op_b_mat = b.T if op_b else b              # (k, n)
        if alpha == 1.0 and beta == 0.0:
            np.matmul(op_b_mat.T, op_a_mat.T, out=c.T)
        else:
            prod = np.matmul(op_b_mat.T, op_a_mat.T)
            c.T[...] = dt.type(alpha) * prod + (dt.type(beta) * c.T if beta != 0.0 else 0)
