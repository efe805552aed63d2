"""``@op``: one op, its NumPy body and its CUDA body side by side, dispatched once per call.

    @op
    def relu_forward(x):                  # the NumPy body (also CuPy's, where no kernel is)
        return get_array_module(x).maximum(x, 0)

    @relu_forward.cuda
    def _relu_forward_cuda(b, x):         # the CUDA body: b is the backend (b.xp, b.kernel)
        ...
        b.kernel("relu_forward", x.dtype).launch(x.size, x, y, x.size)

A call resolves the backend of its first argument once (gpunn.backend.backend_of): CuPy
arrays, and NumPy arrays under the tests' emulated CUDA, take the CUDA body; everything else
the NumPy body. An op without a CUDA body runs its NumPy body through CuPy on a GPU.
"""
from __future__ import annotations

import functools

from ..backend import backend_of

__all__ = ["op"]


def op(numpy_body):
    cuda_body = None

    @functools.wraps(numpy_body)
    def dispatch(x, *args, **kwargs):
        if cuda_body is not None:
            b = backend_of(x)
            if b.kernels:
                return cuda_body(b, x, *args, **kwargs)
        return numpy_body(x, *args, **kwargs)

    def register_cuda(fn):
        nonlocal cuda_body
        cuda_body = fn
        dispatch.cuda_body = fn
        return fn

    dispatch.numpy = numpy_body
    dispatch.cuda = register_cuda
    dispatch.cuda_body = None
    return dispatch
