"""``gpunn compare``: runs side by side (settings that differ, final metrics) and one figure."""
from __future__ import annotations

import json
import sys

import click

from .app import echo_err, main


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), default="compare.png", show_default=True,
              help="Where the figure of the runs' curves goes (PNG).")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON for scripts.")
def compare(runs, out, as_json):
    """Compare run directories: a table of the settings that differ (from each config.json)
    and the final metrics (validation and test accuracy and loss of the last evaluation, the
    epoch of the best validation accuracy, training time), and a figure overlaying the runs'
    accuracy and loss curves (written to --out, by default compare.png in the current
    folder). Runs still training compare too: their curves come from metrics.csv.

    With --json prints {"differ": [setting, ...], "rows": [{"run", settings..., metrics...}],
    "figure": PATH}.
    """
    from ..compare import compare_runs, format_comparison, plot_comparison

    try:
        cmp = compare_runs(runs)
    except (FileNotFoundError, ValueError) as e:
        echo_err(f"error: {e}")
        sys.exit(2)
    figure = plot_comparison(cmp, out)
    if as_json:
        click.echo(json.dumps({"differ": cmp["differ"], "rows": cmp["rows"], "figure": figure}))
    else:
        click.echo(format_comparison(cmp))
        click.echo(f"figure: {figure}")
