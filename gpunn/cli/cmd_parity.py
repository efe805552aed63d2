"""``gpunn parity``: the NumPy path against the CUDA path (a GPU, or emulated)."""
from __future__ import annotations

import sys

import click
import numpy as np

from .app import echo_err, main


@main.command()
@click.option("--emulate", is_flag=True,
              help="No GPU: run the CUDA bodies with the kernels compiled for the CPU (g++).")
@click.option("--models", default="model4,cnn-bn", show_default=True, help="Zoo models to train on both sides.")
@click.option("--steps", type=click.IntRange(min=1), default=200, show_default=True,
              help="Training steps per model.")
@click.option("--dtype", "dtypes", type=click.Choice(["float64", "float32", "both"]), default="both",
              show_default=True)
@click.option("--graph/--no-graph", "graphs", default=True, show_default=True,
              help="Also compare the graphed training step (a CUDA graph replayed per batch) "
                   "with the eager one, float64 (rows 'graph ...').")
def parity(emulate, models, steps, dtypes, graphs):
    """Compare the NumPy path with the CUDA path: every layer's forward and backward, and
    whole training runs, in float64 (to ~1e-10) and float32. Exits 1 on any failure."""
    from ..backend import cuda_status
    from ..parity import format_footer, format_header, format_row, run_parity

    if not emulate:
        ok, reason, _ = cuda_status()
        if not ok:
            echo_err(f"error: no usable CUDA device ({reason}); use --emulate to check the CUDA "
                      "path with CPU-compiled kernels")
            sys.exit(2)
    dts = {"float64": (np.float64,), "float32": (np.float32,), "both": (np.float64, np.float32)}[dtypes]
    names = [m for m in models.split(",") if m]
    click.echo(f"parity: NumPy vs {'emulated CUDA (CPU-compiled kernels)' if emulate else 'CUDA'}"
               f" (each row as it is done; training runs take longest)")
    click.echo(format_header())
    rows, ok = run_parity("emulated" if emulate else "cuda", models=names, steps=steps, dtypes=dts,
                          on_row=lambda r: click.echo(format_row(r)), graphs=graphs)
    click.echo(format_footer(rows))
    sys.exit(0 if ok else 1)
