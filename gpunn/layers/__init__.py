"""gpunn layers: each has forward(x, *, train) and backward(dout) side by side.

Every family file lists its public layers in ``__all__``; they are all exported here and at
the top of the package (``gpunn.ReLU``), and checked by tests/test_layer_coverage.py (each
needs a case in gpunn.parity.layer_cases()).
"""
from . import activation, conv, dropout, linear, norm, pool, reshape, residual
from .activation import *  # noqa: F401,F403
from .base import Layer
from .conv import *  # noqa: F401,F403
from .dropout import *  # noqa: F401,F403
from .linear import *  # noqa: F401,F403
from .norm import *  # noqa: F401,F403
from .pool import *  # noqa: F401,F403
from .reshape import *  # noqa: F401,F403
from .residual import *  # noqa: F401,F403

__all__ = ["Layer", *linear.__all__, *conv.__all__, *pool.__all__, *activation.__all__,
           *dropout.__all__, *norm.__all__, *reshape.__all__, *residual.__all__]
