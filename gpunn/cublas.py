"""cuBLAS GEMMs that a CUDA graph can capture: the cuBLAS library called through ctypes.

CuPy refuses cuBLAS during stream capture: every call of ``cupy_backends.cuda.libs.cublas``
first re-binds the handle to the current stream, and ``setStream`` raises NotImplementedError
when that stream is capturing (CuPy issue #6290; cuBLAS itself supports capture, see
"CUDA Graphs Support" in the cuBLAS documentation). So gpunn keeps a handle of its own per
(thread, device) and calls ``cublas{S,D}gemm_v2`` directly:

- the handle is bound to CuPy's current stream before each call (``cublasSetStream_v2`` only
  when the stream changed), so an eager GEMM runs on the stream it always did and a GEMM
  issued while a stream captures becomes a node of that graph;
- after each re-binding the handle gets a workspace of its own (``cublasSetWorkspace_v2``,
  :data:`WORKSPACE_BYTES`, allocated once when the handle is made): cuBLAS then never
  allocates during capture, and eager and captured calls see the same workspace, so they
  choose the same algorithm and compute the same bits;
- pointer mode stays HOST: alpha = 1 and beta = 0 travel by value into the captured launch.

The library is the one CuPy loaded (found in the process's mapped files), else the one
``cuda.pathfinder`` finds, else ``libcublas.so.{13,12,11}`` by name. When none loads (a ROCm
build, a broken install), :func:`blas_for` falls back to ``cupy.matmul`` with a warning; that
path works eagerly but cannot be captured (``capturable`` is False and the graphed training
step refuses it with the reason).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import warnings

__all__ = ["Cublas", "CupyMatmul", "CublasError", "blas_for", "WORKSPACE_BYTES", "load_library"]

WORKSPACE_BYTES = 32 * 1024 * 1024       # what cuBLAS asks for on Hopper (and more than enough before)

_STATUS = {0: "CUBLAS_STATUS_SUCCESS", 1: "CUBLAS_STATUS_NOT_INITIALIZED",
           3: "CUBLAS_STATUS_ALLOC_FAILED", 7: "CUBLAS_STATUS_INVALID_VALUE",
           8: "CUBLAS_STATUS_ARCH_MISMATCH", 11: "CUBLAS_STATUS_MAPPING_ERROR",
           13: "CUBLAS_STATUS_EXECUTION_FAILED", 14: "CUBLAS_STATUS_INTERNAL_ERROR",
           15: "CUBLAS_STATUS_NOT_SUPPORTED", 16: "CUBLAS_STATUS_LICENSE_ERROR"}


class CublasError(RuntimeError):
    """A cuBLAS call returned an error status, or the library could not be loaded."""


_lib = None
_lib_error: str | None = None
_lock = threading.Lock()


def _mapped_cublas() -> str | None:
    """The libcublas this process already mapped (the one CuPy loaded), if any."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rsplit(None, 1)[-1]
                base = os.path.basename(path)
                if base.startswith("libcublas.so") and os.path.isfile(path):
                    return path
    except OSError:
        pass
    return None


def _candidates():
    try:                                   # makes CuPy load its own libcublas first
        from cupy_backends.cuda.libs import cublas as _cupy_cublas  # noqa: F401
    except Exception:
        pass
    mapped = _mapped_cublas()
    if mapped:
        yield mapped
    try:
        from cuda import pathfinder
        yield pathfinder.load_nvidia_dynamic_lib("cublas").abs_path
    except Exception:
        pass
    found = ctypes.util.find_library("cublas")
    if found:
        yield found
    yield from ("libcublas.so.13", "libcublas.so.12", "libcublas.so.11")


def load_library():
    """The cuBLAS shared library with the prototypes gpunn calls; raises CublasError."""
    global _lib, _lib_error
    with _lock:
        if _lib is not None:
            return _lib
        if _lib_error is not None:
            raise CublasError(_lib_error)
        tried = []
        for path in _candidates():
            try:
                lib = ctypes.CDLL(path)
                _prototypes(lib)
            except (OSError, AttributeError) as e:
                tried.append(f"{path}: {e}")
                continue
            _lib = lib
            return lib
        _lib_error = "could not load cuBLAS through ctypes (" + "; ".join(tried) + ")"
        raise CublasError(_lib_error)


def _prototypes(lib) -> None:
    vp, i, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
    protos = {
        "cublasCreate_v2": [ctypes.POINTER(vp)],
        "cublasDestroy_v2": [vp],
        "cublasSetStream_v2": [vp, vp],
        "cublasSetWorkspace_v2": [vp, vp, sz],
        "cublasSetMathMode": [vp, i],
        "cublasSgemm_v2": [vp, i, i, i, i, i, vp, vp, i, vp, i, vp, vp, i],
        "cublasDgemm_v2": [vp, i, i, i, i, i, vp, vp, i, vp, i, vp, vp, i],
    }
    for name, args in protos.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = ctypes.c_int


def _check(status: int, what: str) -> None:
    if status != 0:
        raise CublasError(f"{what} failed: {_STATUS.get(status, f'status {status}')}")


class Cublas:
    """cuBLAS GEMMs on one device: ``gemm(op_a, op_b, m, n, k, A, lda, B, ldb, C, ldc)`` with
    cuBLAS's column-major meaning, A, B, C CuPy arrays on that device; C = op(A) op(B)."""

    capturable = True

    def __init__(self, device_index: int):
        import cupy
        import numpy as np
        self.lib = load_library()
        self.device_index = int(device_index)
        with cupy.cuda.Device(self.device_index):
            h = ctypes.c_void_p()
            _check(self.lib.cublasCreate_v2(ctypes.byref(h)), "cublasCreate_v2")
            self.handle = h
            _check(self.lib.cublasSetMathMode(h, 0), "cublasSetMathMode")  # CUBLAS_DEFAULT_MATH
            self.workspace = cupy.empty(WORKSPACE_BYTES, dtype=np.uint8)
        self._stream = None
        self._one = {np.dtype(np.float32): ctypes.c_float(1.0),
                     np.dtype(np.float64): ctypes.c_double(1.0)}
        self._zero = {np.dtype(np.float32): ctypes.c_float(0.0),
                      np.dtype(np.float64): ctypes.c_double(0.0)}
        self._fn = {np.dtype(np.float32): self.lib.cublasSgemm_v2,
                    np.dtype(np.float64): self.lib.cublasDgemm_v2}

    def _bind(self, stream_ptr: int) -> None:
        if stream_ptr == self._stream:
            return
        _check(self.lib.cublasSetStream_v2(self.handle, ctypes.c_void_p(stream_ptr)),
               "cublasSetStream_v2")
        # SetStream resets the workspace to cuBLAS's own pool: give ours back every time
        _check(self.lib.cublasSetWorkspace_v2(self.handle, ctypes.c_void_p(self.workspace.data.ptr),
                                              WORKSPACE_BYTES), "cublasSetWorkspace_v2")
        self._stream = stream_ptr

    def gemm(self, op_a, op_b, m, n, k, A, lda, B, ldb, C, ldc) -> None:
        import cupy
        fn = self._fn.get(C.dtype)
        if fn is None:
            raise TypeError(f"cuBLAS gemm: float32 or float64 only, got {C.dtype}")
        for what, arr in (("A", A), ("B", B), ("C", C)):
            if arr.device.id != self.device_index:
                raise ValueError(f"cuBLAS gemm: {what} is on cuda:{arr.device.id}, the handle "
                                 f"is for cuda:{self.device_index}")
        self._bind(cupy.cuda.get_current_stream().ptr)
        status = fn(self.handle, op_a, op_b, m, n, k, ctypes.byref(self._one[C.dtype]),
                    ctypes.c_void_p(A.data.ptr), lda, ctypes.c_void_p(B.data.ptr), ldb,
                    ctypes.byref(self._zero[C.dtype]), ctypes.c_void_p(C.data.ptr), ldc)
        if status:                            # (the message is built only when it is needed)
            _check(status, f"cublas{'S' if C.dtype.itemsize == 4 else 'D'}gemm_v2 "
                           f"(m={m}, n={n}, k={k}, lda={lda}, ldb={ldb}, ldc={ldc})")


class CupyMatmul:
    """The fallback when cuBLAS cannot be loaded through ctypes: ``cupy.matmul`` on the
    row-major operands the column-major arguments describe. Eager only."""

    capturable = False

    def __init__(self, reason: str):
        self.reason = reason

    def gemm(self, op_a, op_b, m, n, k, A, lda, B, ldb, C, ldc) -> None:
        import cupy
        # C (row-major, n x m) = op(B)^T-side @ op(A)^T-side; see gpunn/ops/gemm.py
        cupy.matmul(B.T if op_b else B, A.T if op_a else A, out=C)


_per_thread = threading.local()


def blas_for(device_index: int):
    """This thread's GEMM engine for CUDA device ``device_index`` (made on first use)."""
    table = getattr(_per_thread, "table", None)
    if table is None:
        table = _per_thread.table = {}
    eng = table.get(device_index)
    if eng is None:
        try:
            eng = Cublas(device_index)
        except CublasError as e:
            warnings.warn(f"gpunn: {e}; GEMMs fall back to cupy.matmul, which CUDA graphs "
                          "cannot capture", RuntimeWarning, stacklevel=2)
            eng = CupyMatmul(str(e))
        table[device_index] = eng
    return eng
