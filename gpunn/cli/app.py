"""The ``gpunn`` click group and what the commands share. Each command lives in its own
``cmd_*.py`` module beside this one; ``gpunn/cli/__init__.py`` imports them all."""
from __future__ import annotations

import contextlib
import sys
from dataclasses import fields

import click

from .. import __version__
from ..runs import DEFAULT_LR, RunConfig

# Run settings and their defaults live in RunConfig; the train options read them from there.
DEFAULTS = {f.name: f.default for f in fields(RunConfig)}
OPTIMIZERS = tuple(DEFAULT_LR)


def echo_err(msg):
    click.echo(msg, err=True)


def debug_option(f):
    return click.option("--debug", is_flag=True, envvar="GPUNN_DEBUG",
                        help="Show the Python traceback of an error (else one line).")(f)


def _usage_errors() -> tuple:
    from ..backend import DeviceError
    from ..errors import DTypeError, StateDictError
    return (ValueError, DTypeError, DeviceError, StateDictError, FileNotFoundError,
            FileExistsError, ImportError)


def describe_error(e: Exception) -> tuple:
    """(exit status, one line) for an error a command ended with: 2 for bad input (settings,
    files, data, devices), 1 for a fault while running (gpunn.errors.RunError: non-finite
    values, out of memory, a failed write, a locked run; an OS error) or a bug."""
    from ..errors import RunError
    from ..rundir import WRITE_ERRNOS
    from ..train.extensions import write_error

    if isinstance(e, RunError):
        return 1, f"error: {e}"
    if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
        return 1, f"error: {write_error(e, e.filename or '?', 'nothing else was changed')}"
    if isinstance(e, _usage_errors()):
        return 2, f"error: {e}"
    if isinstance(e, OSError):
        return 1, f"error: {e}"
    return 1, (f"error: unexpected {type(e).__name__}: {e} (a bug in gpunn? --debug shows the "
               f"traceback; please report it)")


@contextlib.contextmanager
def one_line_errors(debug: bool = False, interrupted: str | None = None, passthrough=()):
    """Run a command's work so that an error ends it with one line on stderr and an exit
    status (:func:`describe_error`; Ctrl-C: ``interrupted`` and 130). With ``debug`` the error
    propagates and Python prints its traceback; ``passthrough`` exceptions always do."""
    try:
        yield
    except KeyboardInterrupt:
        if interrupted:
            echo_err(interrupted)
        sys.exit(130)
    except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort, *passthrough):
        raise
    except Exception as e:
        if debug:
            raise
        code, line = describe_error(e)
        echo_err(line)
        sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gpunn")
def main():
    """gpunn: neural networks with hand-written backprop on NumPy (CPU) or CuPy (CUDA).

    Train a coursework model:  gpunn train --model model4 --dataset fashion-mnist

    Every run writes a directory with config.json, history.json, weights.npz,
    checkpoint.npz, PNG plots and report.md.
    """
