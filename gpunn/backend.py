"""Device resolution and the array-module abstraction.

Every layer is written once against an array module ``xp``: NumPy for arrays on the CPU,
CuPy for arrays on a CUDA device. The device travels with the arrays; nothing here keeps a
global "current device" that layers consult.

Device strings: ``"auto" | "cpu" | "cuda" | "cuda:N"``. ``GPUNN_DEVICE=cpu`` in the
environment turns ``"auto"`` into ``"cpu"`` without touching code.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import sys
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Device", "DeviceError", "resolve_device", "cuda_status", "cuda_available",
    "get_array_module", "device_of", "to_device", "to_numpy", "synchronize", "is_cuda_array",
    "FLOAT_DTYPES", "check_dtype", "Backend", "NUMPY", "backend_of", "use_backend",
]


class DeviceError(RuntimeError):
    """A device was asked for that cannot be used here; the message says why and how to fix it."""


@dataclass(frozen=True)
class Device:
    """A resolved device: ``kind`` is ``"cpu"`` or ``"cuda"``; ``index`` is the CUDA ordinal."""
    kind: str
    index: int = 0

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    @property
    def xp(self):
        """The array module for this device (numpy or cupy)."""
        if self.kind == "cpu":
            return np
        import cupy
        return cupy


CPU = Device("cpu")

# -- dtypes: every layer, loss and optimizer takes float32 or float64 ---------------------------
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_dtype(dtype, where: str) -> np.dtype:
    """Normalise a parameter dtype argument; only float32 and float64 are supported."""
    dt = np.dtype(dtype)
    if dt not in FLOAT_DTYPES:
        from .errors import DTypeError
        raise DTypeError(f"{where}: dtype must be float32 or float64, got {dt}")
    return dt


_cuda_status_cache: tuple[bool, str, int] | None = None
_auto_note_printed = False


def cuda_status(refresh: bool = False) -> tuple[bool, str, int]:
    """Return ``(usable, reason, device_count)`` for CUDA, never raising.

    ``reason`` says what is missing when CUDA is not usable (cupy not installed, no driver,
    no device). The probe asks the runtime for the device count and allocates one tiny array,
    because ``cupy.cuda.is_available()`` can be True while allocations still fail.
    """
    global _cuda_status_cache
    if _cuda_status_cache is not None and not refresh:
        return _cuda_status_cache
    _cuda_status_cache = _probe_cuda()
    return _cuda_status_cache


def _probe_cuda() -> tuple[bool, str, int]:
    try:
        import cupy
    except ImportError:
        if nvidia_driver_version() is None:
            return False, "no NVIDIA driver found", 0
        return (False, "cupy is not installed (pip install 'gpunn[cuda12]' or 'gpunn[cuda13]', "
                       "matching your CUDA driver)", 0)
    except Exception as e:  # a broken install raises all sorts of things at import
        return False, f"cupy failed to import: {type(e).__name__}: {e}", 0
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as e:
        msg = str(e) or type(e).__name__
        driver = nvidia_driver_version()
        if driver is None:
            # CUDA says "driver version is insufficient" also when there is no driver at all
            return False, "no NVIDIA driver found", 0
        if "driver" in msg.lower() or "cudaErrorInsufficientDriver" in msg:
            return False, (f"the NVIDIA driver ({driver}) is too old for this CuPy's CUDA "
                           f"runtime; update the driver, or install the CuPy wheel for an older "
                           f"CUDA (cupy-cuda12x)"), 0
        return False, f"the CUDA runtime reports no device ({msg})", 0
    if count == 0:
        return False, "the CUDA driver reports zero devices", 0
    try:
        with cupy.cuda.Device(0):
            cupy.zeros(1, dtype=cupy.float32).sum().item()
    except Exception as e:
        return False, f"CUDA device 0 is not usable: {type(e).__name__}: {e}", count
    return True, f"{count} CUDA device(s)", count


def nvidia_driver_version():
    """The NVIDIA kernel driver's version, "present" when only its library is found, or None
    when this machine has no NVIDIA driver. Never raises."""
    try:
        with open("/proc/driver/nvidia/version") as f:
            for word in f.read().split():
                if word[:1].isdigit() and "." in word:
                    return word
        return "present"
    except OSError:
        pass
    import ctypes
    for lib in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            ctypes.CDLL(lib)
            return "present"
        except OSError:
            continue
    return None


def cuda_available() -> bool:
    """True when a CUDA device can run CuPy arrays. Never raises."""
    return cuda_status()[0]


def resolve_device(device: "str | Device | None" = "auto", *, quiet: bool = False) -> Device:
    """Turn a device string into a :class:`Device`.

    ``"auto"`` picks CUDA when usable, else the CPU (and says so once on stderr). An explicit
    ``"cuda"``/``"cuda:N"`` without a usable device raises :class:`DeviceError` with the reason.
    """
    global _auto_note_printed
    if isinstance(device, Device):
        return device
    if device is None:
        device = "auto"
    if not isinstance(device, str):
        raise DeviceError(f"device must be a string like 'cpu', 'cuda', 'cuda:1' or 'auto', "
                          f"got {type(device).__name__} {device!r}")
    spec = device.strip().lower()
    if spec == "auto":
        env = os.environ.get("GPUNN_DEVICE", "").strip().lower()
        if env and env != "auto":
            return resolve_device(env, quiet=quiet)
        ok, reason, _ = cuda_status()
        if ok:
            return Device("cuda", 0)
        if not quiet and not _auto_note_printed:
            print(f"gpunn: no GPU ({reason.split(';')[0]}); using the CPU", file=sys.stderr)
            _auto_note_printed = True
        return CPU
    if spec == "cpu":
        return CPU
    if spec == "cuda" or spec.startswith("cuda:"):
        index = 0
        if spec.startswith("cuda:"):
            try:
                index = int(spec[5:])
            except ValueError:
                raise DeviceError(f"bad device {device!r}: expected 'cuda:N' with N an integer") from None
            if index < 0:
                raise DeviceError(f"bad device {device!r}: the CUDA ordinal must be >= 0")
        ok, reason, count = cuda_status()
        if not ok:
            raise DeviceError(f"device {device!r} was asked for but CUDA is not usable: {reason}. "
                              "Use device='cpu' (or 'auto') to train on the CPU.")
        if index >= count:
            raise DeviceError(f"device {device!r} does not exist: this machine has {count} CUDA "
                              f"device(s), cuda:0..cuda:{count - 1}")
        return Device("cuda", index)
    raise DeviceError(f"unknown device {device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")


def is_cuda_array(x) -> bool:
    """True for a CuPy array; false for NumPy arrays and anything else. Never imports cupy."""
    return type(x).__module__.startswith("cupy")


def get_array_module(*arrays):
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``.

    Mixing NumPy and CuPy arrays in one call is a device mismatch and raises ``DeviceError``.
    """
    cuda = [is_cuda_array(a) for a in arrays if a is not None]
    for a in arrays:                   # an array type naming its module (emulated devices)
        ns = getattr(type(a), "__gpunn_xp__", None)
        if ns is not None:
            return ns
    if any(cuda):
        if not all(cuda) and any(isinstance(a, np.ndarray) for a in arrays):
            raise DeviceError("arrays on different devices (some NumPy/CPU, some CuPy/CUDA); "
                              "move them with to_device() first")
        import cupy
        return cupy
    return np


# -- backends: what an op needs to run on some arrays -------------------------------------------
class Backend:
    """The array module ``xp`` of an op's arrays and, for backends with ``kernels=True``, the
    custom CUDA kernels its CUDA body launches (``kernel(base, dtype)``).

    Three exist: :data:`NUMPY` (NumPy bodies), one CUDA backend per GPU (CuPy arrays), and the
    emulated-CUDA backend of the tests (gpunn/testing), which sends NumPy arrays down the CUDA
    bodies with CPU-compiled kernels while :func:`use_backend` has it in force.
    """
    kernels = False

    def __init__(self, name: str, xp):
        self.name, self.xp = name, xp

    def kernel(self, base: str, dtype):
        raise DeviceError(f"the {self.name} backend has no CUDA kernels (asked for {base!r})")

    def graph_capture(self):
        raise DeviceError(f"CUDA graphs need a CUDA device; the {self.name} backend runs "
                          "every step eagerly")

    def __repr__(self):
        return f"<gpunn backend {self.name}>"


class CudaBackend(Backend):
    """CuPy arrays on one GPU; kernels compiled for it (gpunn.kernels), cached by (base, dtype)."""
    kernels = True

    def __init__(self, index: int):
        import cupy
        super().__init__(f"cuda:{index}", cupy)
        self.index = index
        self._cache: dict = {}

    def kernel(self, base: str, dtype):
        k = self._cache.get((base, dtype))
        if k is None:
            from .kernels import get_kernel
            k = self._cache[(base, dtype)] = get_kernel(base, dtype, self.index)
        return k

    @property
    def blas(self):
        """This thread's cuBLAS GEMMs for this GPU (gpunn/cublas.py; capturable in a graph)."""
        from .cublas import blas_for
        return blas_for(self.index)

    def graph_capture(self):
        """A context that captures the work issued inside it into a CUDA graph
        (gpunn/graphs.py, :class:`~gpunn.graphs.CudaCapture`)."""
        from .graphs import CudaCapture
        return CudaCapture(self)


NUMPY = Backend("numpy", np)
_cuda_backends: dict = {}
# The backend NumPy arrays run on: NUMPY, except inside use_backend() (the tests' emulated CUDA).
_cpu_backend = contextvars.ContextVar("gpunn_cpu_backend", default=NUMPY)


def backend_of(x) -> Backend:
    """The backend an op on ``x`` runs on: resolved once per op call, from the array."""
    if type(x) is np.ndarray:
        return _cpu_backend.get()
    if is_cuda_array(x):
        idx = x.device.id
        b = _cuda_backends.get(idx)
        if b is None:
            b = _cuda_backends[idx] = CudaBackend(idx)
        return b
    return _cpu_backend.get()


@contextlib.contextmanager
def use_backend(backend: Backend):
    """Run the ops on NumPy arrays through ``backend`` inside the block (per thread and
    context; tests use it for emulated CUDA: ``gpunn.testing.emulated_cuda()``)."""
    token = _cpu_backend.set(backend)
    try:
        yield backend
    finally:
        _cpu_backend.reset(token)


def device_of(x) -> Device:
    """The device an array lives on."""
    if is_cuda_array(x):
        return Device("cuda", int(x.device.id))
    return CPU


def to_device(x, device: "str | Device"):
    """Copy ``x`` (NumPy, CuPy or array-like) to ``device``; a no-op when already there."""
    dev = resolve_device(device)
    if dev.kind == "cpu":
        return to_numpy(x)
    import cupy
    with cupy.cuda.Device(dev.index):
        if is_cuda_array(x) and x.device.id == dev.index:
            return x
        return cupy.asarray(x)


def to_numpy(x) -> np.ndarray:
    """Return a NumPy array for ``x`` (copying from the GPU when needed)."""
    if is_cuda_array(x):
        return x.get()
    return np.asarray(x)


def synchronize(device: "str | Device | None" = None) -> None:
    """Wait for all queued work on ``device`` (no-op on the CPU)."""
    dev = resolve_device(device if device is not None else "auto", quiet=True)
    if dev.is_cuda:
        import cupy
        with cupy.cuda.Device(dev.index):
            cupy.cuda.Device(dev.index).synchronize()


def _reset_for_tests() -> None:
    """Forget cached probe results (tests monkeypatch cupy in and out)."""
    global _cuda_status_cache, _auto_note_printed
    _cuda_status_cache = None
    _auto_note_printed = False

