"""``gpunn sweep``: models x settings from a TOML file."""
from __future__ import annotations

import sys

import click

from .app import DEFAULTS, echo_err, main


@main.command()
@click.argument("config", type=click.Path(dir_okay=False, exists=True))
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Sweep directory [runs/sweep-NAME].")
@click.option("--device", default=None, help="Override the config's device.")
@click.option("--epochs", type=int, default=None, help="Override the config's epochs.")
@click.option("--max-steps", type=int, default=DEFAULTS["max_steps"], help="Cap every run's steps (smoke tests).")
@click.option("--progress/--no-progress", default=True)
def sweep(config, out, device, epochs, max_steps, progress):
    """Train every model x setting in a TOML sweep file; write the grid of learning curves
    and the summary table of test accuracies (see examples/coursework_sweep.toml)."""
    from ..runs import run_sweep

    try:
        res = run_sweep(config, out=out, device=device, epochs=epochs, max_steps=max_steps,
                        progress=progress)
    except (ValueError, FileNotFoundError) as e:
        echo_err(f"error: {e}")
        sys.exit(2)
    click.echo(res["table"])
    click.echo(f"sweep report: {res['report']}")
