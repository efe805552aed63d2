"""Activation layers. Each keeps what its backward needs: the input for the ReLU family,
the output for sigmoid, tanh and softmax."""
from __future__ import annotations

from ..backend import get_array_module
from ..errors import ShapeError
from ..ops import activation as act
from .base import Layer

__all__ = ["ReLU", "LeakyReLU", "Sigmoid", "Tanh", "GELU", "Softmax"]


class _Elementwise(Layer):
    """Shared input checks and caching for shape-preserving element-wise layers."""

    def _check(self, x):
        self.check_input(x)
        return x

    def _check_dout(self, dout, ref):
        if dout.shape != ref.shape:
            raise ShapeError(f"{self!r}: backward expected dout of shape {tuple(ref.shape)}, "
                             f"got {tuple(dout.shape)}")
        return dout


class ReLU(_Elementwise):
    """y = max(x, 0). x: any shape."""

    def forward(self, x, *, train=None):
        self._x = self._check(x)
        return act.relu_forward(x)

    def backward(self, dout):
        x = self._need_cache("_x")
        return act.relu_backward(self._check_dout(dout, x), x)


class LeakyReLU(_Elementwise):
    """y = x for x > 0, slope * x otherwise."""

    def __init__(self, slope: float = 0.01):
        super().__init__()
        self.slope = float(slope)

    def forward(self, x, *, train=None):
        self._x = self._check(x)
        return act.leaky_relu_forward(x, self.slope)

    def backward(self, dout):
        x = self._need_cache("_x")
        return act.leaky_relu_backward(self._check_dout(dout, x), x, self.slope)

    def extra_repr(self):
        return f"slope={self.slope}"


class Sigmoid(_Elementwise):
    """y = 1 / (1 + exp(-x))."""

    def forward(self, x, *, train=None):
        self._y = act.sigmoid_forward(self._check(x))
        return self._y

    def backward(self, dout):
        y = self._need_cache("_y")
        return act.sigmoid_backward(self._check_dout(dout, y), y)


class Tanh(_Elementwise):
    def forward(self, x, *, train=None):
        self._y = act.tanh_forward(self._check(x))
        return self._y

    def backward(self, dout):
        y = self._need_cache("_y")
        return act.tanh_backward(self._check_dout(dout, y), y)


class GELU(_Elementwise):
    """Gaussian error linear unit, tanh form: y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

    This is PyTorch's ``GELU(approximate="tanh")`` (GPT-2, BERT); the exact erf form is not
    implemented, so asking for it is an error rather than a silent difference.
    """

    def __init__(self, approximate: str = "tanh"):
        super().__init__()
        if approximate != "tanh":
            raise ValueError(f"GELU: only approximate='tanh' is implemented, got {approximate!r}")
        self.approximate = approximate

    def forward(self, x, *, train=None):
        self._x = self._check(x)
        return act.gelu_forward(x)

    def backward(self, dout):
        x = self._need_cache("_x")
        return act.gelu_backward(self._check_dout(dout, x), x)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class Softmax(_Elementwise):
    """Softmax over the features: x: (N, K) -> y: (N, K), rows summing to 1.

    For training a classifier use ``losses.SoftmaxCrossEntropy`` on the logits instead: it is
    fused and stable. This layer is for models that must output probabilities.
    """

    def forward(self, x, *, train=None):
        self.check_input(x, 2)
        xp = get_array_module(x)
        e = xp.exp(x - x.max(axis=1, keepdims=True))
        self._y = e / e.sum(axis=1, keepdims=True)
        return self._y

    def backward(self, dout):
        y = self._need_cache("_y")
        self._check_dout(dout, y)
        # Jacobian-vector product: dx_i = y_i * (dout_i - sum_j dout_j y_j)
        return y * (dout - (dout * y).sum(axis=1, keepdims=True))

    def output_shape(self, in_shape):
        if len(in_shape) != 1:
            raise ShapeError(f"{self!r}: expects per-sample input (K,), got {tuple(in_shape)}")
        return tuple(in_shape)
