"""Optional dependencies ("extras"): imported only by the feature that needs them, with an error
that says what to install when they are missing.

    tensorboard   tensorboardX            gpunn train --tensorboard
    onnx          onnx, onnxruntime       gpunn export --onnx (onnxruntime: the check after it)
"""
from __future__ import annotations

import importlib

__all__ = ["MissingExtra", "require"]


class MissingExtra(ImportError):
    """A feature needs a package that is not installed; the message names the pip command."""


def require(module: str, extra: str, what: str):
    """Import ``module`` for ``what``, or raise :class:`MissingExtra` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        package = module.split(".")[0]
        raise MissingExtra(f"{what} needs the {package!r} package, which is not installed "
                           f"({e}): pip install 'gpunn[{extra}]' (or pip install {package})"
                           ) from None
