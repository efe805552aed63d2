"""``gpunn eval``: a run's saved weights on the test set."""
from __future__ import annotations

import json

import click

from .app import debug_option, main, one_line_errors


@main.command("eval")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print metrics as JSON for scripts.")
@click.option("--device", default="auto", show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), default=None)
@click.option("--plots/--no-plots", default=True, show_default=True, help="Redraw the test plots.")
@debug_option
def eval_(run_dir, as_json, device, data_dir, plots, debug):
    """Evaluate a run's saved weights on the test set: metrics, per-class table, plots.

    With --json prints {"accuracy", "loss", "per_class": [...], "confusion": [[...]]}.
    """
    from ..runs import evaluate_run

    with one_line_errors(debug):
        res = evaluate_run(run_dir, device=device, data_dir=data_dir, plots=plots)
    if as_json:
        click.echo(json.dumps(res["json"]))
    else:
        click.echo(res["text"])
