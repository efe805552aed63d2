"""Optional dependencies ("extras"): imported only by the feature that needs them, with an error
that says what to install when they are missing.

    tensorboard   tensorboardX            gpunn train --tensorboard
    onnx          onnx, onnxruntime       gpunn export --onnx (onnxruntime: the check after it)
    (no extra)    torch                   gpunn.interop, gpunn export --torch
"""
from __future__ import annotations

import importlib

__all__ = ["MissingExtra", "require"]


class MissingExtra(ImportError):
    """A feature needs a package that is not installed; the message names the pip command."""


def require(module: str, extra: str | None, what: str, install: str | None = None):
    """Import ``module`` for ``what``, or raise :class:`MissingExtra` naming the extra (or the
    ``install`` command, for a package no extra brings, such as torch)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        package = module.split(".")[0]
        how = install or f"pip install 'gpunn[{extra}]' (or pip install {package})"
        raise MissingExtra(f"{what} needs the {package!r} package, which is not installed "
                           f"({e}): {how}") from None
