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


class RunError(RuntimeError):
    """A training run stopped on a fault: non-finite values, out of memory, a failed write, a
    run directory in use. The message says what happened and what on disk is still good."""


class NonFiniteError(RunError):
    """The loss or a gradient became NaN or infinite (message: step, layer, what to try)."""


class OutOfMemoryError(RunError, MemoryError):
    """An allocation failed during training (message: batch size, bytes asked for and free)."""


class RunWriteError(RunError):
    """Writing a run file failed (message: file, the OS's reason, what is intact).
    ``errno`` and ``filename`` are the OSError's."""

    def __init__(self, message, errno=None, filename=None):
        super().__init__(message)
        self.errno, self.filename = errno, filename


class RunLockedError(RunError):
    """Another live process is writing the run directory (message: its pid and host)."""


__all__ = ["ShapeError", "DTypeError", "DeviceError", "StateDictError", "RunError",
           "NonFiniteError", "OutOfMemoryError", "RunWriteError", "RunLockedError"]
