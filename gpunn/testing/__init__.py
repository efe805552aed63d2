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
from .graph_emu import (CaptureError, DeviceArray, EmulatedCapture, GraphBackend,
                        StaleBufferError, device_array, to_device_arrays)

__all__ = ["EMULATION_MAX_BLOCKS", "EmulatedCudaBackend", "EmulatedGraphBackend", "emulated_cuda",
           "emulated_kernel", "DeviceArray", "to_device_arrays", "device_array", "CaptureError",
           "StaleBufferError", "EmulatedCapture"]

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


class EmulatedGraphBackend(GraphBackend, EmulatedCudaBackend):
    """The emulated CUDA backend with CUDA graphs (gpunn/testing/graph_emu.py): its arrays are
    DeviceArrays, its kernel launches, GEMMs and array operations are recorded inside
    ``graph_capture()``."""

    def __init__(self, order: str = "forward", sanitize: bool | None = None):
        super().__init__(order, sanitize)
        self.name = f"emulated-cuda with graphs ({self.order})"
        self._graph_init()


@contextlib.contextmanager
def emulated_cuda(order: str = "forward", *, sanitize: bool | None = None, graphs: bool = False):
    """Inside the block, ops on NumPy arrays take their CUDA bodies with CPU-emulated kernels
    (threads run ``order``: "forward" | "reverse" | "shuffled"). Yields the backend.

    ``graphs=True``: the backend can also capture and replay CUDA graphs, for arrays on the
    emulated device (``to_device_arrays(model, optimizer)``, ``device_array(x)``)."""
    cls = EmulatedGraphBackend if graphs else EmulatedCudaBackend
    with use_backend(cls(order, sanitize)) as backend:
        yield backend
