"""Residual block (He et al., 2016): output = shortcut(x) + block(x)."""
from __future__ import annotations

from ..errors import ShapeError
from ..ops.activation import add_relu_forward, relu_backward
from .base import Layer

__all__ = ["Residual"]


class Residual(Layer):
    """``y = shortcut(x) + block(x)`` where block is the given layers in sequence.

    Without ``shortcut`` the shortcut is the identity and the block must keep the per-sample
    shape (convs with padding="same" and the same channel count). ``shortcut`` (a layer or a
    list of layers, e.g. ``[Conv2d(16, 32, 1, stride=2, bias=False), BatchNorm2d(32)]``, the
    projection of a downsampling block) maps x to the block's output shape.
    Backward: dx = shortcut.backward(dout) + block.backward(dout) (dout itself for the identity).
    """

    def __init__(self, *layers, shortcut=None):
        super().__init__()
        if not layers:
            raise ValueError("Residual needs at least one layer")
        self.block = _layer_list(layers, "Residual")
        self.shortcut = [] if shortcut is None else _layer_list(
            shortcut if isinstance(shortcut, (list, tuple)) else [shortcut], "Residual shortcut")
        if shortcut is not None and not self.shortcut:
            raise ValueError("Residual: shortcut must be a layer or a non-empty list of layers")

    def children(self):
        # block first: a block-only Residual names its parameters "0.W", "1.W", ... as before
        return self.block + self.shortcut

    def _block_steps(self):
        """The block's layers, or the fused plan gpunn.fuse made for them while unchanged."""
        return self._planned(self.block)

    def forward(self, x, *, train=None):
        return self._forward(x, train)

    def backward(self, dout):
        return self._backward(dout, None)

    # the bodies, shared with a fused Residual + ReLU (gpunn.fuse): relu=True applies the ReLU
    # in the pass that adds the two branches; y_relu, that output, masks dout first
    def _forward(self, x, train=None, relu: bool = False):
        train = self._mode(train)
        h = x
        for layer in self._block_steps():
            h = layer.forward(h, train=train)
        s = x
        for layer in self.shortcut:
            s = layer.forward(s, train=train)
        if h.shape != s.shape:
            if self.shortcut:
                raise ShapeError(f"{self!r}: the block maps {tuple(x.shape)} to {tuple(h.shape)} "
                                 f"but the shortcut maps it to {tuple(s.shape)}")
            raise ShapeError(f"{self!r}: the block maps {tuple(x.shape)} to {tuple(h.shape)}; "
                             "a residual block must keep the shape (or give a shortcut)")
        return add_relu_forward(s, h) if relu else s + h

    def _backward(self, dout, y_relu):
        if y_relu is not None:
            dout = relu_backward(dout, y_relu)
        d = dout
        for layer in reversed(self._block_steps()):
            d = layer.backward(d)
        ds = dout
        for layer in reversed(self.shortcut):
            ds = layer.backward(ds)
        return ds + d

    def output_shape(self, in_shape):
        s = tuple(in_shape)
        for layer in self.block:
            s = layer.output_shape(s)
        t = tuple(in_shape)
        for layer in self.shortcut:
            t = layer.output_shape(t)
        if s != t:
            if self.shortcut:
                raise ShapeError(f"{self!r}: the block maps per-sample shape {tuple(in_shape)} "
                                 f"to {s} but the shortcut maps it to {t}")
            raise ShapeError(f"{self!r}: the block maps per-sample shape {tuple(in_shape)} to "
                             f"{s}; a residual block must keep the shape (or give a shortcut)")
        return s

    def extra_repr(self):
        s = ", ".join(repr(layer) for layer in self.block)
        if self.shortcut:
            s += ", shortcut=[" + ", ".join(repr(layer) for layer in self.shortcut) + "]"
        return s


def _layer_list(layers, where):
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"{where}: argument {i} is {type(layer).__name__}, not a Layer")
    return list(layers)
