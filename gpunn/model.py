"""Sequential models: forward, backward, parameters, devices, saving and a summary."""
from __future__ import annotations

import numpy as np

from .backend import to_device, to_numpy
from .errors import ShapeError, StateDictError
from .layers.base import Layer
from .parameter import pack_parameters
from .serialization import META_KEY, atomic_savez, load_npz

__all__ = ["Sequential"]


class Sequential(Layer):
    """Layers applied in order: ``y = layers[-1](...layers[0](x))``.

    ``forward(x, train=None)`` uses the model's mode (``train()`` / ``eval()``) unless ``train``
    is given. ``backward(dout)`` runs the layers in reverse and returns dL/dx.

    Building a Sequential packs the parameters of its layers into one flat buffer of values
    and one of gradients per (device, dtype) (gpunn/parameter.py); parameters already packed
    (say, a Sequential nested in another) stay in their buffers.
    """

    def __init__(self, *layers):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: argument {i} is {type(layer).__name__}, not a Layer")
        self.layers = list(layers)
        pack_parameters(self.parameters())

    def children(self):
        return self.layers

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    # -- forward / backward ---------------------------------------------------------------
    def forward(self, x, *, train: bool | None = None):
        train = self._mode(train)
        for layer in self._steps():
            x = layer.forward(x, train=train)
        return x

    def backward(self, dout, *, input_grad: bool = True, after_step=None):
        """dL/dx of the model's input; with ``input_grad=False`` (a training step: the data
        needs no gradient) the backward pass stops at the first layer that has parameters,
        which skips its own input gradient (Conv2d and Linear: a GEMM and, for a convolution,
        the scatter back to pixels, as PyTorch skips it), and returns None.

        ``after_step(step, steps)``, if given, is called after each top-level layer's (or
        fused pair's) backward: its parameters' gradients are then final, unless an earlier
        layer shares them (gpunn/distributed/buckets.py starts all-reducing them there)."""
        steps = self._steps()
        first = None if input_grad else _first_with_parameters(steps)
        for i in reversed(range(len(steps))):
            if i == first:
                _without_input_grad(steps[i], dout)
                if after_step is not None:
                    after_step(steps[i], steps)
                for step in steps[:i + 1]:     # and the layers before it, which backward skips
                    step.release_caches()
                return None
            dout = steps[i].backward(dout)
            if after_step is not None:
                after_step(steps[i], steps)
            steps[i].release_caches()          # its saved arrays go back to the pool now
        return dout

    def _steps(self):
        """The layers, or the fused plan gpunn.fuse made for them while they are unchanged."""
        return self._planned(self.layers)

    # -- shapes ---------------------------------------------------------------------------
    def output_shape(self, in_shape):
        """Per-sample output shape; raises ShapeError naming the first layer that cannot fit."""
        shape = tuple(int(s) for s in in_shape)
        for i, layer in enumerate(self.layers):
            try:
                shape = layer.output_shape(shape)
            except ShapeError as e:
                raise ShapeError(f"layer {i} ({layer!r}) cannot take per-sample input "
                                 f"{shape}: {e}") from None
        return shape

    def summary(self, input_shape) -> str:
        """A table of each layer's output shape and parameter count (input_shape without N)."""
        rows = [("", "input", str(tuple(input_shape)), "")]
        shape = tuple(input_shape)
        total = 0
        for prefix, layer in self._prefixed_layers():
            if layer is self:
                continue
            depth = prefix.count(".") - 1
            if len(prefix.rstrip(".").split(".")) == 1:     # top-level layer: shapes chain
                shape = layer.output_shape(shape)
                out = str(shape)
            else:
                out = ""
            n = sum(int(np.prod(p.shape)) for p in layer.params.values())
            total += n
            rows.append((prefix.rstrip("."), "  " * depth + repr(layer), out, f"{n:,}" if n else "-"))
        head = ("#", "layer", "output shape", "params")
        widths = [max(len(r[c]) for r in rows + [head]) for c in range(4)]
        fmt = "  ".join("{:<%d}" % w for w in widths[:3]) + "  {:>%d}" % widths[3]
        lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*r) for r in rows]
        lines.append(f"total parameters: {total:,}")
        return "\n".join(lines)

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Host (NumPy) copies of every parameter, buffer and host-side integer, by name."""
        sd = {}
        for prefix, layer in self._prefixed_layers():
            for k, v in layer.params.items():
                sd[prefix + k] = to_numpy(v).copy()
            for k, v in layer.buffers.items():
                sd[prefix + k] = to_numpy(v).copy()
            for k, v in layer.host_state.items():
                sd[prefix + k] = np.array(v, dtype=np.int64)
        return sd

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy ``state`` into the model's arrays in place (optimizers stay valid).

        Everything is checked first: missing keys, unexpected keys (with ``strict``) and shape
        mismatches are all reported in one StateDictError, and nothing is changed on error.
        """
        targets = {}
        for prefix, layer in self._prefixed_layers():
            for d in (layer.params, layer.buffers):
                for k, v in d.items():
                    targets[prefix + k] = ("array", d, k, v.shape)
            for k in layer.host_state:
                targets[prefix + k] = ("int", layer.host_state, k, ())
        missing = [k for k in targets if k not in state]
        unexpected = [k for k in state if k not in targets and k != META_KEY]
        bad_shape = []
        for k, (_, _, _, shape) in targets.items():
            if k in state and tuple(np.shape(state[k])) != tuple(shape):
                bad_shape.append(f"{k}: expected {tuple(shape)}, got {tuple(np.shape(state[k]))}")
        problems = []
        if missing:
            problems.append(f"missing keys: {', '.join(missing)}")
        if unexpected and strict:
            problems.append(f"unexpected keys: {', '.join(unexpected)}")
        if bad_shape:
            problems.append(f"shape mismatch: {'; '.join(bad_shape)}")
        if problems:
            raise StateDictError("load_state_dict: " + " | ".join(problems) +
                                 " (the model was not changed)")
        for k, (kind, d, key, _) in targets.items():
            if kind == "int":
                d[key] = int(np.asarray(state[k]))
            else:
                dst = d[key]
                dst[...] = to_device(np.asarray(to_numpy(state[k]), dtype=dst.dtype), _device_str(dst))

    def save(self, path) -> None:
        """Write the state dict to ``path`` (.npz) atomically: a crash never leaves half a file."""
        atomic_savez(path, self.state_dict())

    def load(self, path, strict: bool = True) -> "Sequential":
        """Load weights saved by :meth:`save` (checked as in :meth:`load_state_dict`)."""
        self.load_state_dict(load_npz(path), strict=strict)
        return self

    def extra_repr(self):
        return ", ".join(repr(layer) for layer in self.layers)

    def __repr__(self):
        inner = "\n".join(f"  ({i}) {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(\n{inner}\n)"


def _device_str(a):
    from .backend import device_of
    return str(device_of(a))


def _layers_of(step):
    """The layers a step runs: the step itself, or a fused step's layers (gpunn.fuse)."""
    if isinstance(step, Layer):
        return [step]
    return [v for v in vars(step).values() if isinstance(v, Layer)]


def _first_with_parameters(steps):
    for i, step in enumerate(steps):
        if any(layer.parameters() for layer in _layers_of(step)):
            return i
    return None


def _without_input_grad(step, dout):
    """``step.backward(dout)`` with ``input_grad`` off on the layers that honour it; None."""
    layers = [layer for layer in _layers_of(step) if getattr(layer, "input_grad", None) is True]
    for layer in layers:
        layer.input_grad = False
    try:
        step.backward(dout)
    finally:
        for layer in layers:
            layer.input_grad = True
    return None
