"""What the ops' CUDA bodies share: the dispatch test and the kernel launch.

An op takes its CUDA body for CuPy arrays, and also for NumPy arrays while the test-only
emulation mode of ``gpunn.kernels`` is on: then the same bodies (grid sizes, argument
marshalling, output allocation) run with the kernels compiled for the CPU, so CI exercises
the whole CUDA path without a GPU.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module, is_cuda_array

_kernels = None

# which kernels/*.cu file holds each kernel (entry points are NAME_f32 / NAME_f64)
KERNEL_FILES = {
    **dict.fromkeys(["relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward",
                     "bias_relu_forward_2d", "bias_relu_forward_nchw", "sigmoid_forward",
                     "sigmoid_backward", "tanh_forward", "tanh_backward"], "elementwise.cu"),
    "dropout_forward": "dropout.cu",
    "im2col": "im2col.cu", "col2im": "im2col.cu",
    **dict.fromkeys(["maxpool2d_forward", "maxpool2d_forward_noargmax", "maxpool2d_backward",
                     "avgpool2d_forward", "avgpool2d_backward"], "pool.cu"),
    "softmax_xent": "softmax_xent.cu",
    **dict.fromkeys(["sgd_update", "sgd_momentum_update", "adam_update"], "optim.cu"),
}



def _kernel_module():
    global _kernels
    if _kernels is None:
        from .. import kernels
        _kernels = kernels
    return _kernels


def use_cuda_body(x) -> bool:
    """True for CuPy arrays, and for every array while kernel emulation is on."""
    return is_cuda_array(x) or _kernel_module().emulation_active()


def launch(name: str, like, n: int, args: tuple) -> None:
    """Launch kernel ``name`` (dtype and device from ``like``) over ``n`` work items.

    ``args`` must already have the kernel's exact types (arrays, numpy.int32/int64/float32...):
    the kernel checks them, so a marshalling slip fails here rather than reading garbage.
    """
    k = _kernel_module()
    grid, block = k.launch_config(int(n))
    k.kernel_for(like, KERNEL_FILES[name], name)(grid, block, args)   # counted by gpunn.kernels



def contiguous(x):
    """A C-contiguous version of ``x`` (kernels index flat memory)."""
    return get_array_module(x).ascontiguousarray(x)


def scalar(value, dtype):
    """A host scalar of exactly the kernel's parameter type (float -> T, never a Python float:
    a Python float travels as 64 bits and a ``float`` parameter would read garbage)."""
    return np.dtype(dtype).type(value)


i32, i64, u32, u64 = np.int32, np.int64, np.uint32, np.uint64
