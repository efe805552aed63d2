"""The ``gpunn`` command: info, train, eval, sweep, datasets, parity."""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import fields

import click
import numpy as np

from . import __version__
from .runs import DEFAULT_LR, RunConfig

# Run settings and their defaults live in RunConfig; the train options read them from there.
_DEFAULTS = {f.name: f.default for f in fields(RunConfig)}
OPTIMIZERS = tuple(DEFAULT_LR)


def _echo_err(msg):
    click.echo(msg, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gpunn")
def main():
    """gpunn: neural networks with hand-written backprop on NumPy (CPU) or CuPy (CUDA).

    Train a coursework model:  gpunn train --model model4 --dataset fashion-mnist

    Every run writes a directory with config.json, history.json, weights.npz,
    checkpoint.npz, PNG plots and report.md.
    """


# -- info ---------------------------------------------------------------------------------------
@main.command()
def info():
    """Show devices, library versions and the data sets found on this machine."""
    import matplotlib

    from .backend import cuda_status
    from .data import dataset_status

    ok, reason, count = cuda_status()
    from importlib.metadata import version
    click.echo(f"gpunn {__version__}  python {sys.version.split()[0]}  numpy {np.__version__}  "
               f"click {version('click')}  matplotlib {matplotlib.__version__}")
    try:
        import cupy
        click.echo(f"cupy {cupy.__version__}")
    except Exception:
        click.echo("cupy: not installed (pip install 'gpunn[cuda12]' or 'gpunn[cuda13]')")
    click.echo(f"CUDA: {'usable' if ok else 'not usable'} ({reason})")
    if ok:
        import cupy
        for i in range(count):
            props = cupy.cuda.runtime.getDeviceProperties(i)
            name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            click.echo(f"  cuda:{i}  {name}  {props['totalGlobalMem'] / 2**30:.1f} GiB")
    click.echo(f"default device ('auto'): {'cuda:0' if ok else 'cpu'}")
    click.echo("data sets:")
    for name, where in dataset_status():
        click.echo(f"  {name:14s} {where}")


# -- datasets -----------------------------------------------------------------------------------
@main.command()
@click.option("--check", "check", metavar="NAME", help="Exit 0 if NAME is available, else print how to get it and exit 1.")
@click.option("--download", "download", metavar="NAME", help="Download NAME into the cache (checksums verified).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Also look in this folder.")
def datasets(check, download, data_dir):
    """List the known data sets and where each was found; check or download one."""
    from .data import DatasetNotFound, dataset_status, download_dataset, locate_dataset

    if check:
        try:
            path = locate_dataset(check, data_dir=data_dir)
        except (DatasetNotFound, ValueError) as e:
            _echo_err(str(e))
            sys.exit(1)
        click.echo(f"{check}: {path}")
        return
    if download:
        try:
            path = download_dataset(download, data_dir=data_dir)
        except Exception as e:
            _echo_err(f"download of {download} failed: {e}")
            sys.exit(1)
        click.echo(f"{download}: {path}")
        return
    for name, where in dataset_status(data_dir=data_dir):
        click.echo(f"{name:14s} {where}")


# -- train --------------------------------------------------------------------------------------
def _train_options(f):
    opts = [
        click.option("--model", "model_name", default=_DEFAULTS["model"], show_default=True,
                     help="Zoo model: model1, model2, model3, model4, mlp1000, cnn-bn, lenet5x5, resnet-small."),
        click.option("--dataset", default=_DEFAULTS["dataset"], show_default=True,
                     help="fashion-mnist, mnist, kmnist, cifar10 or synthetic."),
        click.option("--data-dir", type=click.Path(file_okay=False), default=_DEFAULTS["data_dir"],
                     help="Folder holding the data set's files (else the usual places)."),
        click.option("--epochs", type=click.IntRange(min=1), default=_DEFAULTS["epochs"], show_default=True),
        click.option("--lr", type=float, default=_DEFAULTS["lr"],
                     help="Learning rate [" + ", ".join(f"{k}: {v}" for k, v in DEFAULT_LR.items()) + "]."),
        click.option("--batch-size", type=click.IntRange(min=1), default=_DEFAULTS["batch_size"], show_default=True),
        click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=_DEFAULTS["optimizer"], show_default=True),
        click.option("--momentum", type=float, default=_DEFAULTS["momentum"], show_default=True, help="SGD momentum (0 for plain SGD)."),
        click.option("--nesterov/--no-nesterov", default=_DEFAULTS["nesterov"], show_default=True),
        click.option("--weight-decay", type=float, default=_DEFAULTS["weight_decay"], show_default=True, help="L2 weight decay."),
        click.option("--dropout", type=float, default=_DEFAULTS["dropout"], help="Dropout rate for models that take one."),
        click.option("--schedule", type=click.Choice(["none", "step", "exp", "cosine"]), default=_DEFAULTS["schedule"],
                     show_default=True, help="Learning-rate schedule, stepped each epoch."),
        click.option("--device", default=_DEFAULTS["device"], show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--dtype", type=click.Choice(["float32", "float64"]), default=_DEFAULTS["dtype"], show_default=True),
        click.option("--seed", type=int, default=_DEFAULTS["seed"], show_default=True),
        click.option("--eval-every", type=click.IntRange(min=0), default=_DEFAULTS["eval_every"], show_default=True,
                     help="Evaluate every N training samples (0: at epoch ends only)."),
        click.option("--val-size", type=float, default=_DEFAULTS["val_size"], show_default=True,
                     help="Validation samples taken from the training set (a fraction if < 1)."),
        click.option("--standardize/--no-standardize", default=_DEFAULTS["standardize"], show_default=True,
                     help="Standardise images with the training split's mean and std (else [0, 1])."),
        click.option("--patience", type=int, default=_DEFAULTS["patience"], help="Early stopping: evaluations without improvement."),
        click.option("--max-steps", type=int, default=_DEFAULTS["max_steps"], help="Stop after this many steps (smoke tests)."),
        click.option("--out", type=click.Path(file_okay=False), default=None,
                     help="Run directory [runs/MODEL-DATASET-TIME]."),
        click.option("--resume", "resume", type=click.Path(file_okay=False, exists=True), default=None,
                     help="Continue the run in this directory from its checkpoint (settings from its config.json; --epochs may raise the total)."),
        click.option("--progress/--no-progress", default=_DEFAULTS["progress"], show_default=True),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@main.command()
@_train_options
@click.pass_context
def train(ctx, resume, **kw):
    """Train a zoo model on a data set and write a run directory with plots and a report."""
    from .runs import run_training

    if resume:
        cfg = RunConfig.load(os.path.join(resume, "config.json"))
        src = ctx.get_parameter_source
        if src("epochs") != click.core.ParameterSource.DEFAULT:
            cfg.epochs = kw["epochs"]
        if src("device") != click.core.ParameterSource.DEFAULT:
            cfg.device = kw["device"]
        if src("data_dir") != click.core.ParameterSource.DEFAULT:
            cfg.data_dir = kw["data_dir"]
        cfg.progress = kw["progress"]
        out = resume
    else:
        cfg = RunConfig.from_cli(kw)
        out = kw["out"] or os.path.join(
            "runs", f"{cfg.model}-{cfg.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        summary = run_training(cfg, out, resume=bool(resume))
    except KeyboardInterrupt:
        _echo_err(f"stopped; resume with: gpunn train --resume {out}")
        sys.exit(130)
    except Exception as e:
        from .errors import ShapeError, DTypeError
        from .backend import DeviceError
        from .data import DatasetNotFound
        if isinstance(e, (ShapeError, DTypeError, DeviceError, DatasetNotFound, ValueError,
                          FileNotFoundError)):
            _echo_err(f"error: {e}")
            sys.exit(2)
        raise
    click.echo(f"test accuracy {summary['test_acc']:.4f}  loss {summary['test_loss']:.4f}  "
               f"({summary['seconds']:.1f} s on {summary['device']})")
    click.echo(f"report: {os.path.join(out, 'report.md')}")


# -- eval ---------------------------------------------------------------------------------------
@main.command("eval")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print metrics as JSON for scripts.")
@click.option("--device", default="auto", show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), default=None)
@click.option("--plots/--no-plots", default=True, show_default=True, help="Redraw the test plots.")
def eval_(run_dir, as_json, device, data_dir, plots):
    """Evaluate a run's saved weights on the test set: metrics, per-class table, plots.

    With --json prints {"accuracy", "loss", "per_class": [...], "confusion": [[...]]}.
    """
    from .runs import evaluate_run

    try:
        res = evaluate_run(run_dir, device=device, data_dir=data_dir, plots=plots)
    except (FileNotFoundError, ValueError) as e:
        _echo_err(f"error: {e}")
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(res["json"]))
    else:
        click.echo(res["text"])


# -- sweep --------------------------------------------------------------------------------------
@main.command()
@click.argument("config", type=click.Path(dir_okay=False, exists=True))
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Sweep directory [runs/sweep-NAME].")
@click.option("--device", default=None, help="Override the config's device.")
@click.option("--epochs", type=int, default=None, help="Override the config's epochs.")
@click.option("--max-steps", type=int, default=_DEFAULTS["max_steps"], help="Cap every run's steps (smoke tests).")
@click.option("--progress/--no-progress", default=True)
def sweep(config, out, device, epochs, max_steps, progress):
    """Train every model x setting in a TOML sweep file; write the grid of learning curves
    and the summary table of test accuracies (see examples/coursework_sweep.toml)."""
    from .runs import run_sweep

    try:
        res = run_sweep(config, out=out, device=device, epochs=epochs, max_steps=max_steps,
                        progress=progress)
    except (ValueError, FileNotFoundError) as e:
        _echo_err(f"error: {e}")
        sys.exit(2)
    click.echo(res["table"])
    click.echo(f"sweep report: {res['report']}")


# -- parity -------------------------------------------------------------------------------------
@main.command()
@click.option("--emulate", is_flag=True,
              help="No GPU: run the CUDA bodies with the kernels compiled for the CPU (g++).")
@click.option("--models", default="model4,cnn-bn", show_default=True, help="Zoo models to train on both sides.")
@click.option("--steps", type=click.IntRange(min=1), default=200, show_default=True,
              help="Training steps per model.")
@click.option("--dtype", "dtypes", type=click.Choice(["float64", "float32", "both"]), default="both",
              show_default=True)
def parity(emulate, models, steps, dtypes):
    """Compare the NumPy path with the CUDA path: every layer's forward and backward, and
    whole training runs, in float64 (to ~1e-10) and float32. Exits 1 on any failure."""
    from .backend import cuda_status
    from .parity import format_rows, run_parity

    if not emulate:
        ok, reason, _ = cuda_status()
        if not ok:
            _echo_err(f"error: no usable CUDA device ({reason}); use --emulate to check the CUDA "
                      "path with CPU-compiled kernels")
            sys.exit(2)
    dts = {"float64": (np.float64,), "float32": (np.float32,), "both": (np.float64, np.float32)}[dtypes]
    names = [m for m in models.split(",") if m]
    rows, ok = run_parity("emulated" if emulate else "cuda", models=names, steps=steps, dtypes=dts)
    click.echo(f"parity: NumPy vs {'emulated CUDA (CPU-compiled kernels)' if emulate else 'CUDA'}")
    click.echo(format_rows(rows))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
