"""``gpunn export``: a trained run's model as ONNX (for deployment runtimes) or as a PyTorch
state dict."""
from __future__ import annotations

import os
import sys

import click

from .app import echo_err, main


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False), default=None,
              help="Write the model as ONNX here (needs: pip install 'gpunn[onnx]').")
@click.option("--torch", "torch_path", type=click.Path(dir_okay=False), default=None,
              help="Write the state dict of the equivalent torch.nn.Sequential here (torch.save; "
                   "needs torch). Build that Sequential with gpunn.interop.to_torch.")
@click.option("--opset", type=click.IntRange(min=13), default=None,
              help="ONNX opset [20: the first with Gelu; lower ones spell GELU out].")
@click.option("--weights", default="weights.npz", show_default=True,
              help="Weights file inside the run directory.")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Run the ONNX file in onnxruntime (if installed) and compare its logits with "
                   "gpunn's on random inputs.")
def export(run_dir, onnx_path, torch_path, opset, weights, check):
    """Export a trained run: --onnx FILE.onnx (float32 input (batch, C, H, W) with a dynamic
    batch axis, logits out; class names and input preparation in the metadata) and/or
    --torch FILE.pt (the state dict of the equivalent torch.nn.Sequential)."""
    from ..extras import MissingExtra
    from ..runs import RunConfig, load_model

    if not onnx_path and not torch_path:
        echo_err("error: say what to write: --onnx FILE.onnx and/or --torch FILE.pt")
        sys.exit(2)
    try:
        model = load_model(run_dir, device="cpu", weights=weights)
        cfg = RunConfig.load(os.path.join(run_dir, "config.json"))
        if onnx_path:
            _onnx(model, cfg, onnx_path, opset, check)
        if torch_path:
            _torch(model, torch_path)
    except (FileNotFoundError, ValueError, NotImplementedError, MissingExtra) as e:
        echo_err(f"error: {e}")
        sys.exit(2)


def _onnx(model, cfg, path, opset, check):
    from ..extras import MissingExtra
    from ..onnx_export import DEFAULT_OPSET, check_onnx, to_onnx

    info = cfg.data_info or {}
    meta = {"gpunn_model": cfg.model, "dataset": cfg.dataset,
            "preprocessing": {k: info.get(k) for k in ("pixel_scale", "mean", "std")}}
    opset = opset or DEFAULT_OPSET
    to_onnx(model, model.input_shape, path, opset=opset, class_names=model.class_names,
            metadata=meta)
    shape = ", ".join(str(s) for s in model.input_shape)
    click.echo(f"wrote {path}: ONNX opset {opset}, input float32 (batch, {shape}) -> logits "
               f"(batch, {len(model.class_names)})")
    if not check:
        return
    try:
        diff = check_onnx(model, path, model.input_shape, batch=8)
    except MissingExtra:
        click.echo("not checked: onnxruntime is not installed (pip install 'gpunn[onnx]')")
        return
    click.echo(f"onnxruntime: relative difference {diff:.1e} from gpunn on 8 random inputs")
    if not diff <= 1e-4:
        echo_err(f"error: the exported model disagrees with gpunn (relative difference {diff:.1e})")
        sys.exit(1)


def _torch(model, path):
    from ..extras import require
    from ..interop import to_torch_state_dict

    torch = require("torch", "torch", "export --torch")
    torch.save(to_torch_state_dict(model), path)
    click.echo(f"wrote {path}: state dict of gpunn.interop.to_torch(model) "
               f"({len(model.class_names)} classes)")
