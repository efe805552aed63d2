"""Intel MKL's GEMM for the CPU products gpunn runs on one thread, when MKL is installed.

    pip install 'gpunn[mkl]'         # the mkl wheel (libmkl_rt, about 185 MB)
    GPUNN_BLAS=openblas gpunn ...    # every product on NumPy's own BLAS, as without MKL
    GPUNN_BLAS=mkl gpunn ...         # MKL, or a clear error when it cannot be loaded

Why: NumPy's wheels bring OpenBLAS, and at the skinny shapes of a Linear layer at batch
50-100 its sgemm is 1.25-1.5x slower than MKL's (PyTorch's CPU build uses MKL), which is most
of what kept cnn-bn's ``gpunn train --procs`` step behind PyTorch's (docs/benchmarks/README.md).

Which products (:func:`gpunn.ops.gemm.gemm`'s NumPy body asks :func:`handles`):

- those the thread policy runs on **one thread** (``gpunn.threads.gemm_threads``): every
  product of a ``gpunn train --procs`` rank or a one-thread run, the small products of any
  run, and products inside gpunn's parallel regions. Multithreaded products stay on OpenBLAS:
  MKL's threads (an OpenMP runtime of their own) would compete with OpenBLAS's and with
  gpunn's pool for the same cores, so MKL is loaded with its *sequential* layer and starts no
  thread at all (which also makes it safe across ``--procs``'s fork);
- not ``op(a) = a.T``: that is the weight gradient ``x.T @ dout``, whose inner size is the
  batch; there MKL measured 1.2-1.6x *slower* than OpenBLAS (6272x784 from 50-100 samples);
- products of at least MIN_MACS (~2M) multiply-adds: below that the call's own cost wins;
- float32 and float64, C-contiguous operands (``b`` may be used transposed), sizes that fit
  MKL's 32-bit integers. Anything else goes to NumPy as before.

``GPUNN_BLAS=auto`` (the default) uses MKL when it loads and the CPU is an Intel one: MKL's
fast paths are for Intel CPUs, and on others it is not known here to beat OpenBLAS. Neither
choice loads it when NumPy's own BLAS is MKL already (conda's NumPy): that NumPy computes
every product with MKL anyway, and the sequential layer would take its threads away.

Results: another library rounds float32 products differently in the last bits, so a run is
reproducible bit for bit with one choice, and a run resumed with the other choice continues
within rounding of the first (as on another CPU). ``gpunn train``'s report and ``gpunn bench``
say which BLAS ran (:func:`describe`).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import re
import sys
import threading

__all__ = ["handles", "gemm", "describe", "choice", "library"]

_VAR = "GPUNN_BLAS"
_CHOICES = ("auto", "mkl", "openblas")
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112     # CBLAS_LAYOUT, CBLAS_TRANSPOSE
_SEQUENTIAL = 1                                   # MKL_THREADING_SEQUENTIAL
_INT32_MAX = 2**31 - 1

# below ~2M multiply-adds MKL's call through ctypes costs more than it saves (about 5 us more
# per call: (100, 100) @ (100, 10) 10.0 us against NumPy's 4.3; (100, 784) @ (784, 10) 30 vs
# 25; from (50, 784) @ (784, 100) on, MKL is as fast or faster)
MIN_MACS = 1 << 21

_lock = threading.Lock()
_lib = None            # the loaded libmkl_rt, or False once it failed / was not asked for
_why_not = ""          # why MKL is not in use, in words


def choice() -> str:
    """``GPUNN_BLAS``, checked: auto (default), mkl or openblas."""
    v = os.environ.get(_VAR, "").strip().lower() or "auto"
    if v == "numpy":
        v = "openblas"
    if v not in _CHOICES:
        raise ValueError(f"{_VAR} must be one of {', '.join(_CHOICES)} (the BLAS for gpunn's "
                         f"one-thread CPU products), got {os.environ[_VAR]!r}")
    return v


def _candidates() -> list:
    """Where the mkl wheel puts libmkl_rt (<prefix>/lib), then the loader's own search."""
    found = []
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        found += sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")), reverse=True)
    name = ctypes.util.find_library("mkl_rt")
    if name:
        found.append(name)
    return found


def _intel_cpu() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return "GenuineIntel" in line
    except OSError:
        pass
    return False


def _load(path: str):
    lib = ctypes.CDLL(path)
    # before MKL computes anything: the sequential layer, no OpenMP runtime threads
    lib.MKL_Set_Threading_Layer.argtypes = [ctypes.c_int]
    lib.MKL_Set_Threading_Layer.restype = ctypes.c_int
    lib.MKL_Set_Threading_Layer(_SEQUENTIAL)
    args = [ctypes.c_int] * 6
    for name, real in (("cblas_sgemm", ctypes.c_float), ("cblas_dgemm", ctypes.c_double)):
        fn = getattr(lib, name)
        fn.argtypes = args + [real, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                              ctypes.c_int, real, ctypes.c_void_p, ctypes.c_int]
        fn.restype = None
    return lib


def library():
    """The loaded MKL (ctypes), or None; loads it on first use as ``GPUNN_BLAS`` says."""
    global _lib, _why_not
    if _lib is None:
        with _lock:
            if _lib is None:
                _lib, _why_not = _find(choice())
    return _lib or None


def _numpy_uses_mkl() -> bool:
    """NumPy built against MKL (conda's): its BLAS is MKL already, and switching the shared
    library to the sequential layer would take NumPy's own threads away."""
    from ..threads import _numpy_blas
    return any(getattr(lib, "internal_api", "") == "mkl" for lib in _numpy_blas())


def _find(want: str):
    if want == "openblas":
        return False, f"{_VAR}=openblas"
    if _numpy_uses_mkl():
        return False, "NumPy's own BLAS is MKL already"
    if want == "auto" and not _intel_cpu():
        return False, "not an Intel CPU (GPUNN_BLAS=mkl to use MKL anyway)"
    errors = []
    for path in _candidates():
        try:
            return _load(path), ""
        except (OSError, AttributeError) as e:
            errors.append(f"{path}: {e}")
    why = ("MKL is not installed (pip install 'gpunn[mkl]')" if not errors
           else "MKL did not load: " + "; ".join(errors))
    if want == "mkl":
        raise ImportError(f"{_VAR}=mkl: {why}")
    return False, why


def _reset() -> None:
    """Forget the choice (tests change GPUNN_BLAS)."""
    global _lib, _why_not
    with _lock:
        _lib, _why_not = None, ""


def describe() -> str:
    """Which BLAS runs gpunn's CPU products, in words (reports, gpunn bench)."""
    lib = library()
    if lib is None:
        return f"NumPy's BLAS for every product (MKL not used: {_why_not})"
    buf = ctypes.create_string_buffer(256)
    try:
        lib.mkl_get_version_string(buf, len(buf))
        found = re.search(r"Version ([\w.]+)", buf.value.decode(errors="replace"))
        version = found.group(1) if found else "?"
    except AttributeError:
        version = "?"
    return (f"Intel MKL {version} (sequential) for one-thread products except weight "
            f"gradients, NumPy's BLAS for the rest")


def handles(a, b, transa: bool, transb: bool, out, threads: int, macs: int) -> bool:
    """Whether :func:`gemm` takes op(a) @ op(b), of ``macs`` multiply-adds, run on ``threads``
    threads (see the module docstring for the rules)."""
    import numpy as np
    if threads != 1 or transa or macs < MIN_MACS or a.dtype not in (np.float32, np.float64):
        return False
    if not (a.flags.c_contiguous and b.flags.c_contiguous) or min(a.size, b.size) == 0:
        return False
    if out is not None and not out.flags.c_contiguous:
        return False
    if max(a.shape + b.shape) > _INT32_MAX:
        return False
    return library() is not None


def gemm(a, b, transb: bool = False, out=None):
    """a @ op(b) by MKL. a: (M, K) C-contiguous; b: (K, N), or (N, K) with ``transb``; out:
    None or a C-contiguous (M, N) array of the dtype (checked by the caller). -> (M, N)"""
    import numpy as np
    lib = library()
    m, k = a.shape
    n = b.shape[0] if transb else b.shape[1]
    if out is None:
        out = np.empty((m, n), dtype=a.dtype)
    fn = lib.cblas_sgemm if a.dtype == np.float32 else lib.cblas_dgemm
    # ctypes releases the GIL for the call: gpunn's pool threads may run products at once
    fn(_ROW_MAJOR, _NO_TRANS, _TRANS if transb else _NO_TRANS, m, n, k, 1.0,
       a.ctypes.data, k, b.ctypes.data, b.shape[1], 0.0, out.ctypes.data, n)
    return out
