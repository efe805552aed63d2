"""The ``gpunn`` click group and what the commands share. Each command lives in its own
``cmd_*.py`` module beside this one; ``gpunn/cli/__init__.py`` imports them all."""
from __future__ import annotations

from dataclasses import fields

import click

from .. import __version__
from ..runs import DEFAULT_LR, RunConfig

# Run settings and their defaults live in RunConfig; the train options read them from there.
DEFAULTS = {f.name: f.default for f in fields(RunConfig)}
OPTIMIZERS = tuple(DEFAULT_LR)


def echo_err(msg):
    click.echo(msg, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gpunn")
def main():
    """gpunn: neural networks with hand-written backprop on NumPy (CPU) or CuPy (CUDA).

    Train a coursework model:  gpunn train --model model4 --dataset fashion-mnist

    Every run writes a directory with config.json, history.json, weights.npz,
    checkpoint.npz, PNG plots and report.md.
    """
