"""PyTorch interop: the ``torch.nn.Sequential`` that computes what a gpunn model computes, and
its state dict in both directions.

    tm = gpunn.interop.to_torch(model)                  # weights copied, same mode
    sd = gpunn.interop.to_torch_state_dict(model)       # {"0.weight": tensor, ...}
    gpunn.interop.from_torch_state_dict(model, tm.state_dict())

Each top-level gpunn layer becomes the torch module at the same index, so ``"3.W"`` maps to
``"3.weight"``. Where the two differ:

- Linear: gpunn keeps W as (in, out) (y = x @ W + b); torch as (out, in): transposed both ways.
- Conv2d: both (out, in, kh, kw), cross-correlation. padding="same" is TensorFlow's (the odd
  pad at the bottom / right): ``nn.Conv2d(padding="same")`` pads that way for stride 1; for
  larger strides :class:`Conv2dSame` pads with ``F.pad`` from the input size, as gpunn does.
- MaxPool2d / AvgPool2d: ``nn.MaxPool2d`` / ``nn.AvgPool2d`` (count_include_pad as the layer
  has it) for symmetric padding; "same" becomes ``MaxPool2dSame`` / ``AvgPool2dSame``.
- BatchNorm: gamma -> weight, beta -> bias, running_mean / running_var as they are; the same
  momentum convention (running = (1 - m) running + m batch, unbiased variance) and eps.
  torch's ``num_batches_tracked`` is written as 0 and ignored on the way back (with a
  momentum it changes nothing).
- GlobalAvgPool2d: ``nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())``.
- Residual: :class:`Residual` with ``block`` (nn.Sequential) and ``shortcut`` (nn.Sequential,
  or nn.Identity), output shortcut(x) + block(x).
- GELU: ``nn.GELU(approximate="tanh")``; Softmax: ``nn.Softmax(dim=1)``; Dropout: ``nn.Dropout``
  (torch draws its own masks: training runs agree only without dropout).

torch is imported only here and only when called (``pip install torch``).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .errors import StateDictError
from .extras import require

__all__ = ["to_torch", "to_torch_state_dict", "from_torch_state_dict", "torch_names"]


def _torch():
    return require("torch", None, "gpunn.interop",
                   install="pip install torch (the CPU build is enough)")


def _seq(model):
    from .model import Sequential
    return model if isinstance(model, Sequential) else Sequential(model)


# -- names and layouts (no torch needed) --------------------------------------------------------
def torch_names(model) -> list:
    """``[(gpunn key, torch key, transpose), ...]`` for every parameter and buffer of
    ``model`` (a Sequential or one layer), in the gpunn state dict's order."""
    out = []
    _names(_seq(model), "", "", out)
    return out


def _names(layer, g, t, out):
    from . import layers as L
    from .model import Sequential

    if isinstance(layer, Sequential):
        for i, child in enumerate(layer.layers):
            _names(child, f"{g}{i}.", f"{t}{i}.", out)
    elif isinstance(layer, L.Residual):
        for i, child in enumerate(layer.block):
            _names(child, f"{g}{i}.", f"{t}block.{i}.", out)
        for j, child in enumerate(layer.shortcut):
            _names(child, f"{g}{len(layer.block) + j}.", f"{t}shortcut.{j}.", out)
    elif isinstance(layer, (L.Linear, L.Conv2d)):
        out.append((g + "W", t + "weight", isinstance(layer, L.Linear)))
        if "b" in layer.params:
            out.append((g + "b", t + "bias", False))
    elif isinstance(layer, L.norm._BatchNorm):
        out += [(g + "gamma", t + "weight", False), (g + "beta", t + "bias", False),
                (g + "running_mean", t + "running_mean", False),
                (g + "running_var", t + "running_var", False)]
    elif layer.params or layer.buffers:
        raise NotImplementedError(f"gpunn.interop: no torch equivalent for {layer!r}")


# -- the torch modules --------------------------------------------------------------------------
_CLASSES = {}


def _classes():
    """The few torch modules torch lacks, defined once torch is imported."""
    if _CLASSES:
        return _CLASSES
    torch = _torch()
    nn, F = torch.nn, torch.nn.functional
    from .ops.geometry import same_padding

    def same_pads(x, k, s):
        pt, pb = same_padding(x.shape[-2], k[0], s[0])
        pl, pr = same_padding(x.shape[-1], k[1], s[1])
        return (pl, pr, pt, pb)                     # F.pad order: last axis first

    class Conv2dSame(nn.Conv2d):
        """nn.Conv2d with TensorFlow's "same" padding for any stride (extra pad after)."""

        def forward(self, x):
            x = F.pad(x, same_pads(x, self.kernel_size, self.stride))
            return F.conv2d(x, self.weight, self.bias, self.stride)

    class MaxPool2dSame(nn.MaxPool2d):
        """Max pooling with TensorFlow's "same" padding (padding never wins: -inf)."""

        def forward(self, x):
            k, s = _pair(self.kernel_size), _pair(self.stride)
            x = F.pad(x, same_pads(x, k, s), value=float("-inf"))
            return F.max_pool2d(x, k, s)

    class AvgPool2dSame(nn.AvgPool2d):
        """Average pooling with TensorFlow's "same" padding; with count_include_pad=False the
        mean is over the in-bounds pixels of each window."""

        def forward(self, x):
            k, s = _pair(self.kernel_size), _pair(self.stride)
            pads = same_pads(x, k, s)
            total = F.avg_pool2d(F.pad(x, pads), k, s, divisor_override=1)      # window sums
            if self.count_include_pad:
                return total / (k[0] * k[1])
            ones = torch.ones((1, 1, *x.shape[-2:]), dtype=x.dtype, device=x.device)
            return total / F.avg_pool2d(F.pad(ones, pads), k, s, divisor_override=1)

    class Residual(nn.Module):
        """shortcut(x) + block(x) (gpunn.Residual)."""

        def __init__(self, block, shortcut=None):
            super().__init__()
            self.block = block
            self.shortcut = shortcut if shortcut is not None else nn.Identity()

        def forward(self, x):
            return self.shortcut(x) + self.block(x)

    class BatchNorm(nn.modules.batchnorm._BatchNorm):
        """Batch norm over (N, F) or (N, C, H, W) (gpunn.SyncBatchNorm in one process)."""

        def _check_input_dim(self, x):
            if x.dim() not in (2, 4):
                raise ValueError(f"expected 2-d or 4-d input, got {x.dim()}-d")

    _CLASSES.update(Conv2dSame=Conv2dSame, MaxPool2dSame=MaxPool2dSame,
                    AvgPool2dSame=AvgPool2dSame, Residual=Residual, BatchNorm=BatchNorm)
    return _CLASSES


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _module(layer):
    from . import layers as L
    from .model import Sequential

    nn = _torch().nn
    C = _classes()
    same = isinstance(getattr(layer, "padding", None), str)
    if isinstance(layer, Sequential):
        return nn.Sequential(*[_module(child) for child in layer.layers])
    if isinstance(layer, L.Residual):
        block = nn.Sequential(*[_module(c) for c in layer.block])
        short = nn.Sequential(*[_module(c) for c in layer.shortcut]) if layer.shortcut else None
        return C["Residual"](block, short)
    if isinstance(layer, L.Linear):
        return nn.Linear(layer.in_features, layer.out_features, bias="b" in layer.params)
    if isinstance(layer, L.Conv2d):
        args = (layer.in_channels, layer.out_channels, layer.kernel_size)
        bias = "b" in layer.params
        if same and layer.stride != (1, 1):
            return C["Conv2dSame"](*args, stride=layer.stride, bias=bias)
        return nn.Conv2d(*args, stride=layer.stride, bias=bias,
                         padding="same" if same else _pair(layer.padding))
    if isinstance(layer, L.MaxPool2d):
        if same:
            return C["MaxPool2dSame"](layer.kernel_size, layer.stride)
        return nn.MaxPool2d(layer.kernel_size, layer.stride, _pair(layer.padding))
    if isinstance(layer, L.AvgPool2d):
        if same:
            return C["AvgPool2dSame"](layer.kernel_size, layer.stride,
                                      count_include_pad=layer.count_include_pad)
        return nn.AvgPool2d(layer.kernel_size, layer.stride, _pair(layer.padding),
                            count_include_pad=layer.count_include_pad)
    if isinstance(layer, L.GlobalAvgPool2d):
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    if isinstance(layer, L.norm._BatchNorm):
        cls = {2: nn.BatchNorm1d, 4: nn.BatchNorm2d}.get(layer._ndim, C["BatchNorm"])
        return cls(layer.num_features, eps=layer.eps, momentum=layer.momentum)
    simple = {L.ReLU: lambda: nn.ReLU(), L.Sigmoid: lambda: nn.Sigmoid(),
              L.Tanh: lambda: nn.Tanh(), L.Flatten: lambda: nn.Flatten(),
              L.Softmax: lambda: nn.Softmax(dim=1),
              L.GELU: lambda: nn.GELU(approximate="tanh"),
              L.LeakyReLU: lambda: nn.LeakyReLU(layer.slope),
              L.Dropout: lambda: nn.Dropout(layer.p)}
    for cls, make in simple.items():
        if type(layer) is cls:
            return make()
    raise NotImplementedError(f"gpunn.interop: no torch equivalent for {layer!r}")


# -- the public functions -----------------------------------------------------------------------
def to_torch_state_dict(model) -> OrderedDict:
    """``model``'s weights and statistics as the state dict of :func:`to_torch`'s module:
    torch tensors on the CPU, in the model's dtype, Linear weights transposed to (out, in)."""
    torch = _torch()
    seq = _seq(model)
    sd = seq.state_dict()
    out = OrderedDict()
    for g, t, transpose in torch_names(seq):
        a = sd[g].T if transpose else sd[g]
        out[t] = torch.from_numpy(np.ascontiguousarray(a))
        if t.endswith("running_var"):
            out[t[:-len("running_var")] + "num_batches_tracked"] = torch.tensor(0)
    return out


def from_torch_state_dict(model, state_dict, strict: bool = True):
    """Load a torch state dict (of :func:`to_torch`'s module, or any module with those names
    and shapes) into ``model`` in place; returns the model. Tensors or arrays, any device.

    Every key is checked first (missing, unexpected with ``strict``, shapes) and reported in
    one StateDictError; the model is unchanged on error. Dropout seeds and steps (gpunn's own
    state) stay as the model has them.
    """
    seq = _seq(model)
    names = torch_names(seq)
    given = {k: _array(v) for k, v in state_dict.items()}
    wanted = {t for _, t, _ in names}
    missing = [t for t in sorted(wanted) if t not in given]
    unexpected = [k for k in given if k not in wanted and not k.endswith("num_batches_tracked")]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected and strict:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if problems:
        raise StateDictError("from_torch_state_dict: " + " | ".join(problems) +
                             " (the model was not changed)")
    sd = seq.state_dict()
    for g, t, transpose in names:
        sd[g] = given[t].T if transpose and given[t].ndim == 2 else given[t]
    seq.load_state_dict(sd)              # checks shapes (names in gpunn's terms), all or nothing
    return model


def to_torch(model):
    """The ``torch.nn.Sequential`` equivalent to ``model`` with its weights, dtype and mode
    (train / eval); on the CPU."""
    torch = _torch()
    seq = _seq(model)
    module = _module(seq)
    params = seq.parameters()
    dtype = params[0].dtype if params else np.float32
    module = module.to({np.dtype(np.float32): torch.float32,
                        np.dtype(np.float64): torch.float64}[np.dtype(dtype)])
    module.load_state_dict(to_torch_state_dict(seq))
    return module.train(seq.training)


def _array(v):
    if hasattr(v, "detach"):                       # a torch tensor, on any device
        return v.detach().cpu().numpy()
    return np.asarray(v)
