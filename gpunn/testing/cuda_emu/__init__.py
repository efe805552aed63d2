"""CPU emulation of gpunn's CUDA kernels (test-only; see docs/KERNELS.md).

The ``kernels/*.cu`` sources are compiled unchanged with g++ against ``cuda_shim.h`` and run
one (block, thread) at a time; :class:`EmulatedModule` mirrors ``cupy.RawModule`` and its
kernels mirror ``cupy.RawKernel``'s ``kernel(grid, block, args)`` call on NumPy arrays.

    mod = load_module("kernels/elementwise.cu")
    relu = mod.get_function("relu_forward_f32", order="shuffled")
    relu((4,), (32,), (x, y, np.int64(x.size)))

``GPUNN_EMU_SANITIZE=1`` (or ``sanitize=True``) uses the AddressSanitizer/UBSan build; the
process must preload the ASan runtime (``scripts/sanitize_kernels.sh``).
"""
from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

from .build import EmulatorBuildError, build_library, cache_dir
from .launcher import ORDERS, ArgumentTypeError, EmulatedKernel, EmulationError, GuardError
from ...kernel_signatures import KernelSig, Param, SignatureError, parse_kernels

__all__ = ["load_module", "EmulatedModule", "EmulatedKernel", "EmulationError", "GuardError",
           "ArgumentTypeError", "EmulatorBuildError", "SignatureError", "KernelSig", "Param",
           "parse_kernels", "build_library", "cache_dir", "sanitize_default", "ORDERS"]


def sanitize_default() -> bool:
    return os.environ.get("GPUNN_EMU_SANITIZE", "").strip().lower() in ("1", "true", "yes")


class EmulatedModule:
    """A ``.cu`` file built for the CPU: ``get_function(name)`` -> :class:`EmulatedKernel`."""

    def __init__(self, cu_path, *, sanitize: bool | None = None):
        self.path = Path(cu_path).resolve()
        self.sanitize = sanitize_default() if sanitize is None else sanitize
        self.signatures = parse_kernels(self.path)
        self.library_path = build_library(self.path, sanitize=self.sanitize)
        self._lib = ctypes.CDLL(str(self.library_path))
        self._lib.gpunn_emu_alloc.restype = ctypes.c_void_p
        self._lib.gpunn_emu_alloc.argtypes = [ctypes.c_ulonglong]
        self._lib.gpunn_emu_free.restype = None
        self._lib.gpunn_emu_free.argtypes = [ctypes.c_void_p]

    def get_function(self, name: str, *, order: str = "forward", seed: int = 0) -> EmulatedKernel:
        sig = self.signatures.get(name)
        if sig is None:
            raise KeyError(f"{self.path.name} has no kernel {name!r}; it defines: "
                           f"{', '.join(self.signatures)}")
        return EmulatedKernel(self._lib, sig, order=order, seed=seed, sanitize=self.sanitize)


_modules: dict = {}
_modules_lock = threading.Lock()


def load_module(cu_path, *, sanitize: bool | None = None) -> EmulatedModule:
    """The (cached) :class:`EmulatedModule` of ``cu_path``; rebuilt when the source changes."""
    path = Path(cu_path).resolve()
    san = sanitize_default() if sanitize is None else sanitize
    key = (str(path), san, path.stat().st_mtime_ns)
    with _modules_lock:
        mod = _modules.get(key)
    if mod is None:
        mod = EmulatedModule(path, sanitize=san)
        with _modules_lock:
            _modules[key] = mod
    return mod
