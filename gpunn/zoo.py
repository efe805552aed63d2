"""Named models from the coursework, each adapting to the data set's input shape and classes.

``build_model(name, input_shape=(C, H, W), num_classes=K)`` returns a :class:`Sequential` of
logits (the softmax lives in ``losses.SoftmaxCrossEntropy``). Weights are Xavier/Glorot
uniform, biases zero, drawn from ``seed`` so a name + seed gives the same network anywhere.
"""
from __future__ import annotations

import numpy as np

from .errors import ShapeError
from .init import make_rng
from .layers import (BatchNorm2d, Conv2d, Dropout, Flatten, GlobalAvgPool2d, Linear, MaxPool2d,
                     ReLU, Residual)
from .model import Sequential

__all__ = ["MODELS", "build_model"]


def _flat(shape):
    return int(np.prod(shape))


def model1(input_shape, num_classes, *, rng, dtype, dropout=None):
    """Multinomial logistic regression: input -> linear -> softmax."""
    return [Flatten(), Linear(_flat(input_shape), num_classes, rng=rng, dtype=dtype)]


def model2(input_shape, num_classes, *, rng, dtype, dropout=None):
    """One hidden layer of 32 ReLU units: input -> 32 -> ReLU -> K."""
    return [Flatten(), Linear(_flat(input_shape), 32, rng=rng, dtype=dtype), ReLU(),
            *_maybe_dropout(dropout, rng),
            Linear(32, num_classes, rng=rng, dtype=dtype)]


def model3(input_shape, num_classes, *, rng, dtype, dropout=None):
    """Two hidden layers of 32 ReLU units: input -> 32 -> ReLU -> 32 -> ReLU -> K."""
    return [Flatten(), Linear(_flat(input_shape), 32, rng=rng, dtype=dtype), ReLU(),
            Linear(32, 32, rng=rng, dtype=dtype), ReLU(), *_maybe_dropout(dropout, rng),
            Linear(32, num_classes, rng=rng, dtype=dtype)]


def model4(input_shape, num_classes, *, rng, dtype, dropout=None):
    """Small CNN: conv 3x3x8 (same) + ReLU + max-pool 2x2 -> conv 3x3x8 (same) + ReLU +
    max-pool 2x2 -> flatten -> 32 ReLU -> K."""
    c, h, w = input_shape
    return [Conv2d(c, 8, 3, padding="same", rng=rng, dtype=dtype), ReLU(), MaxPool2d(2),
            Conv2d(8, 8, 3, padding="same", rng=rng, dtype=dtype), ReLU(), MaxPool2d(2),
            Flatten(), Linear(8 * (h // 4) * (w // 4), 32, rng=rng, dtype=dtype), ReLU(),
            *_maybe_dropout(dropout, rng),
            Linear(32, num_classes, rng=rng, dtype=dtype)]


def mlp1000(input_shape, num_classes, *, rng, dtype, dropout=None):
    """Wide MLP: input -> 1000 ReLU -> K."""
    return [Flatten(), Linear(_flat(input_shape), 1000, rng=rng, dtype=dtype), ReLU(),
            *_maybe_dropout(dropout, rng),
            Linear(1000, num_classes, rng=rng, dtype=dtype)]


def cnn_bn(input_shape, num_classes, *, rng, dtype, dropout=0.5):
    """conv 3x3x32 (same) + ReLU + batch-norm + max-pool 2x2 -> linear 784 + dropout + ReLU
    -> linear K."""
    c, h, w = input_shape
    return [Conv2d(c, 32, 3, padding="same", rng=rng, dtype=dtype), ReLU(),
            BatchNorm2d(32, dtype=dtype), MaxPool2d(2), Flatten(),
            Linear(32 * (h // 2) * (w // 2), 784, rng=rng, dtype=dtype),
            *_maybe_dropout(0.5 if dropout is None else dropout, rng), ReLU(),
            Linear(784, num_classes, rng=rng, dtype=dtype)]


def lenet5x5(input_shape, num_classes, *, rng, dtype, dropout=None):
    """LeNet-style: conv 5x5x16 + ReLU + max-pool 2x2 -> conv 5x5x16 + ReLU + max-pool 2x2
    -> linear K (valid convolutions: 28x28 -> 4x4x16, 32x32 -> 5x5x16)."""
    c, h, w = input_shape
    oh, ow = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
    return [Conv2d(c, 16, 5, rng=rng, dtype=dtype), ReLU(), MaxPool2d(2),
            Conv2d(16, 16, 5, rng=rng, dtype=dtype), ReLU(), MaxPool2d(2),
            Flatten(), *_maybe_dropout(dropout, rng),
            Linear(16 * max(oh, 1) * max(ow, 1), num_classes, rng=rng, dtype=dtype)]


def resnet_small(input_shape, num_classes, *, rng, dtype, dropout=None):
    """A small ResNet (He et al., 2016): conv 3x3x16 + BN + ReLU, then two stages of one
    residual block [conv 3x3 + BN + ReLU + conv 3x3 + BN] + ReLU + max-pool 2x2, then
    linear K."""
    c, h, w = input_shape

    def block():
        return Residual(Conv2d(16, 16, 3, padding="same", bias=False, rng=rng, dtype=dtype),
                        BatchNorm2d(16, dtype=dtype), ReLU(),
                        Conv2d(16, 16, 3, padding="same", bias=False, rng=rng, dtype=dtype),
                        BatchNorm2d(16, dtype=dtype))
    return [Conv2d(c, 16, 3, padding="same", bias=False, rng=rng, dtype=dtype),
            BatchNorm2d(16, dtype=dtype), ReLU(),
            block(), ReLU(), MaxPool2d(2),
            block(), ReLU(), MaxPool2d(2),
            Flatten(), *_maybe_dropout(dropout, rng),
            Linear(16 * (h // 4) * (w // 4), num_classes, rng=rng, dtype=dtype)]


def vgg_cifar(input_shape, num_classes, *, rng, dtype, dropout=None):
    """VGG-style CIFAR network: [conv 3x3 + BN + ReLU] x2 at 64, 128 and 256 channels, each pair
    followed by max-pool 2x2 -> flatten -> linear 512 + ReLU -> linear K (32x32 -> 4x4x256).
    The convs have no bias: the batch-norm after each one would cancel it."""
    c, h, w = input_shape
    layers, cin = [], c
    for cout in (64, 128, 256):
        for _ in range(2):
            layers += [Conv2d(cin, cout, 3, padding=1, bias=False, rng=rng, dtype=dtype),
                       BatchNorm2d(cout, dtype=dtype), ReLU()]
            cin = cout
        layers.append(MaxPool2d(2))
    return [*layers, Flatten(),
            Linear(256 * (h // 8) * (w // 8), 512, rng=rng, dtype=dtype), ReLU(),
            *_maybe_dropout(dropout, rng),
            Linear(512, num_classes, rng=rng, dtype=dtype)]


def resnet20(input_shape, num_classes, *, rng, dtype, dropout=None):
    """ResNet-20 for CIFAR (He et al., 2016, section 4.2): conv 3x3x16 + BN + ReLU, three
    stages of three basic blocks [conv 3x3 + BN + ReLU + conv 3x3 + BN] + ReLU at 16, 32 and 64
    channels, global average pool, linear K. The first block of stages 2 and 3 has stride 2 and
    a projection shortcut (conv 1x1 stride 2 + BN; the paper's option B); the others add x.
    32x32 -> 32x32x16 -> 16x16x32 -> 8x8x64 -> 64."""
    c = input_shape[0]

    def conv(cin, cout, k, stride):
        return Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False, rng=rng,
                      dtype=dtype)

    def block(cin, cout, stride):
        body = [conv(cin, cout, 3, stride), BatchNorm2d(cout, dtype=dtype), ReLU(),
                conv(cout, cout, 3, 1), BatchNorm2d(cout, dtype=dtype)]
        shortcut = None
        if stride != 1 or cin != cout:
            shortcut = [conv(cin, cout, 1, stride), BatchNorm2d(cout, dtype=dtype)]
        return [Residual(*body, shortcut=shortcut), ReLU()]

    layers, cin = [conv(c, 16, 3, 1), BatchNorm2d(16, dtype=dtype), ReLU()], 16
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(3):
            layers += block(cin, cout, stride if i == 0 else 1)
            cin = cout
    return [*layers, GlobalAvgPool2d(), *_maybe_dropout(dropout, rng),
            Linear(64, num_classes, rng=rng, dtype=dtype)]


def _maybe_dropout(p, rng):
    return [Dropout(p, rng=rng)] if p else []


MODELS = {
    "model1": model1, "model2": model2, "model3": model3, "model4": model4,
    "mlp1000": mlp1000, "cnn-bn": cnn_bn, "lenet5x5": lenet5x5, "resnet-small": resnet_small,
    "vgg-cifar": vgg_cifar, "resnet20": resnet20,
}


# The input a model is meant for where it is not Fashion-MNIST's (1, 28, 28) (every model adapts
# to the data it is trained on); ``gpunn models`` shows it and counts the parameters there.
INPUT_SHAPES = {"vgg-cifar": (3, 32, 32), "resnet20": (3, 32, 32)}


def build_model(name: str, input_shape=(1, 28, 28), num_classes: int = 10, *, seed: int = 0,
                dtype=np.float32, dropout: float | None = None) -> Sequential:
    """Build a zoo model and check it fits ``input_shape`` before any training.

    Raises ValueError listing the valid names for an unknown ``name``, and ShapeError naming
    the layer when the architecture cannot take the input (e.g. too many pools for the size).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 3:
        raise ShapeError(f"build_model({name!r}): input_shape must be (C, H, W), got {input_shape}")
    if int(num_classes) < 2:
        raise ValueError(f"build_model({name!r}): num_classes must be >= 2, got {num_classes}")
    rng = make_rng(seed)
    kwargs = {} if dropout is None else {"dropout": dropout}
    layers = MODELS[name](input_shape, int(num_classes), rng=rng, dtype=dtype, **kwargs)
    model = Sequential(*layers)
    try:
        out = model.output_shape(input_shape)
    except ShapeError as e:
        raise ShapeError(f"model {name!r} cannot take input {input_shape}: {e}") from None
    if out != (int(num_classes),):
        raise ShapeError(f"model {name!r} maps input {input_shape} to {out}, "
                         f"expected ({num_classes},)")
    model.name = name
    return model
