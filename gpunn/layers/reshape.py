"""Shape-only layers."""
from __future__ import annotations

from ..errors import ShapeError
from .base import Layer

__all__ = ["Flatten"]


class Flatten(Layer):
    """x: (N, d1, d2, ...) -> (N, d1*d2*...). A view where the input is contiguous."""

    def forward(self, x, *, train=None):
        self.check_input(x)
        if x.ndim < 2:
            raise ShapeError(f"{self!r}: expected at least 2-d input (N, ...), got shape "
                             f"{tuple(x.shape)}")
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dout):
        shape = self._need_cache("_shape")
        n = 1
        for s in shape[1:]:
            n *= s
        if dout.shape != (shape[0], n):
            raise ShapeError(f"{self!r}: backward expected dout of shape {(shape[0], n)}, got "
                             f"{tuple(dout.shape)}")
        return dout.reshape(shape)

    def output_shape(self, in_shape):
        n = 1
        for s in in_shape:
            n *= s
        return (n,)
