"""Test machinery (like ``numpy.testing``): the library never imports this package.

``emulated_cuda()`` sends NumPy arrays down the ops' CUDA bodies, with the same ``.cu``
kernels compiled for the CPU by the emulator in ``cuda_emu/`` (guard bytes, thread orders,
exact argument types). So the whole CUDA path — grid sizes, argument marshalling, dispatch,
allocation — trains a model in CI without a GPU, and can be compared with the NumPy path:

    from gpunn.testing import emulated_cuda
    with emulated_cuda(order="shuffled"):
        y = model.forward(x, train=True)         # NumPy arrays, CUDA bodies, CPU kernels
"""
from __future__ import annotations

import contextlib

import numpy as np

from ..backend import Backend, use_backend

__all__ = ["EMULATION_MAX_BLOCKS", "EmulatedCudaBackend", "emulated_cuda", "emulated_kernel"]

# Emulated launches use small grids so every grid-stride loop really strides.
EMULATION_MAX_BLOCKS = 16


def _order(order: str) -> str:
    from .cuda_emu import ORDERS
    order = "shuffled" if order == "shuffle" else order
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS} (or 'shuffle'), got {order!r}")
    return order


def emulated_kernel(base: str, dtype, *, order: str = "forward", sanitize: bool | None = None):
    """The CPU twin of kernel ``base`` for ``dtype``, as a :class:`gpunn.kernels.Kernel`
    working on NumPy arrays (``sanitize``: the ASan/UBSan build; default
    ``$GPUNN_EMU_SANITIZE``)."""
    from .. import kernels
    from . import cuda_emu
    file, sig = kernels.kernel_entry(base, dtype)
    san = cuda_emu.sanitize_default() if sanitize is None else sanitize
    fn = cuda_emu.load_module(kernels.kernel_path(file), sanitize=san).get_function(
        sig.name, order=_order(order))
    return kernels.Kernel(file, sig, fn, True, np.ndarray, max_blocks=EMULATION_MAX_BLOCKS)


class EmulatedCudaBackend(Backend):
    """NumPy arrays, CUDA bodies, kernels compiled for the CPU (cached per (base, dtype))."""
    kernels = True

    def __init__(self, order: str = "forward", sanitize: bool | None = None):
        from .cublas_emu import EmulatedCublas
        super().__init__(f"emulated-cuda ({_order(order)})", np)
        self.order, self.sanitize = _order(order), sanitize
        self._cache: dict = {}
        self.blas = EmulatedCublas()          # cuBLAS's column-major GEMM, interpreted

    def kernel(self, base: str, dtype):
        key = (base, np.dtype(dtype))
        k = self._cache.get(key)
        if k is None:
            k = self._cache[key] = emulated_kernel(base, dtype, order=self.order,
                                                   sanitize=self.sanitize)
        return k


@contextlib.contextmanager
def emulated_cuda(order: str = "forward", *, sanitize: bool | None = None):
    """Inside the block, ops on NumPy arrays take their CUDA bodies with CPU-emulated kernels
    (threads run ``order``: "forward" | "reverse" | "shuffled"). Yields the backend."""
    with use_backend(EmulatedCudaBackend(order, sanitize)) as backend:
        yield backend
