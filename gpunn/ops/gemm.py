"""GEMM, the one op every layer's matrix product goes through: ``gemm(a, b, transa, transb)``.

    gemm(a, b)                    a @ b          a: (M, K), b: (K, N)  ->  (M, N)
    gemm(a, b, transa=True)       a.T @ b        a: (K, M)
    gemm(a, b, transb=True)       a @ b.T        b: (N, K)

The NumPy body is exactly the product the layers wrote before this op existed (``x @ W``,
``x.T @ dout``, ...), so CPU results stay bit for bit what they were; with Intel MKL
installed, the products that run on one thread go to MKL (gpunn/ops/mkl.py), which rounds
float32 differently in the last bits (GPUNN_BLAS=openblas: NumPy's BLAS throughout).

The CUDA body calls cuBLAS itself instead of ``cupy.matmul``: CuPy refuses every cuBLAS call
while a stream captures a CUDA graph (its ``cublas.setStream`` raises NotImplementedError
during capture; CuPy issue #6290), and a graphed training step must capture its GEMMs. So
the backend's ``blas`` (gpunn/cublas.py: the cuBLAS library through ctypes, one handle per
device, bound to the current stream on every call, with a workspace of its own) runs the
same call eagerly and under capture, and the eager and the graphed step compute the same
bits. docs/GRAPHS.md says why this route and what a GPU must confirm.

Row-major arrays are column-major transposes, so C = op(a) @ op(b) (row-major, M x N) is
C^T = op(b)^T op(a)^T in cuBLAS's column-major terms: the call is
``gemm(op_b, op_a, m=N, n=M, k=K, A=b, lda=b.shape[1], B=a, ldb=a.shape[1], C=c, ldc=N)``
(:func:`cublas_args`). Under the tests' emulated CUDA the backend's ``blas`` is a
column-major interpreter of those arguments (gpunn/testing), so the marshalling below runs
in CI and a wrong leading dimension or transpose flag fails there.
"""
from __future__ import annotations

from ..errors import ShapeError
from .dispatch import op

__all__ = ["gemm", "cublas_args", "OP_N", "OP_T"]

OP_N, OP_T = 0, 1          # cublasOperation_t: CUBLAS_OP_N, CUBLAS_OP_T
_INT32_MAX = 2**31 - 1


def _shapes(a, b, transa, transb):
    """(M, K, N) of op(a) @ op(b), or a ShapeError naming both operands."""
    if a.ndim != 2 or b.ndim != 2:
        raise ShapeError(f"gemm: operands must be 2-d, got shapes {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    m, k = (a.shape[1], a.shape[0]) if transa else a.shape
    k2, n = (b.shape[1], b.shape[0]) if transb else b.shape
    if k != k2:
        raise ShapeError(f"gemm: op(a) is {(m, k)} and op(b) is {(k2, n)} "
                         f"(transa={transa}, transb={transb}): inner sizes differ")
    if a.dtype != b.dtype:
        raise TypeError(f"gemm: operands have dtypes {a.dtype} and {b.dtype}; convert one")
    return int(m), int(k), int(n)


@op
def gemm(a, b, transa: bool = False, transb: bool = False, out=None):
    """op(a) @ op(b), op(x) = x.T when its flag is set. a, b: 2-d, one dtype -> (M, N).
    ``out``: a C-contiguous (M, N) array of that dtype to write the product into (a gradient
    buffer: saves the copy a store would make); it is returned.

    NumPy body: one BLAS call, with NumPy's BLAS held to one thread per MACS_PER_THREAD
    multiply-adds (gpunn/threads.py): a skinny product (a batch of 100 through a small
    layer) gains nothing from sixteen threads but their start and their wait for each other.
    A product that runs on one thread goes to Intel MKL instead when it is installed
    (gpunn/ops/mkl.py says which and why; GPUNN_BLAS=openblas keeps NumPy's BLAS).
    """
    import numpy as np

    from ..threads import gemm_threads
    from . import mkl
    m, k, n = _shapes(a, b, transa, transb)
    if out is not None:
        _check_out(out, m, n, a.dtype)
    with gemm_threads(m * n * k) as threads:
        if mkl.handles(a, b, transa, transb, out, threads, m * n * k):
            return mkl.gemm(a, b, transb, out)
        return np.matmul(a.T if transa else a, b.T if transb else b, out=out)


def _check_out(out, m, n, dtype):
    if tuple(out.shape) != (m, n) or out.dtype != dtype or not out.flags.c_contiguous:
        raise ShapeError(f"gemm: out must be a C-contiguous {(m, n)} {dtype} array, got "
                         f"{tuple(out.shape)} {out.dtype}"
                         f"{'' if out.flags.c_contiguous else ' (not contiguous)'}")


def cublas_args(a_shape, b_shape, transa: bool, transb: bool) -> tuple:
    """cuBLAS's column-major arguments for row-major C-contiguous ``a``, ``b`` and ``c``:
    ``(op_A, op_B, m, n, k, lda, ldb, ldc)`` with cuBLAS's A being ``b`` and B being ``a``."""
    m_, k = (a_shape[1], a_shape[0]) if transa else a_shape
    n_ = b_shape[0] if transb else b_shape[1]
    return (OP_T if transb else OP_N, OP_T if transa else OP_N, int(n_), int(m_), int(k),
            max(1, int(b_shape[1])), max(1, int(a_shape[1])), max(1, int(n_)))


def _c_operand(xp, x, trans):
    """``x`` as a C-contiguous array and its flag: a transposed view of a C-contiguous array
    (F-contiguous) is used as it is with the flag flipped; anything else is copied."""
    if x.flags.c_contiguous:
        return x, trans
    if x.flags.f_contiguous:
        return x.T, not trans
    return xp.ascontiguousarray(x), trans


@gemm.cuda
def _gemm_cuda(bk, a, b, transa=False, transb=False, out=None):
    m, k, n = _shapes(a, b, transa, transb)
    xp = bk.xp
    if out is not None:
        _check_out(out, m, n, a.dtype)
    c = xp.empty((m, n), dtype=a.dtype) if out is None else out
    if m == 0 or n == 0:
        return c
    if k == 0:                                   # cuBLAS would leave C as it is (beta = 0)
        c.fill(0)
        return c
    if max(m, n, k) > _INT32_MAX:
        raise ShapeError(f"gemm: {m} x {k} x {n} exceeds cuBLAS's 32-bit sizes")
    a, transa = _c_operand(xp, a, transa)
    b, transb = _c_operand(xp, b, transb)
    op_a, op_b, cm, cn, ck, lda, ldb, ldc = cublas_args(a.shape, b.shape, transa, transb)
    bk.blas.gemm(op_a, op_b, cm, cn, ck, b, lda, a, ldb, c, ldc)
    return c
