"""``gpunn models``: the zoo, one line per model."""
from __future__ import annotations

import json

import click

from .app import main


def zoo_rows(num_classes: int = 10) -> list:
    """[{"name", "description", "parameters", "input_shape"}] for every model in the zoo
    registry (gpunn.zoo.MODELS), counted at the input it is meant for with ``num_classes``."""
    from .. import zoo

    rows = []
    for name, builder in zoo.MODELS.items():
        shape = tuple(getattr(zoo, "INPUT_SHAPES", {}).get(name, (1, 28, 28)))
        model = zoo.build_model(name, shape, num_classes)
        rows.append({"name": name, "description": _summary(builder.__doc__),
                     "parameters": model.num_parameters(), "input_shape": list(shape)})
    return rows


def _summary(doc) -> str:
    """The docstring's lead: the words before its first colon ("Small CNN: conv ..." ->
    "Small CNN"), else its first sentence."""
    text = " ".join((doc or "").split())
    head, colon, _ = text.partition(": ")
    if colon and len(head) <= 60:
        return head
    return text.split(". ")[0].rstrip(".")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON for scripts.")
@click.option("--classes", type=click.IntRange(min=2), default=10, show_default=True,
              help="Count parameters for this many classes.")
def models(as_json, classes):
    """List the zoo: name, parameter count, input shape (C, H, W) it is meant for, and what it
    is. Every model adapts to the data set it is trained on; --model also takes a .py or .toml
    file (see gpunn train --help)."""
    rows = zoo_rows(classes)
    if as_json:
        click.echo(json.dumps(rows))
        return
    shapes = [str(tuple(r["input_shape"])) for r in rows]
    wn = max(len(r["name"]) for r in rows)
    wp = max(len(f"{r['parameters']:,}") for r in rows)
    ws = max(map(len, shapes))
    click.echo(f"{'name':<{wn}}  {'params':>{wp}}  {'input':<{ws}}  description")
    for r, s in zip(rows, shapes):
        click.echo(f"{r['name']:<{wn}}  {r['parameters']:>{wp},}  {s:<{ws}}  {r['description']}")
