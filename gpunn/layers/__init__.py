"""gpunn layers: each has forward(x, *, train) and backward(dout) side by side.

Every family file lists its public layers in ``__all__``; they are exported here, at the top
of the package (``gpunn.ReLU``), and checked by tests/test_layer_coverage.py (each needs a case
in gpunn.parity.layer_cases()).
"""
from . import activation, conv, dropout, linear, norm, pool, reshape, residual
from .activation import *  # noqa: F401,F403
from .base import Layer
from .conv import Conv2d
from .dropout import Dropout
from .linear import Linear
from .norm import BatchNorm1d, BatchNorm2d, SyncBatchNorm
from .pool import AvgPool2d, GlobalAvgPool2d, MaxPool2d
from .reshape import Flatten
from .residual import Residual

__all__ = ["Layer", "Linear", "Conv2d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", *activation.__all__,
           "Dropout", "BatchNorm1d", "BatchNorm2d", "SyncBatchNorm", "Flatten", "Residual"]
