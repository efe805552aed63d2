"""The layer contract every gpunn layer follows.

    params: dict[str, Array]      learnable arrays, on the layer's device (views of Parameters)
    grads:  dict[str, Array]      same keys; backward writes into these arrays in place
    buffers: dict[str, Array]     non-learnable arrays saved with the model (running stats)
    host_state: dict[str, int]    host-side integers saved with the model (dropout seed, step)
    children() -> list[Layer]     sub-layers of a container (Sequential, Residual)
    forward(x, *, train) -> y     keeps what backward needs
    backward(dout) -> dx          fills grads, returns dL/dx
    output_shape(in_shape)        per-sample shape in -> per-sample shape out (no batch axis);
                                  raises ShapeError naming the layer when the input cannot fit

Every learnable array is a :class:`~gpunn.parameter.Parameter` (value and gradient); once a
model packs them (``Sequential`` does when it is built), ``params[name]`` and ``grads[name]``
are views into the model's flat buffers. Assigning ``layer.params["W"] = array`` writes into
the existing array (shape- and dtype-checked, copied to its device), so the buffers, and an
optimizer holding them, see it. Gradients are written in place too (``store_grad``).

``training`` (True when built, as in PyTorch) is the mode ``forward(x)`` and ``layer(x)`` use
when ``train`` is not given; ``train()`` / ``eval()`` set it for a layer and its children.
"""
from __future__ import annotations

import numpy as np

from ..backend import (FLOAT_DTYPES, Device, DeviceError, check_dtype, device_of, resolve_device,
                       to_device)
from ..errors import DTypeError, ShapeError
from ..parameter import Parameter

class ParamDict(dict):
    """``layer.params``: a dict of arrays whose item assignment writes *into* the parameter
    (its flat-buffer view) instead of replacing it; a new name registers a new Parameter."""

    def __init__(self, layer):
        super().__init__()
        self._layer = layer

    def __setitem__(self, name, value):
        p = self._layer._parameters.get(name)
        if p is None:
            self._layer.add_param(name, value)
        else:
            _write_into(p.data, value, f"{self._layer!r}.params[{name!r}]")


class GradDict(dict):
    """``layer.grads``: item assignment writes into the existing gradient array."""

    def __init__(self, layer):
        super().__init__()
        self._layer = layer

    def __setitem__(self, name, value):
        if name not in self:
            raise KeyError(f"{self._layer!r} has no parameter {name!r} (it has: "
                           f"{', '.join(self) or 'none'})")
        _write_into(self[name], value, f"{self._layer!r}.grads[{name!r}]")


def _write_into(dst, value, where: str) -> None:
    shape = getattr(value, "shape", None)
    if shape is None:
        raise TypeError(f"{where}: expected an array, got {type(value).__name__}")
    if tuple(shape) != tuple(dst.shape):
        raise ShapeError(f"{where}: expected shape {tuple(dst.shape)}, got {tuple(shape)}")
    if value.dtype != dst.dtype:
        raise DTypeError(f"{where}: expected dtype {dst.dtype}, got {value.dtype} (convert the "
                         f"array, or the layer with .to(dtype=...))")
    dst[...] = to_device(value, device_of(dst))


class Layer:
    """Base class: parameter bookkeeping, mode, device moves, input checks."""

    def __init__(self):
        self._parameters: dict = {}           # name -> Parameter
        self.params: dict = ParamDict(self)
        self.grads: dict = GradDict(self)
        self.buffers: dict = {}
        self.host_state: dict = {}
        self.training = True

    # -- the contract -------------------------------------------------------------------
    def forward(self, x, *, train: bool | None = None):
        raise NotImplementedError

    def backward(self, dout):
        raise NotImplementedError

    def output_shape(self, in_shape: tuple) -> tuple:
        """Per-sample output shape for a per-sample input shape (default: unchanged)."""
        return tuple(in_shape)

    def __call__(self, x, *, train: bool | None = None):
        return self.forward(x, train=train)

    def _mode(self, train):
        """``train`` as given, or the layer's mode when it is None."""
        return self.training if train is None else bool(train)

    def train(self, mode: bool = True):
        """Set training mode (``mode=False``: evaluation) here and in every child; returns self."""
        for layer in self.walk():
            layer.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    # -- parameters -----------------------------------------------------------------------
    def add_param(self, name: str, value) -> Parameter:
        """Register a learnable array with a zero gradient of the same shape, dtype, device."""
        p = Parameter(value, name, layer=self)
        self._parameters[name] = p
        p.bind(p.data, p.grad)
        return p

    def store_grad(self, name: str, value) -> None:
        """Write ``value`` into the existing gradient array (shape-checked, in place)."""
        g = self.grads[name]
        if g.shape != value.shape:
            raise ShapeError(f"{self!r}: gradient for {name!r} has shape {tuple(value.shape)}, "
                             f"parameter has {tuple(g.shape)}")
        g[...] = value

    def zero_grad(self) -> None:
        params = self.parameters()
        flats = {id(p.flat): p.flat for p in params if p.flat is not None}
        for flat in flats.values():
            flat.grads.fill(0)
        for p in params:
            if p.flat is None:
                p.grad[...] = 0

    # -- containers -----------------------------------------------------------------------
    def children(self) -> list:
        """Direct sub-layers (containers override)."""
        return []

    def walk(self):
        """This layer and every layer inside it, depth first."""
        yield self
        for child in self.children():
            yield from child.walk()

    def named_parameters(self) -> list:
        """``[(name, Parameter), ...]`` for this layer and its children, e.g. ``"2.0.W"``."""
        return [(prefix + k, p) for prefix, layer in self._prefixed_layers()
                for k, p in layer._parameters.items()]

    def parameters(self) -> list:
        """Every :class:`Parameter` here and in the children, in a fixed order."""
        return [p for _, p in self.named_parameters()]

    def _prefixed_layers(self, prefix: str = ""):
        yield prefix, self
        for i, child in enumerate(self.children()):
            yield from child._prefixed_layers(f"{prefix}{i}.")

    # -- devices --------------------------------------------------------------------------
    @property
    def device(self) -> Device | None:
        """The device of the first parameter or buffer here or in a child (None: no arrays)."""
        for layer in self.walk():
            for a in list(layer.params.values()) + list(layer.buffers.values()):
                return device_of(a)
        return None

    @property
    def dtype(self):
        """The dtype of the first parameter here or in a child (None: no parameters)."""
        for layer in self.walk():
            for a in layer.params.values():
                return a.dtype
        return None

    def to(self, device=None, *, dtype=None):
        """Move (and/or convert) parameters, gradients and buffers, children's too; returns self.

        Packed parameters move as whole flat buffers and every view follows, so an optimizer
        built before the move keeps working. A buffer is shared by the whole model it was
        packed for: moving one layer of a model moves the model's parameters with it.
        """
        dev = None if device is None else resolve_device(device)
        dt = None if dtype is None else check_dtype(dtype, f"{type(self).__name__}.to")
        params = self.parameters()
        for flat in {id(p.flat): p.flat for p in params if p.flat is not None}.values():
            flat.to(dev, dtype=dt)
        for p in params:
            if p.flat is None:
                p.bind(_convert(p.data, dev, dt), _convert(p.grad, dev, dt))
        for layer in self.walk():
            for k in list(layer.buffers):
                layer.buffers[k] = _convert(layer.buffers[k], dev, dt)
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
                raise DeviceError(f"{self!r}: {what} is on {device_of(x)} but the layer's "
                                  f"parameters are on {pdev}; move one with .to()")

    @staticmethod
    def _layout(ndim):
        return {2: " (N, features)", 4: " (N, C, H, W)"}.get(ndim, "")

    def _need_cache(self, name: str):
        v = getattr(self, name, None)
        if v is None:
            raise RuntimeError(f"{self!r}: backward() called before forward(train=True), or "
                               "again after a model's backward (which frees what each forward "
                               "saved: one backward per forward)")
        return v

    # what forward keeps for backward: activations, masks, im2col inputs...
    _CACHES = ("_cache", "_x", "_y", "_mask")

    def release_caches(self) -> None:
        """Drop the arrays the last forward kept for backward, in this layer and the layers
        inside it, so that their memory goes back before the next forward (as PyTorch frees
        a graph's saved tensors in backward). A container's backward does this for each
        layer once its gradient is through; a later backward needs a new forward."""
        for name in self._CACHES:
            if self.__dict__.get(name) is not None:
                self.__dict__[name] = None
        plan = self.__dict__.get("_fused")      # a container's fused steps (gpunn.fuse)
        for step in plan[1] if plan is not None else ():
            step.release_caches()
        for child in self.children():
            child.release_caches()

    def _planned(self, layers: list) -> list:
        """``layers`` (a container's own list), or the fused plan gpunn.fuse made for them
        while they are unchanged."""
        plan = self.__dict__.get("_fused")
        if plan is not None and plan[0] == tuple(map(id, layers)):
            return plan[1]
        return layers

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self) -> str:
        return ""


def _convert(a, device, dtype):
    if device is not None:
        a = to_device(a, device)
    if dtype is not None and a.dtype != dtype:
        a = a.astype(dtype)
    return a
