"""Fusion of neighbouring layers on the hot path: ``fuse(model)``.

A layer only knows itself, and a fused kernel needs two neighbours, so fusion is a pass over
the model rather than a property of a layer: :func:`fuse` walks every :class:`Sequential`
and every :class:`~gpunn.layers.Residual` block and gives it a *plan* in which these pairs
run as one step each:

    Conv2d, ReLU        -> the convolution's output pass adds the bias, applies the ReLU and
                           changes the layout in one kernel (kernels/conv_epilogue.cu); backward
                           masks by the output in the same pass that changes the layout back
    Linear, ReLU        -> the bias pass applies the ReLU (kernels/elementwise.cu,
                           bias_relu_forward; in place on the CPU); backward masks dout by the
                           output first, as the ReLU would
    Residual, ReLU      -> (unless a MaxPool2d follows) the pass adding the block's two
                           branches applies the ReLU (kernels/elementwise.cu, add_relu_forward);
                           backward masks dout by the output first
    ReLU, MaxPool2d     -> one pooling kernel reads relu(x) (kernels/pool.cu, relu_maxpool2d_*);
                           backward multiplies the gathered gradient by x > 0 in that pass
    BatchNorm1d/2d, ReLU -> (a ReLU not followed by a MaxPool2d, which pairs with that
                           instead) on the CPU the ReLU runs on each chunk of the
                           normalisation while it is in cache, and backward masks each chunk
                           of the gradient there; on a GPU the normalising kernel applies the
                           ReLU and backward's two passes mask by the output
                           (kernels/batchnorm.cu)

Only layers of exactly these types pair (a subclass may do something else in forward), and a
Conv2d pairs with the ReLU first, so ``Conv2d, ReLU, MaxPool2d`` becomes (Conv2d+ReLU),
MaxPool2d. The layers themselves, their parameters, names, ``state_dict`` and every
optimizer stay as they were: the plan only changes which calls ``forward`` / ``backward``
make, and a Sequential whose layer list changes after fusing runs its layers unfused until
:func:`fuse` is called again. Results are those of the unfused model bit for bit on the CPU
(the NumPy bodies of the fused ops are the two ops in a row) and under the emulated CUDA
(tests/test_fuse.py); on a GPU each pair saves one pass over its activation and one kernel
launch each way.
"""
from __future__ import annotations

from .layers import BatchNorm1d, BatchNorm2d, Conv2d, Linear, MaxPool2d, ReLU
from .layers.residual import Residual
from .ops.pool import relu_maxpool2d_backward, relu_maxpool2d_forward

__all__ = ["fuse", "unfuse", "fused_pairs", "FusedConvReLU", "FusedLinearReLU",
           "FusedReLUMaxPool2d", "FusedBatchNormReLU", "FusedResidualReLU"]


class _FusedWithReLU:
    """One step for a layer and the ReLU after it (both layers kept, unchanged): the layer's
    ``_forward(x, train, relu=True)`` applies the ReLU to its output, and its
    ``_backward(dout, y)`` masks dout by that output first."""

    def __init__(self, layer, relu: ReLU):
        self.layer, self.relu = layer, relu
        self._y = None

    def forward(self, x, *, train=None):
        self._y = self.layer._forward(x, train, relu=True)
        return self._y

    def backward(self, dout):
        if self._y is None:
            raise RuntimeError(f"{self!r}: backward() called before forward(train=True), "
                               "or again after the model's backward freed what it saved")
        return self.layer._backward(dout, self._y)

    def release_caches(self) -> None:
        self._y = None
        self.layer.release_caches()
        self.relu.release_caches()

    def __repr__(self):
        return f"Fused({self.layer!r}, {self.relu!r})"


class FusedConvReLU(_FusedWithReLU):
    """A Conv2d and the ReLU after it."""


class FusedLinearReLU(_FusedWithReLU):
    """A Linear and the ReLU after it."""


class FusedReLUMaxPool2d:
    """One step for a ReLU and the MaxPool2d after it."""

    def __init__(self, relu: ReLU, pool: MaxPool2d):
        self.relu, self.pool = relu, pool
        self._cache = None

    def forward(self, x, *, train=None):
        pool = self.pool
        self.relu.check_input(x)
        pool.check_input(x, 4)
        pad, oh, ow = pool._geometry(*x.shape[2:])
        kh, kw = pool.kernel_size
        train = pool._mode(train)
        y, argmax = relu_maxpool2d_forward(x, kh, kw, pool.stride, pad, with_argmax=train)
        self._cache = (x, argmax, pad, oh, ow) if train else None
        return y

    def release_caches(self) -> None:
        self._cache = None
        self.relu.release_caches()
        self.pool.release_caches()

    def backward(self, dout):
        if self._cache is None:
            raise RuntimeError(f"{self!r}: backward() called before forward(train=True), "
                               "or again after the model's backward freed what it saved")
        x, argmax, pad, oh, ow = self._cache
        self.pool._check_dout(dout, x.shape, oh, ow)
        kh, kw = self.pool.kernel_size
        return relu_maxpool2d_backward(dout, argmax, x, kh, kw, self.pool.stride, pad)

    def __repr__(self):
        return f"Fused({self.relu!r}, {self.pool!r})"


class FusedBatchNormReLU(_FusedWithReLU):
    """A BatchNorm1d / BatchNorm2d and the ReLU after it."""


class FusedResidualReLU(_FusedWithReLU):
    """A Residual block and the ReLU after it."""


_FUSED = (FusedConvReLU, FusedLinearReLU, FusedReLUMaxPool2d, FusedBatchNormReLU,
          FusedResidualReLU)


def _plan(layers: list) -> list:
    steps, i = [], 0
    while i < len(layers):
        a = layers[i]
        b = layers[i + 1] if i + 1 < len(layers) else None
        after = layers[i + 2] if i + 2 < len(layers) else None
        if type(a) is Conv2d and type(b) is ReLU:
            steps.append(FusedConvReLU(a, b))
            i += 2
        elif type(a) is Linear and type(b) is ReLU:
            steps.append(FusedLinearReLU(a, b))
            i += 2
        elif type(a) in (BatchNorm1d, BatchNorm2d) and type(b) is ReLU \
                and type(after) is not MaxPool2d:
            steps.append(FusedBatchNormReLU(a, b))
            i += 2
        elif type(a) is Residual and type(b) is ReLU and type(after) is not MaxPool2d:
            steps.append(FusedResidualReLU(a, b))
            i += 2
        elif type(a) is ReLU and type(b) is MaxPool2d:
            steps.append(FusedReLUMaxPool2d(a, b))
            i += 2
        else:
            steps.append(a)
            i += 1
    return steps


def _layer_lists(model):
    """(holder, its layer list, its steps) for every Sequential and every Residual block in
    ``model``: the lists a plan may replace."""
    from .model import Sequential
    for layer in model.walk():
        if isinstance(layer, Sequential):
            yield layer, layer.layers, layer._steps
        elif isinstance(layer, Residual):
            yield layer, layer.block, layer._block_steps


def fuse(model):
    """Give every Sequential and Residual block in ``model`` (nested ones too) its fused plan;
    returns ``model``. Calling it again rebuilds the plans (after the layer lists changed)."""
    for holder, layers, _ in list(_layer_lists(model)):
        steps = _plan(layers)
        holder._fused = (tuple(map(id, layers)), steps) if len(steps) < len(layers) else None
    return model


def unfuse(model):
    """Drop every plan :func:`fuse` made; returns ``model``."""
    for holder, _, _ in list(_layer_lists(model)):
        holder._fused = None
    return model


def fused_pairs(model) -> list:
    """The fused steps in force, as ``repr`` strings, in model order (a Sequential whose layers
    changed since :func:`fuse` has none)."""
    out = []
    for _, _, steps in _layer_lists(model):
        out += [repr(s) for s in steps() if isinstance(s, _FUSED)]
    return out
