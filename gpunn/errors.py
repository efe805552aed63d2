"""Exceptions gpunn raises for bad input. Each message names the layer, file or key at fault."""
from .backend import DeviceError


class ShapeError(ValueError):
    """An array has the wrong shape (message: which layer, expected vs actual)."""


class DTypeError(TypeError):
    """An array has the wrong dtype (message: which layer, expected vs actual)."""


class StateDictError(KeyError):
    """A state dict does not fit the model (missing / unexpected / mis-shaped keys)."""

    def __str__(self):  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


__all__ = ["ShapeError", "DTypeError", "DeviceError", "StateDictError"]
