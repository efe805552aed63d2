"""``gpunn sweep``: models x settings from a TOML file."""
from __future__ import annotations

import sys

import click

from .app import DEFAULTS, debug_option, echo_err, main, one_line_errors


@main.command()
@click.argument("config", type=click.Path(dir_okay=False, exists=True))
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Sweep directory [runs/sweep-NAME].")
@click.option("--device", default=None, help="Override the config's device.")
@click.option("--epochs", type=int, default=None, help="Override the config's epochs.")
@click.option("--max-steps", type=int, default=DEFAULTS["max_steps"], help="Cap every run's steps (smoke tests).")
@click.option("--progress/--no-progress", default=True)
@click.option("--resume", is_flag=True, help="Finish a sweep in --out: skip the runs that are done, resume one that stopped.")
@click.option("--overwrite", is_flag=True, help="Start again in --out, replacing its runs.")
@debug_option
def sweep(config, out, device, epochs, max_steps, progress, resume, overwrite, debug):
    """Train every model x setting in a TOML sweep file, saying "run k/n" before each and its
    result as it ends; write the grid of learning curves and the summary table (test accuracy;
    each model's best setting chosen on validation accuracy). See
    examples/coursework_sweep.toml."""
    from ..runs import run_sweep

    if resume and overwrite:
        echo_err("error: --resume and --overwrite contradict each other; give one")
        sys.exit(2)
    with one_line_errors(debug, "stopped; finish the sweep with: gpunn sweep CONFIG --resume"
                                + (f" --out {out}" if out else "")):
        res = run_sweep(config, out=out, device=device, epochs=epochs, max_steps=max_steps,
                        progress=progress, resume=resume, overwrite=overwrite,
                        log=lambda msg: echo_err(msg))
    click.echo(res["table"])
    click.echo(res["verdict"])
    click.echo(f"sweep report: {res['report']}")
