"""Learnable parameters and the flat buffers they live in.

A :class:`Parameter` holds one learnable array (``data``) and its gradient (``grad``). A model's
parameters are packed into one contiguous buffer of values and one of gradients per
(device, dtype) — a :class:`FlatBuffer` — and every ``Parameter.data`` / ``.grad`` (and the
owning layer's ``params[name]`` / ``grads[name]``) is a view into them. So:

- an optimizer updates a whole buffer in one fused call (one kernel launch on a GPU), and a
  data-parallel step all-reduces one gradient buffer instead of one array per layer;
- ``model.to(device)`` moves the two buffers and re-points every view: the Parameter objects,
  and so an optimizer holding them, stay the same.

Each view starts at a 64-byte-aligned offset, as a separately allocated array would, so BLAS
sees the same alignment; the gaps hold zeros in both buffers and stay zero under every update.

    x: Parameter.data   (any shape)       Parameter.grad: same shape, dtype, device
"""
from __future__ import annotations

import numpy as np

from .backend import Device, device_of, get_array_module, to_device

__all__ = ["Parameter", "FlatBuffer", "pack_parameters", "buffers_of", "ALIGN_BYTES"]

ALIGN_BYTES = 64


class Parameter:
    """One learnable array and its gradient (same shape, dtype and device).

    ``name`` is the key in the owning layer's ``params`` ("W", "b", "gamma", ...); ``flat`` is
    the :class:`FlatBuffer` the arrays are views of, or None while the parameter stands alone.
    """

    __slots__ = ("name", "data", "grad", "flat", "_layer")

    def __init__(self, data, name: str = "", layer=None, grad=None):
        self.name = name
        self.data = data
        self.grad = get_array_module(data).zeros_like(data) if grad is None else grad
        self.flat = None
        self._layer = layer

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self) -> int:
        return int(self.data.size)

    @property
    def device(self) -> Device:
        return device_of(self.data)

    def bind(self, data, grad) -> None:
        """Point this parameter (and its layer's ``params``/``grads`` entries) at new arrays."""
        self.data, self.grad = data, grad
        if self._layer is not None:
            dict.__setitem__(self._layer.params, self.name, data)
            dict.__setitem__(self._layer.grads, self.name, grad)

    def __repr__(self):
        where = "flat" if self.flat is not None else "alone"
        return (f"Parameter({self.name!r}, shape={tuple(self.shape)}, dtype={self.dtype}, "
                f"device={self.device}, {where})")


def _aligned(offset: int, itemsize: int) -> int:
    step = max(1, ALIGN_BYTES // itemsize)
    return -(-offset // step) * step


def _zeros(n: int, dtype, device: Device):
    """n zeros starting at a 64-byte boundary (CuPy's allocator already aligns to 256)."""
    if not device.is_cuda:
        dtype = np.dtype(dtype)
        pad = ALIGN_BYTES // dtype.itemsize
        raw = np.zeros(n + pad, dtype=dtype)
        start = (-raw.ctypes.data % ALIGN_BYTES) // dtype.itemsize
        return raw[start:start + n]
    import cupy
    with cupy.cuda.Device(device.index):
        return cupy.zeros(n, dtype=dtype)


class FlatBuffer:
    """Parameters of one (device, dtype) packed into ``values`` and ``grads`` (1-d, contiguous).

    ``params`` keeps the packing order; ``offsets[i]`` is where ``params[i]`` starts.
    """

    def __init__(self, params: list):
        first = params[0]
        self.dtype = np.dtype(first.dtype)
        device = first.device
        self.params = list(params)
        self._layout()
        self.values = _zeros(self.total, self.dtype, device)
        self.grads = _zeros(self.total, self.dtype, device)
        for p, off in zip(self.params, self.offsets):
            self.values[off:off + p.size] = p.data.reshape(-1)
            self.grads[off:off + p.size] = p.grad.reshape(-1)
        self._bind_views()
        for p in self.params:
            p.flat = self

    def _layout(self) -> None:
        self.offsets, end = [], 0
        for p in self.params:
            start = _aligned(end, self.dtype.itemsize)
            self.offsets.append(start)
            end = start + p.size
        self.total = end

    @property
    def size(self) -> int:
        return int(self.values.size)

    @property
    def device(self) -> Device:
        return device_of(self.values)

    def slice_of(self, i: int) -> slice:
        return slice(self.offsets[i], self.offsets[i] + self.params[i].size)

    def _bind_views(self) -> None:
        for i, p in enumerate(self.params):
            s = self.slice_of(i)
            p.bind(self.values[s].reshape(p.shape), self.grads[s].reshape(p.shape))

    def to(self, device=None, *, dtype=None) -> "FlatBuffer":
        """Move both buffers to ``device`` (one copy each) and/or convert them to ``dtype``;
        every view is re-pointed, so holders of the Parameters or of this buffer follow."""
        values, grads = self.values, self.grads
        if device is not None:
            values, grads = to_device(values, device), to_device(grads, device)
        if dtype is not None and np.dtype(dtype) != self.dtype:
            # the element layout stays: every offset is still a multiple of 64 bytes for a
            # wider dtype, and the optimizer's state keeps matching it element for element
            self.dtype = np.dtype(dtype)
            values, grads = values.astype(self.dtype), grads.astype(self.dtype)
        if values is not self.values:
            self.values, self.grads = values, grads
            self._bind_views()
        return self

    def __repr__(self):
        return (f"FlatBuffer({len(self.params)} params, {self.size} elements, {self.dtype}, "
                f"{self.device})")


def pack_parameters(params: list) -> list:
    """Pack parameters that stand alone into one :class:`FlatBuffer` per (device, dtype), in
    order; returns the buffers. Parameters already in a buffer are left where they are (an
    optimizer may hold that buffer), so a list mixing both packs only the loose ones."""
    loose = [p for p in params if p.flat is None]
    groups: dict = {}
    for p in loose:
        groups.setdefault((p.device, np.dtype(p.dtype)), []).append(p)
    return [FlatBuffer(ps) for ps in groups.values()]


def buffers_of(params: list):
    """The FlatBuffers that ``params`` fill exactly, in order, or None when they do not (some
    stand alone, a buffer is only partly covered, or the order differs)."""
    out, i = [], 0
    while i < len(params):
        flat = params[i].flat
        if flat is None or params[i:i + len(flat.params)] != flat.params:
            return None
        out.append(flat)
        i += len(flat.params)
    return out
