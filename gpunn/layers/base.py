"""The layer contract every gpunn layer follows.

    params: dict[str, Array]      learnable arrays, on the layer's device
    grads:  dict[str, Array]      same keys; backward writes into these arrays in place
    buffers: dict[str, Array]     non-learnable arrays saved with the model (running stats)
    host_state: dict[str, int]    host-side integers saved with the model (dropout seed, step)
    children() -> list[Layer]     sub-layers of a container (Sequential, Residual)
    forward(x, *, train) -> y     keeps what backward needs
    backward(dout) -> dx          fills grads, returns dL/dx
    output_shape(in_shape)        per-sample shape in -> per-sample shape out (no batch axis);
                                  raises ShapeError naming the layer when the input cannot fit

A layer reads its parameters from ``params`` at every call, so assigning a new array there
takes effect. Gradients are written into the existing ``grads`` arrays (``g[...] = value``),
so an optimizer that holds those arrays sees every new gradient.
"""
from __future__ import annotations

import numpy as np

from ..backend import FLOAT_DTYPES, Device, check_dtype, device_of, get_array_module, to_device
from ..errors import DTypeError, ShapeError

class Layer:
    """Base class: parameter bookkeeping, device moves, input checks."""

    def __init__(self):
        self.params: dict = {}
        self.grads: dict = {}
        self.buffers: dict = {}
        self.host_state: dict = {}

    # -- the contract -------------------------------------------------------------------
    def forward(self, x, *, train: bool = False):
        raise NotImplementedError

    def backward(self, dout):
        raise NotImplementedError

    def output_shape(self, in_shape: tuple) -> tuple:
        """Per-sample output shape for a per-sample input shape (default: unchanged)."""
        return tuple(in_shape)

    def __call__(self, x, *, train: bool = False):
        return self.forward(x, train=train)

    # -- parameters -----------------------------------------------------------------------
    def add_param(self, name: str, value) -> None:
        """Register a learnable array and a zero gradient of the same shape, dtype, device."""
        xp = get_array_module(value)
        self.params[name] = value
        self.grads[name] = xp.zeros_like(value)

    def store_grad(self, name: str, value) -> None:
        """Write ``value`` into the existing gradient array (shape-checked, in place)."""
        g = self.grads[name]
        if g.shape != value.shape:
            raise ShapeError(f"{self!r}: gradient for {name!r} has shape {tuple(value.shape)}, "
                             f"parameter has {tuple(g.shape)}")
        g[...] = value

    def zero_grad(self) -> None:
        for layer in self.walk():
            for g in layer.grads.values():
                g[...] = 0

    # -- containers -----------------------------------------------------------------------
    def children(self) -> list:
        """Direct sub-layers (containers override)."""
        return []

    def walk(self):
        """This layer and every layer inside it, depth first."""
        yield self
        for child in self.children():
            yield from child.walk()

    def _named(self, attr: str, prefix: str = ""):
        for k, v in getattr(self, attr).items():
            yield prefix + k, v
        for i, child in enumerate(self.children()):
            yield from child._named(attr, f"{prefix}{i}.")

    def named_parameters(self) -> list:
        """``[(name, param, grad), ...]`` for this layer and its children, e.g. ``"2.0.W"``."""
        out = []
        for layer_prefix, layer in self._prefixed_layers():
            for k, p in layer.params.items():
                out.append((layer_prefix + k, p, layer.grads[k]))
        return out

    def parameters(self) -> list:
        """``[(param, grad), ...]``: live arrays, for an optimizer built once."""
        return [(p, g) for _, p, g in self.named_parameters()]

    def _prefixed_layers(self, prefix: str = ""):
        yield prefix, self
        for i, child in enumerate(self.children()):
            yield from child._prefixed_layers(f"{prefix}{i}.")

    # -- devices --------------------------------------------------------------------------
    @property
    def device(self) -> Device | None:
        for a in list(self.params.values()) + list(self.buffers.values()):
            return device_of(a)
        return None

    @property
    def dtype(self):
        for a in self.params.values():
            return a.dtype
        return None

    def to(self, device):
        """Move params, grads and buffers (children's too) to ``device``; returns self.

        The arrays are replaced, so build optimizers after moving the model.
        """
        for layer in self.walk():
            for d in (layer.params, layer.grads, layer.buffers):
                for k in list(d):
                    d[k] = to_device(d[k], device)
        return self

    # -- input checks ---------------------------------------------------------------------
    def check_input(self, x, ndim: int | None = None, *, feature_axis: int | None = None,
                    features: int | None = None, what: str = "input"):
        """Raise a clear error when ``x`` has the wrong rank, feature size or dtype.

        The dtype must be float32/float64 and match the layer's parameters, if it has any.
        """
        shape = getattr(x, "shape", None)
        if shape is None:
            raise TypeError(f"{self!r}: {what} must be an array, got {type(x).__name__}")
        if ndim is not None and len(shape) != ndim:
            raise ShapeError(f"{self!r}: expected a {ndim}-d {what}{self._layout(ndim)}, "
                             f"got shape {tuple(shape)}")
        if features is not None and shape[feature_axis] != features:
            axis_name = "channels" if ndim == 4 else "features"
            raise ShapeError(f"{self!r}: expected {what} with {features} {axis_name} on axis "
                             f"{feature_axis}, got shape {tuple(shape)}")
        dt = np.dtype(x.dtype)
        if dt not in FLOAT_DTYPES:
            raise DTypeError(f"{self!r}: {what} dtype must be float32 or float64, got {dt}")
        pdt = self.dtype
        if pdt is not None and dt != pdt:
            raise DTypeError(f"{self!r}: {what} dtype {dt} does not match the layer's "
                             f"parameters ({pdt}); convert with x.astype({pdt}) or build the "
                             f"layer with dtype={dt}")
        if self.params:
            pdev = self.device
            if pdev is not None and device_of(x) != pdev:
                from ..backend import DeviceError
                raise DeviceError(f"{self!r}: {what} is on {device_of(x)} but the layer's "
                                  f"parameters are on {pdev}; move one with .to()")

    @staticmethod
    def _layout(ndim):
        return {2: " (N, features)", 4: " (N, C, H, W)"}.get(ndim, "")

    def _need_cache(self, name: str):
        v = getattr(self, name, None)
        if v is None:
            raise RuntimeError(f"{self!r}: backward() called before forward(train=True)")
        return v

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self) -> str:
        return ""
