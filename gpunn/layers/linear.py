"""Fully connected layer: y = x @ W + b, with W: (in, out) as in the coursework."""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..init import get_initialiser, make_rng
from ..backend import check_dtype
from ..ops.activation import bias_relu_forward, relu_backward
from ..ops.gemm import gemm
from .base import Layer

__all__ = ["Linear"]


class Linear(Layer):
    """``y = x @ W + b``.

    x: (N, in_features) -> y: (N, out_features); W: (in_features, out_features); b: (out_features,)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 init="xavier_uniform", rng=None, dtype=np.float32):
        super().__init__()
        if int(in_features) <= 0 or int(out_features) <= 0:
            raise ValueError(f"Linear: in_features and out_features must be positive, got "
                             f"{in_features}, {out_features}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        dtype = check_dtype(dtype, "Linear")
        W = get_initialiser(init)((self.in_features, self.out_features), self.in_features,
                                  self.out_features, make_rng(rng), dtype)
        self.add_param("W", np.ascontiguousarray(W, dtype=dtype))
        if bias:
            self.add_param("b", np.zeros(self.out_features, dtype=dtype))
        self._x = None
        # False: backward skips dL/dx and returns None (Sequential.backward(input_grad=False)
        # sets it on the model's first layer for the call: the data needs no gradient)
        self.input_grad = True
        # None, or hook(x, dout) -> bool: True when it took the weight gradient over, to be
        # computed later already summed over data-parallel ranks (gpunn/distributed/weight_shards.py)
        self.defer_weight_grad = None

    def forward(self, x, *, train=None):
        return self._forward(x, train)

    def backward(self, dout):
        return self._backward(dout, None)

    # the bodies, shared with a fused Linear + ReLU (gpunn.fuse): relu=True applies the ReLU
    # in the bias pass; y_relu, that output, masks dout first
    def _forward(self, x, train=None, relu: bool = False):
        self.check_input(x, 2, feature_axis=1, features=self.in_features)
        self._x = x
        y = gemm(x, self.params["W"])
        if "b" in self.params or relu:
            bias_relu_forward(y, self.params.get("b"), relu)
        return y

    def _backward(self, dout, y_relu):
        x = self._need_cache("_x")
        if dout.shape != (x.shape[0], self.out_features):
            raise ShapeError(f"{self!r}: backward expected dout of shape "
                             f"{(x.shape[0], self.out_features)}, got {tuple(dout.shape)}")
        if y_relu is not None:
            dout = relu_backward(dout, y_relu)
        if self.defer_weight_grad is None or not self.defer_weight_grad(x, dout):
            gemm(x, dout, transa=True, out=self.grads["W"])       # x.T @ dout, in place
        if "b" in self.params:
            dout.sum(axis=0, out=self.grads["b"])                 # in place: no copy
        if not self.input_grad:          # the model's first layer in a training step
            return None
        return gemm(dout, self.params["W"], transb=True)          # dout @ W.T

    def output_shape(self, in_shape):
        if tuple(in_shape) != (self.in_features,):
            raise ShapeError(f"{self!r}: expects per-sample input ({self.in_features},), got "
                             f"{tuple(in_shape)} (add a Flatten before it?)")
        return (self.out_features,)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={'b' in self.params}"
