"""Max and average pooling layers over (N, C, H, W)."""
from __future__ import annotations

from ..errors import ShapeError
from ..ops.geometry import normalize_padding, pair, window_geometry
from ..ops.pool import (avgpool2d_backward, avgpool2d_forward, global_avgpool2d_backward,
                        global_avgpool2d_forward, maxpool2d_backward, maxpool2d_forward)
from .base import Layer

__all__ = ["MaxPool2d", "AvgPool2d", "GlobalAvgPool2d"]


class _Pool2d(Layer):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        where = f"{type(self).__name__}({kernel_size})"
        self.kernel_size = pair(kernel_size, "kernel_size", where)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", where)
        if min(self.kernel_size) <= 0 or min(self.stride) <= 0:
            raise ValueError(f"{where}: kernel_size and stride must be positive")
        normalize_padding(padding, 1, 1, 1, 1, 1, 1, where)
        if not isinstance(padding, str):
            ph, pw = pair(padding, "padding", where)
            if ph * 2 > self.kernel_size[0] or pw * 2 > self.kernel_size[1]:
                # a window made only of padding would have no pixel to pool
                raise ValueError(f"{where}: padding must be at most half the kernel size, "
                                 f"got {padding!r}")
        self.padding = padding
        self._cache = None

    def _geometry(self, h, w):
        return window_geometry(h, w, self.kernel_size, self.stride, self.padding, repr(self),
                               "window")

    def output_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ShapeError(f"{self!r}: expects per-sample input (C, H, W), got {tuple(in_shape)}")
        _, oh, ow = self._geometry(in_shape[1], in_shape[2])
        return (in_shape[0], oh, ow)

    def _check_dout(self, dout, x_shape, oh, ow):
        expect = (x_shape[0], x_shape[1], oh, ow)
        if dout.shape != expect:
            raise ShapeError(f"{self!r}: backward expected dout of shape {expect}, got "
                             f"{tuple(dout.shape)}")

    def extra_repr(self):
        s = f"kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding not in (0, (0, 0)):
            s += f", padding={self.padding!r}"
        return s


class MaxPool2d(_Pool2d):
    """Maximum over each window; the gradient goes to the first maximum (as PyTorch)."""

    def forward(self, x, *, train=None):
        self.check_input(x, 4)
        pad, oh, ow = self._geometry(*x.shape[2:])
        kh, kw = self.kernel_size
        train = self._mode(train)
        y, argmax = maxpool2d_forward(x, kh, kw, self.stride, pad, with_argmax=train)
        self._cache = (x.shape, argmax, pad, oh, ow) if train else None
        return y

    def backward(self, dout):
        x_shape, argmax, pad, oh, ow = self._need_cache("_cache")
        self._check_dout(dout, x_shape, oh, ow)
        kh, kw = self.kernel_size
        return maxpool2d_backward(dout, argmax, x_shape, kh, kw, self.stride, pad)


class AvgPool2d(_Pool2d):
    """Mean over each window; with ``count_include_pad=False`` (default) padded pixels are not
    counted (TensorFlow "same"), with True they count as zeros (PyTorch's default)."""

    def __init__(self, kernel_size, stride=None, padding=0, count_include_pad: bool = False):
        super().__init__(kernel_size, stride, padding)
        self.count_include_pad = bool(count_include_pad)

    def forward(self, x, *, train=None):
        self.check_input(x, 4)
        pad, oh, ow = self._geometry(*x.shape[2:])
        kh, kw = self.kernel_size
        self._cache = (x.shape, pad, oh, ow)
        return avgpool2d_forward(x, kh, kw, self.stride, pad, self.count_include_pad)

    def backward(self, dout):
        x_shape, pad, oh, ow = self._need_cache("_cache")
        self._check_dout(dout, x_shape, oh, ow)
        kh, kw = self.kernel_size
        return avgpool2d_backward(dout, x_shape, kh, kw, self.stride, pad, self.count_include_pad)


class GlobalAvgPool2d(Layer):
    """x: (N, C, H, W) -> (N, C): the mean over each channel's whole plane (ResNet's head;
    PyTorch's ``AdaptiveAvgPool2d(1)`` followed by ``Flatten``)."""

    def forward(self, x, *, train=None):
        self.check_input(x, 4)
        self._shape = x.shape
        return global_avgpool2d_forward(x)

    def backward(self, dout):
        shape = self._need_cache("_shape")
        if dout.shape != tuple(shape[:2]):
            raise ShapeError(f"{self!r}: backward expected dout of shape {tuple(shape[:2])}, "
                             f"got {tuple(dout.shape)}")
        return global_avgpool2d_backward(dout, shape)

    def output_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ShapeError(f"{self!r}: expects per-sample input (C, H, W), got {tuple(in_shape)}")
        return (in_shape[0],)
