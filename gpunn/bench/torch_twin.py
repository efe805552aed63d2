"""The identical network in PyTorch: a gpunn model translated layer by layer, weights copied.

``to_torch(model)`` walks a gpunn :class:`~gpunn.Sequential` and builds the same layers in
``torch.nn`` with the same parameter values (Linear's W is (in, out) here and (out, in) in
torch; convolution weights share the (O, C, kh, kw) layout), so the benchmark compares two
implementations of one network, not two networks, and a test checks the outputs agree.
Only PyTorch's own layers are used (cuDNN / oneDNN choose the kernels).

PyTorch is imported inside the functions: gpunn never needs it.
"""
from __future__ import annotations

import numpy as np

from ..backend import to_numpy

__all__ = ["to_torch", "torch_available"]


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _pad_spec(layer, in_hw):
    """The layer's padding as (pt, pb, pl, pr) for an (h, w) input."""
    from ..ops.geometry import normalize_padding
    kh, kw = layer.kernel_size
    sy, sx = layer.stride
    return normalize_padding(layer.padding, in_hw[0], in_hw[1], kh, kw, sy, sx, repr(layer))


def _param(t, a):
    import torch
    return torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(to_numpy(a))).to(t))


def to_torch(model, input_shape, *, dtype=None):
    """``torch.nn.Sequential`` equal to gpunn ``model`` for per-sample ``input_shape``.

    dtype: torch dtype of the parameters (default: the model's). Raises NotImplementedError
    naming the layer where a gpunn layer has no PyTorch equivalent here.
    """
    import torch
    params = model.parameters()
    own = np.dtype(params[0].dtype) if params else np.dtype(np.float32)
    dt = dtype or {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[own]
    mods, _ = _translate_list(list(model.layers), tuple(input_shape), dt)
    return torch.nn.Sequential(*mods)


def _translate_list(layers, shape, dt):
    mods = []
    for layer in layers:
        m, shape = _translate(layer, shape, dt)
        mods.extend(m)
    return mods, shape


def _residual_class():
    import torch

    class Residual(torch.nn.Module):
        """y = shortcut(x) + block(x), shortcut the identity when empty."""

        def __init__(self, block, shortcut):
            super().__init__()
            self.block = torch.nn.Sequential(*block)
            self.shortcut = torch.nn.Sequential(*shortcut)

        def forward(self, x):
            return self.shortcut(x) + self.block(x)
    return Residual


def _translate(layer, shape, dt):
    """([torch modules], output per-sample shape) for one gpunn layer."""
    import torch
    import torch.nn as nn
    name = type(layer).__name__
    out = layer.output_shape(shape)
    if name == "Linear":
        m = nn.Linear(layer.in_features, layer.out_features, bias="b" in layer.params)
        m.weight = _param(dt, to_numpy(layer.params["W"]).T)
        if "b" in layer.params:
            m.bias = _param(dt, layer.params["b"])
        return [m], out
    if name == "Conv2d":
        pt, pb, pl, pr = _pad_spec(layer, shape[1:])
        pre = []
        if (pt, pl) != (pb, pr):         # asymmetric "same": pad first, as TensorFlow does
            pre, pad = [nn.ZeroPad2d((pl, pr, pt, pb))], 0
        else:
            pad = (pt, pl)
        m = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                      pad, bias="b" in layer.params)
        m.weight = _param(dt, layer.params["W"])
        if "b" in layer.params:
            m.bias = _param(dt, layer.params["b"])
        return pre + [m], out
    if name in ("MaxPool2d", "AvgPool2d"):
        pt, pb, pl, pr = _pad_spec(layer, shape[1:])
        if (pt, pl) != (pb, pr):
            raise NotImplementedError(f"{layer!r}: asymmetric pooling padding has no "
                                      "PyTorch twin here")
        if name == "MaxPool2d":
            return [nn.MaxPool2d(layer.kernel_size, layer.stride, (pt, pl))], out
        return [nn.AvgPool2d(layer.kernel_size, layer.stride, (pt, pl),
                             count_include_pad=layer.count_include_pad)], out
    if name == "GlobalAvgPool2d":
        return [nn.AdaptiveAvgPool2d(1), nn.Flatten()], out
    if name in ("BatchNorm1d", "BatchNorm2d"):
        m = getattr(nn, name)(layer.num_features, eps=layer.eps, momentum=layer.momentum)
        m.weight = _param(dt, layer.params["gamma"])
        m.bias = _param(dt, layer.params["beta"])
        m.running_mean = torch.from_numpy(to_numpy(layer.buffers["running_mean"]).copy()).to(dt)
        m.running_var = torch.from_numpy(to_numpy(layer.buffers["running_var"]).copy()).to(dt)
        return [m], out
    if name == "Flatten":
        return [nn.Flatten()], out
    if name == "Dropout":
        return [nn.Dropout(layer.p)], out
    simple = {"ReLU": nn.ReLU, "Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh}
    if name in simple:
        return [simple[name]()], out
    if name == "LeakyReLU":
        return [nn.LeakyReLU(layer.slope)], out
    if name == "GELU":
        return [nn.GELU(approximate="tanh")], out
    if name == "Softmax":
        return [nn.Softmax(dim=1)], out
    if name == "Residual":
        block, _ = _translate_list(layer.block, shape, dt)
        shortcut, _ = _translate_list(layer.shortcut, shape, dt)
        return [_residual_class()(block, shortcut)], out
    raise NotImplementedError(f"{layer!r} has no PyTorch twin in gpunn.bench.torch_twin")
