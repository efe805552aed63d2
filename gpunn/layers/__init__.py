"""gpunn layers: each has forward(x, *, train) and backward(dout) side by side."""
from .activation import LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from .base import Layer
from .dropout import Dropout
from .linear import Linear
from .norm import BatchNorm1d, BatchNorm2d
from .reshape import Flatten
from .conv import Conv2d
from .pool import AvgPool2d, MaxPool2d
from .residual import Residual

__all__ = ["Layer", "Linear", "Conv2d", "MaxPool2d", "AvgPool2d", "ReLU", "LeakyReLU",
           "Sigmoid", "Tanh", "Softmax", "Dropout", "BatchNorm1d", "BatchNorm2d", "Flatten",
           "Residual"]
