"""``gpunn predict``: a run's model on image files or .npz arrays, top-k classes."""
from __future__ import annotations

import json
import sys

import click

from .app import echo_err, main


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGE...")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True,
              help="How many classes to show per image.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--resize", type=click.Choice(["bilinear", "nearest", "none"]), default="bilinear",
              show_default=True,
              help="An image of the model's aspect ratio but another size: resample it (bilinear: "
                   "triangle filter, antialiased when shrinking; nearest: the pixel under each "
                   "centre) or refuse it (none).")
@click.option("--weights", default="weights.npz", show_default=True,
              help="Weights file in the run directory (best.npz for the best by validation).")
@click.option("--device", default="cpu", show_default=True)
def predict(run_dir, inputs, top_k, as_json, resize, weights, device):
    """Classify images with a trained run: PNG / JPEG files, or .npz arrays of images.

    Inputs are prepared as the run's training data were ([0, 1] pixels, the run's
    standardisation). Another size with the model's aspect ratio is resized (--resize); another
    aspect ratio or channel count is refused with what to change. Prints the top-k classes with
    probabilities per image; --json prints [{"input", "top": [{"class", "index",
    "probability"}], "resized_from"}].
    """
    from ..data import DataFormatError
    from ..predict import PredictError, Predictor, format_rows
    from ..specs import ModelSpecError

    try:
        p = Predictor(run_dir, device=device, weights=weights)
        rows = p.predict(inputs, top_k=top_k, resize=resize)
    except (PredictError, DataFormatError, ModelSpecError, FileNotFoundError, ValueError) as e:
        echo_err(f"error: {e}")
        sys.exit(2)
    for w in p.warnings:
        echo_err(f"warning: {w}")
    click.echo(json.dumps(rows) if as_json else format_rows(rows))
