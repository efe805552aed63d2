"""Element-wise activations: NumPy bodies here, CUDA RawKernel bodies beside them.

Every function takes and returns arrays of one dtype; ``xp`` is NumPy or CuPy by the input.
Backward functions take what the forward kept: ReLU-family the input ``x``, sigmoid/tanh the
output ``y`` (their derivatives are cheapest in terms of y).
"""
from __future__ import annotations

from ..backend import get_array_module
from ._cuda import contiguous, i64, launch, scalar, use_cuda_body


def relu_forward(x):
    """y = max(x, 0). x: any shape."""
    if use_cuda_body(x):
        return _relu_forward_cuda(x)
    return _relu_forward_cpu(x)


def _relu_forward_cpu(x):
    xp = get_array_module(x)
    return xp.maximum(x, 0)


def relu_backward(dout, x):
    """dx = dout where x > 0, else 0."""
    if use_cuda_body(x):
        return _relu_backward_cuda(dout, x)
    return _relu_backward_cpu(dout, x)


def _relu_backward_cpu(dout, x):
    return dout * (x > 0)


def leaky_relu_forward(x, slope: float):
    """y = x if x > 0 else slope * x."""
    if use_cuda_body(x):
        return _leaky_relu_forward_cuda(x, slope)
    return _leaky_relu_forward_cpu(x, slope)


def _leaky_relu_forward_cpu(x, slope):
    xp = get_array_module(x)
    return xp.where(x > 0, x, x * x.dtype.type(slope))


def leaky_relu_backward(dout, x, slope: float):
    """dx = dout * (1 if x > 0 else slope)."""
    if use_cuda_body(x):
        return _leaky_relu_backward_cuda(dout, x, slope)
    return _leaky_relu_backward_cpu(dout, x, slope)


def _leaky_relu_backward_cpu(dout, x, slope):
    xp = get_array_module(x)
    return xp.where(x > 0, dout, dout * dout.dtype.type(slope))


def sigmoid_forward(x):
    """y = 1 / (1 + exp(-x)), computed without overflow for large |x|."""
    if use_cuda_body(x):
        return _sigmoid_forward_cuda(x)
    return _sigmoid_forward_cpu(x)


def _sigmoid_forward_cpu(x):
    xp = get_array_module(x)
    e = xp.exp(-xp.abs(x))            # in (0, 1]: never overflows
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def sigmoid_backward(dout, y):
    """dx = dout * y * (1 - y)."""
    if use_cuda_body(y):
        return _sigmoid_backward_cuda(dout, y)
    return _sigmoid_backward_cpu(dout, y)


def _sigmoid_backward_cpu(dout, y):
    return dout * y * (1 - y)


def tanh_forward(x):
    if use_cuda_body(x):
        return _tanh_forward_cuda(x)
    return _tanh_forward_cpu(x)


def _tanh_forward_cpu(x):
    return get_array_module(x).tanh(x)


def tanh_backward(dout, y):
    """dx = dout * (1 - y^2)."""
    if use_cuda_body(y):
        return _tanh_backward_cuda(dout, y)
    return _tanh_backward_cpu(dout, y)


def _tanh_backward_cpu(dout, y):
    return dout * (1 - y * y)


# -- CUDA bodies: kernels/elementwise.cu -------------------------------------------------------
def _unary_cuda(name, x, *extra):
    x = contiguous(x)
    y = get_array_module(x).empty_like(x)
    launch(name, x, x.size, (x, y, i64(x.size), *extra))
    return y


def _binary_cuda(name, dout, ref, *extra):
    dout, ref = contiguous(dout), contiguous(ref)
    dx = get_array_module(ref).empty_like(ref)
    launch(name, ref, ref.size, (dout, ref, dx, i64(ref.size), *extra))
    return dx


def _relu_forward_cuda(x):
    return _unary_cuda("relu_forward", x)


def _relu_backward_cuda(dout, x):
    return _binary_cuda("relu_backward", dout, x)


def _leaky_relu_forward_cuda(x, slope):
    return _unary_cuda("leaky_relu_forward", x, scalar(slope, x.dtype))


def _leaky_relu_backward_cuda(dout, x, slope):
    return _binary_cuda("leaky_relu_backward", dout, x, scalar(slope, x.dtype))


def _sigmoid_forward_cuda(x):
    return _unary_cuda("sigmoid_forward", x)


def _sigmoid_backward_cuda(dout, y):
    return _binary_cuda("sigmoid_backward", dout, y)


def _tanh_forward_cuda(x):
    return _unary_cuda("tanh_forward", x)


def _tanh_backward_cuda(dout, y):
    return _binary_cuda("tanh_backward", dout, y)
