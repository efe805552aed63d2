"""Element-wise activations: each op's NumPy body, and its CUDA body (kernels/elementwise.cu)
right below it.

Every function takes and returns arrays of one dtype; ``xp`` is NumPy or CuPy by the input.
Backward functions take what the forward kept: ReLU-family the input ``x``, sigmoid/tanh the
output ``y`` (their derivatives are cheapest in terms of y).
"""
from __future__ import annotations

from ..backend import get_array_module
from .dispatch import op


def _unary(b, name, x, *extra):
    """y = f(x) by kernel ``name``: (x, y, n, *extra)."""
    x = b.xp.ascontiguousarray(x)
    y = b.xp.empty_like(x)
    b.kernel(name, x.dtype).launch(x.size, x, y, x.size, *extra)
    return y


def _binary(b, name, dout, ref, *extra):
    """dx = g(dout, ref) by kernel ``name``: (dout, ref, dx, n, *extra)."""
    dout, ref = b.xp.ascontiguousarray(dout), b.xp.ascontiguousarray(ref)
    dx = b.xp.empty_like(ref)
    b.kernel(name, ref.dtype).launch(ref.size, dout, ref, dx, ref.size, *extra)
    return dx


@op
def relu_forward(x):
    """y = max(x, 0). x: any shape."""
    return get_array_module(x).maximum(x, 0)


@relu_forward.cuda
def _relu_forward_cuda(b, x):
    return _unary(b, "relu_forward", x)


@op
def relu_backward(dout, x):
    """dx = dout where x > 0, else 0."""
    return dout * (x > 0)


@relu_backward.cuda
def _relu_backward_cuda(b, dout, x):
    return _binary(b, "relu_backward", dout, x)


@op
def bias_relu_forward(y, b, relu: bool):
    """A Linear layer's output epilogue, in place: y (N, F) += b (F,) (None: no bias), then
    max(y, 0) if ``relu`` (a fused Linear + ReLU, gpunn.fuse). Returns y."""
    if b is not None:
        y += b
    if relu:
        get_array_module(y).maximum(y, 0, out=y)
    return y


@bias_relu_forward.cuda
def _bias_relu_forward_cuda(b, y, bias, relu):
    if bias is None:
        if relu:                                   # the ReLU kernel, in place
            b.kernel("relu_forward", y.dtype).launch(y.size, y, y, y.size)
        return y
    b.kernel("bias_relu_forward", y.dtype).launch(y.size, y, bias, y.size, y.shape[-1],
                                                  int(bool(relu)))
    return y


@op
def add_relu_forward(a, b):
    """y = max(a + b, 0): a residual block's sum and the ReLU after it (gpunn.fuse), one pass.
    a, b: the same shape and dtype."""
    y = a + b
    get_array_module(y).maximum(y, 0, out=y)
    return y


@add_relu_forward.cuda
def _add_relu_forward_cuda(b, x1, x2):
    return _binary(b, "add_relu_forward", x1, x2)          # (a, b, y, n)


@op
def leaky_relu_forward(x, slope: float):
    """y = x if x > 0 else slope * x."""
    return get_array_module(x).where(x > 0, x, x * x.dtype.type(slope))


@leaky_relu_forward.cuda
def _leaky_relu_forward_cuda(b, x, slope):
    return _unary(b, "leaky_relu_forward", x, slope)


@op
def leaky_relu_backward(dout, x, slope: float):
    """dx = dout * (1 if x > 0 else slope)."""
    return get_array_module(x).where(x > 0, dout, dout * dout.dtype.type(slope))


@leaky_relu_backward.cuda
def _leaky_relu_backward_cuda(b, dout, x, slope):
    return _binary(b, "leaky_relu_backward", dout, x, slope)


@op
def sigmoid_forward(x):
    """y = 1 / (1 + exp(-x)), computed without overflow for large |x|."""
    xp = get_array_module(x)
    e = xp.exp(-xp.abs(x))            # in (0, 1]: never overflows
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


@sigmoid_forward.cuda
def _sigmoid_forward_cuda(b, x):
    return _unary(b, "sigmoid_forward", x)


@op
def sigmoid_backward(dout, y):
    """dx = dout * y * (1 - y)."""
    return dout * y * (1 - y)


@sigmoid_backward.cuda
def _sigmoid_backward_cuda(b, dout, y):
    return _binary(b, "sigmoid_backward", dout, y)


@op
def tanh_forward(x):
    """y = tanh(x)."""
    return get_array_module(x).tanh(x)


@tanh_forward.cuda
def _tanh_forward_cuda(b, x):
    return _unary(b, "tanh_forward", x)


@op
def tanh_backward(dout, y):
    """dx = dout * (1 - y^2)."""
    return dout * (1 - y * y)


@tanh_backward.cuda
def _tanh_backward_cuda(b, dout, y):
    return _binary(b, "tanh_backward", dout, y)


_GELU_K0, _GELU_K1, _GELU_K3 = 0.7978845608028654, 0.044715, 0.134145   # sqrt(2/pi), k1, 3*k1


@op
def gelu_forward(x):
    """GELU, tanh form: y = (0.5*x) * (1 + tanh(k0*(x + k1*x^3))), in the kernel's order."""
    xp, T = get_array_module(x), x.dtype.type
    t = xp.tanh(T(_GELU_K0) * (x + T(_GELU_K1) * (x * x * x)))
    return (T(0.5) * x) * (T(1) + t)


@gelu_forward.cuda
def _gelu_forward_cuda(b, x):
    return _unary(b, "gelu_forward", x)


@op
def gelu_backward(dout, x):
    """dx = dout * (0.5*(1 + t) + (0.5*x)*(1 - t^2)*k0*(1 + 3*k1*x^2)), from the input x."""
    xp, T = get_array_module(x), x.dtype.type
    x2 = x * x
    t = xp.tanh(T(_GELU_K0) * (x + T(_GELU_K1) * (x2 * x)))
    d = T(0.5) * (T(1) + t) + (T(0.5) * x) * ((T(1) - t * t) * (T(_GELU_K0) * (T(1) + T(_GELU_K3) * x2)))
    return dout * d


@gelu_backward.cuda
def _gelu_backward_cuda(b, dout, x):
    return _binary(b, "gelu_backward", dout, x)
