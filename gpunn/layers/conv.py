"""2-d convolution by im2col + one GEMM (cross-correlation, as in every framework)."""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..init import get_initialiser, make_rng
from ..ops.conv import conv2d_backward, conv2d_forward
from ..ops.geometry import normalize_padding, pair, window_geometry
from ..backend import check_dtype
from .base import Layer

__all__ = ["Conv2d"]


class Conv2d(Layer):
    """x: (N, C_in, H, W) -> y: (N, C_out, oh, ow); W: (C_out, C_in, kh, kw), b: (C_out,).

    ``padding`` is an int, a pair (ph, pw), or "same" (TensorFlow: out = ceil(in / stride),
    the odd extra pad at the bottom/right).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True, *, init="xavier_uniform", rng=None, dtype=np.float32):
        super().__init__()
        where = f"Conv2d({in_channels}, {out_channels}, {kernel_size})"
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        if self.in_channels <= 0 or self.out_channels <= 0:
            raise ValueError(f"{where}: channel counts must be positive")
        self.kernel_size = pair(kernel_size, "kernel_size", where)
        self.stride = pair(stride, "stride", where)
        if min(self.kernel_size) <= 0 or min(self.stride) <= 0:
            raise ValueError(f"{where}: kernel_size and stride must be positive")
        normalize_padding(padding, 1, 1, 1, 1, 1, 1, where)      # validate early
        self.padding = padding
        dtype = check_dtype(dtype, "Conv2d")
        kh, kw = self.kernel_size
        shape = (self.out_channels, self.in_channels, kh, kw)
        W = get_initialiser(init)(shape, self.in_channels * kh * kw, self.out_channels * kh * kw,
                                  make_rng(rng), dtype)
        self.add_param("W", np.ascontiguousarray(W, dtype=dtype))
        if bias:
            self.add_param("b", np.zeros(self.out_channels, dtype=dtype))
        self._cache = None
        # False: backward skips dL/dx and returns None (the first layer of a model, whose
        # input needs no gradient; gpunn.train's TrainStep sets it, as PyTorch skips it)
        self.input_grad = True

    def _geometry(self, h, w):
        return window_geometry(h, w, self.kernel_size, self.stride, self.padding, repr(self),
                               "kernel")

    def forward(self, x, *, train=None):
        return self._forward(x, relu=False)

    def backward(self, dout):
        return self._backward(dout, None)

    # The work, with the fused ReLU of gpunn.fuse (a Conv2d directly followed by a ReLU):
    # relu=True applies it in the output pass; backward then gets the forward's output y.
    # The ops (gpunn/ops/conv.py) run chunked on the CPU, im2col + GEMM + epilogue on a GPU.
    def _forward(self, x, train=None, relu: bool = False):      # train: as any layer (unused)
        self.check_input(x, 4, feature_axis=1, features=self.in_channels)
        pad, oh, ow = self._geometry(*x.shape[2:])
        y, cache = conv2d_forward(x, self.params["W"], self.params.get("b"), self.stride, pad,
                                  relu)
        self._cache = (x.shape, cache, pad, oh, ow)
        return y

    def _backward(self, dout, y_relu):
        x_shape, cache, pad, oh, ow = self._need_cache("_cache")
        n = x_shape[0]
        if dout.shape != (n, self.out_channels, oh, ow):
            raise ShapeError(f"{self!r}: backward expected dout of shape "
                             f"{(n, self.out_channels, oh, ow)}, got {tuple(dout.shape)}")
        # the op writes dW and db into the gradient buffers (on a GPU db without a copy)
        dx, _, _ = conv2d_backward(dout, cache, self.params["W"], self.stride, pad,
                                   "b" in self.params, y_relu, self.input_grad,
                                   out=(self.grads["W"], self.grads.get("b")))
        return dx

    def output_shape(self, in_shape):
        if len(in_shape) != 3 or in_shape[0] != self.in_channels:
            raise ShapeError(f"{self!r}: expects per-sample input ({self.in_channels}, H, W), "
                             f"got {tuple(in_shape)}")
        _, oh, ow = self._geometry(in_shape[1], in_shape[2])
        return (self.out_channels, oh, ow)

    def extra_repr(self):
        kh, kw = self.kernel_size
        s = f"{self.in_channels}, {self.out_channels}, kernel_size=({kh}, {kw})"
        if self.stride != (1, 1):
            s += f", stride={self.stride}"
        if self.padding not in (0, (0, 0)):
            s += f", padding={self.padding!r}"
        if "b" not in self.params:
            s += ", bias=False"
        return s
