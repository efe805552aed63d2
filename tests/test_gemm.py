"""The GEMM op: its NumPy body is the layers' old products bit for bit, and its CUDA body's
row-major -> column-major cuBLAS marshalling is checked through the column-major interpreter
of the emulated backend (gpunn/testing/cublas_emu.py); on a GPU, against cupy.matmul."""
import ctypes
import itertools

import numpy as np
import pytest

from gpunn.errors import ShapeError
from gpunn.ops.gemm import OP_N, OP_T, cublas_args, gemm
from gpunn.testing import emulated_cuda
from gpunn.testing.cublas_emu import CublasArgumentError, EmulatedCublas

SHAPES = [(1, 1, 1), (3, 5, 7), (8, 72, 37), (33, 1, 9), (6, 40, 1)]


def _operands(rng, m, k, n, ta, tb, dt):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dt)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dt)
    return a, b


def _expected(a, b, ta, tb):
    return (a.T if ta else a) @ (b.T if tb else b)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_numpy_body_is_the_plain_product(dt, numpy_blas):
    rng = np.random.default_rng(0)
    for (m, k, n), ta, tb in itertools.product(SHAPES, (False, True), (False, True)):
        a, b = _operands(rng, m, k, n, ta, tb, dt)
        got = gemm(a, b, transa=ta, transb=tb)
        assert got.dtype == dt
        np.testing.assert_array_equal(got.view(np.uint8), _expected(a, b, ta, tb).view(np.uint8))


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_cuda_body_through_the_cublas_interpreter_is_exact(dt, monkeypatch):
    calls = []
    real = EmulatedCublas.gemm

    def counting(self, *args, **kw):
        calls.append(args[:5])
        return real(self, *args, **kw)
    monkeypatch.setattr(EmulatedCublas, "gemm", counting)
    rng = np.random.default_rng(1)
    with emulated_cuda():
        for (m, k, n), ta, tb in itertools.product(SHAPES, (False, True), (False, True)):
            a, b = _operands(rng, m, k, n, ta, tb, dt)
            got = gemm(a, b, transa=ta, transb=tb)
            want = _expected(a, b, ta, tb)
            assert got.shape == (m, n) and got.flags.c_contiguous
            np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
    assert len(calls) == len(SHAPES) * 4


def test_cuda_body_takes_transposed_and_strided_operands():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((9, 6))
    b = rng.standard_normal((6, 5))
    with emulated_cuda():
        # an F-contiguous view: used in place with the flag flipped
        np.testing.assert_array_equal(gemm(a.T.copy().T, b), a @ b)
        np.testing.assert_array_equal(gemm(a.T, b.T, transa=True, transb=True), a @ b)
        # neither C- nor F-contiguous: copied first
        big = rng.standard_normal((18, 12))
        np.testing.assert_array_equal(gemm(big[::2, ::2], b), big[::2, ::2] @ b)


def test_empty_and_zero_inner_size():
    with emulated_cuda():
        z = gemm(np.ones((3, 0)), np.ones((0, 4)))
        np.testing.assert_array_equal(z, np.zeros((3, 4)))
        assert gemm(np.ones((0, 2)), np.ones((2, 5))).shape == (0, 5)


def test_shape_and_dtype_errors_name_the_operands():
    with emulated_cuda():
        with pytest.raises(ShapeError, match="inner sizes differ"):
            gemm(np.ones((3, 4)), np.ones((5, 2)))
        with pytest.raises(ShapeError, match="2-d"):
            gemm(np.ones(3), np.ones((3, 2)))
        with pytest.raises(TypeError, match="dtypes"):
            gemm(np.ones((2, 2), np.float32), np.ones((2, 2)))


def test_cublas_args_swap_the_operands():
    # C (4 x 6) = a (4 x 3) @ b (3 x 6): cuBLAS computes C^T = b^T a^T, m = 6, n = 4
    assert cublas_args((4, 3), (3, 6), False, False) == (OP_N, OP_N, 6, 4, 3, 6, 3, 6)
    # a.T @ b.T with a (3 x 4), b (6 x 3)
    assert cublas_args((3, 4), (6, 3), True, True) == (OP_T, OP_T, 6, 4, 3, 3, 4, 6)


def test_interpreter_reads_column_major_and_refuses_what_cublas_would():
    blas = EmulatedCublas()
    A = np.arange(6, dtype=np.float64)          # column-major 2 x 3: [[0, 2, 4], [1, 3, 5]]
    B = np.arange(3, dtype=np.float64)          # 3 x 1
    C = np.empty(2)
    blas.gemm(OP_N, OP_N, 2, 1, 3, A, 2, B, 3, C, 2)
    np.testing.assert_array_equal(C, [0 * 0 + 2 * 1 + 4 * 2, 1 * 0 + 3 * 1 + 5 * 2])
    blas.gemm(OP_T, OP_N, 3, 1, 2, A, 2, B[:2].copy(), 2, np.empty(3), 3)
    with pytest.raises(CublasArgumentError, match="lda"):
        blas.gemm(OP_N, OP_N, 2, 1, 3, A, 1, B, 3, C, 2)
    with pytest.raises(CublasArgumentError, match="needs 8 elements"):
        blas.gemm(OP_N, OP_N, 2, 1, 3, A, 3, B, 3, C, 2)
    with pytest.raises(CublasArgumentError, match="overlaps"):
        blas.gemm(OP_N, OP_N, 2, 1, 3, A, 2, B, 3, A, 2)
    with pytest.raises(CublasArgumentError, match="float32 or float64"):
        blas.gemm(OP_N, OP_N, 2, 1, 3, A, 2, B.astype(np.float32), 3, C, 2)


def test_a_wrong_flag_gives_a_wrong_product():
    """The interpreter is not lenient: the transpose of the right call computes another
    matrix (so a marshalling slip fails the exact comparisons above)."""
    blas = EmulatedCublas()
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    good, bad = np.empty((4, 4)), np.empty((4, 4))
    blas.gemm(OP_N, OP_N, 4, 4, 4, b, 4, a, 4, good, 4)
    blas.gemm(OP_T, OP_N, 4, 4, 4, b, 4, a, 4, bad, 4)
    np.testing.assert_array_equal(good, a @ b)
    assert not np.allclose(bad, a @ b)


def test_cublas_library_loads_or_says_why():
    """Without the library (this CI machine has no libcublas) loading fails with the paths it
    tried, never with a crash."""
    from gpunn import cublas
    try:
        lib = cublas.load_library()
    except cublas.CublasError as e:
        assert "could not load cuBLAS" in str(e)
    else:
        assert hasattr(lib, "cublasSgemm_v2")


@pytest.mark.gpu
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_gpu_gemm_matches_cupy_matmul(dt):
    import cupy
    from gpunn.backend import backend_of
    rng = np.random.default_rng(4)
    for (m, k, n), ta, tb in itertools.product(SHAPES + [(100, 784, 32), (8, 72, 19600)],
                                               (False, True), (False, True)):
        a, b = _operands(rng, m, k, n, ta, tb, dt)
        ga, gb = cupy.asarray(a), cupy.asarray(b)
        assert backend_of(ga).blas.capturable, backend_of(ga).blas
        got = gemm(ga, gb, transa=ta, transb=tb)
        want = cupy.matmul(ga.T if ta else ga, gb.T if tb else gb)
        tol = 1e-12 if dt == np.float64 else 1e-5
        np.testing.assert_allclose(got.get(), want.get(), rtol=tol, atol=tol * k)
        np.testing.assert_allclose(got.get(), _expected(a, b, ta, tb), rtol=tol * 10,
                                   atol=tol * 10 * k)


@pytest.mark.gpu
def test_gpu_gemm_is_captured_in_a_graph():
    """A GEMM issued while a stream captures becomes a graph node (CuPy's own matmul raises
    NotImplementedError there); replaying the graph recomputes it from the inputs' new values."""
    import cupy
    rng = np.random.default_rng(5)
    a = cupy.asarray(rng.standard_normal((64, 32)))
    b = cupy.asarray(rng.standard_normal((32, 48)))
    gemm(a, b)                                           # handle and workspace made eagerly
    s = cupy.cuda.Stream(non_blocking=True)
    pool = cupy.cuda.MemoryPool()
    with s, cupy.cuda.using_allocator(pool.malloc):
        s.begin_capture()
        try:
            c = gemm(a, b, transb=False)
        finally:
            graph = s.end_capture()
    a[...] = cupy.asarray(rng.standard_normal((64, 32)))
    graph.launch(stream=cupy.cuda.get_current_stream())
    cupy.cuda.get_current_stream().synchronize()
    np.testing.assert_allclose(c.get(), (a @ b).get(), rtol=1e-12)


def test_cublas_gemm_binds_the_stream_once_and_reports_a_failed_status(monkeypatch):
    """gpunn.cublas.Cublas.gemm against a stand-in library (no GPU here): the stream and
    workspace are bound when the stream changes, not per call; a non-zero status raises
    CublasError naming the call and its sizes; the arguments reach cuBLAS in its order."""
    import types
    cupy = pytest.importorskip("cupy")
    from gpunn import cublas
    calls = []

    class Lib:
        status = 0

        def cublasSetStream_v2(self, h, s):
            calls.append(("stream", s.value))
            return 0

        def cublasSetWorkspace_v2(self, h, p, n):
            calls.append(("workspace", n))
            return 0

        def cublasSgemm_v2(self, h, op_a, op_b, m, n, k, *rest):
            calls.append(("sgemm", op_a, op_b, m, n, k))
            return self.status

    class Arr:
        def __init__(self, ptr, dtype=np.float32):
            self.device = types.SimpleNamespace(id=0)
            self.data = types.SimpleNamespace(ptr=ptr)
            self.dtype = np.dtype(dtype)

    stream = types.SimpleNamespace(ptr=1234)
    monkeypatch.setattr(cupy.cuda, "get_current_stream", lambda: stream)
    blas = object.__new__(cublas.Cublas)
    lib = Lib()
    blas.lib, blas.device_index, blas.handle, blas._stream = lib, 0, None, None
    blas.workspace = Arr(99)
    blas._one = {np.dtype(np.float32): ctypes.c_float(1.0)}
    blas._zero = {np.dtype(np.float32): ctypes.c_float(0.0)}
    blas._fn = {np.dtype(np.float32): lib.cublasSgemm_v2}
    a, b, c = Arr(8), Arr(16), Arr(24)
    blas.gemm(1, 0, 3, 4, 5, a, 3, b, 5, c, 3)
    blas.gemm(0, 0, 3, 4, 5, a, 3, b, 5, c, 3)
    assert calls == [("stream", 1234), ("workspace", cublas.WORKSPACE_BYTES),
                     ("sgemm", 1, 0, 3, 4, 5), ("sgemm", 0, 0, 3, 4, 5)]
    stream.ptr = 5678                                  # another stream: bound again
    lib.status = 13                                    # CUBLAS_STATUS_EXECUTION_FAILED
    with pytest.raises(cublas.CublasError, match=r"cublasSgemm_v2 \(m=3, n=4, k=5, lda=3, "
                                                 r"ldb=5, ldc=3\) failed"):
        blas.gemm(0, 0, 3, 4, 5, a, 3, b, 5, c, 3)
    assert calls[-3:] == [("stream", 5678), ("workspace", cublas.WORKSPACE_BYTES),
                          ("sgemm", 0, 0, 3, 4, 5)]
    with pytest.raises(TypeError, match="float32 or float64 only"):
        blas.gemm(0, 0, 3, 4, 5, a, 3, b, 5, Arr(32, np.float16), 3)
