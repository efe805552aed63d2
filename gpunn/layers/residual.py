"""Residual block (He et al., 2016): output = x + block(x)."""
from __future__ import annotations

from ..errors import ShapeError
from .base import Layer


class Residual(Layer):
    """``y = x + block(x)`` where block is the given layers in sequence.

    The block must keep the per-sample shape (e.g. convs with padding="same" and the same
    channel count). Backward: dx = dout + block.backward(dout).
    """

    def __init__(self, *layers):
        super().__init__()
        if not layers:
            raise ValueError("Residual needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Residual: argument {i} is {type(layer).__name__}, not a Layer")
        self.block = list(layers)

    def children(self):
        return self.block

    def forward(self, x, *, train=None):
        train = self._mode(train)
        h = x
        for layer in self.block:
            h = layer.forward(h, train=train)
        if h.shape != x.shape:
            raise ShapeError(f"{self!r}: the block maps {tuple(x.shape)} to {tuple(h.shape)}; "
                             "a residual block must keep the shape")
        return x + h

    def backward(self, dout):
        d = dout
        for layer in reversed(self.block):
            d = layer.backward(d)
        return dout + d

    def output_shape(self, in_shape):
        s = tuple(in_shape)
        for layer in self.block:
            s = layer.output_shape(s)
        if s != tuple(in_shape):
            raise ShapeError(f"{self!r}: the block maps per-sample shape {tuple(in_shape)} to "
                             f"{s}; a residual block must keep the shape")
        return s

    def extra_repr(self):
        return ", ".join(repr(layer) for layer in self.block)
