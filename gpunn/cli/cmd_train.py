"""``gpunn train``: train a model and write a run directory."""
from __future__ import annotations

import os
import sys
import time

import click

from ..runs import DEFAULT_LR, RunConfig
from .app import (DEFAULTS, OPTIMIZERS, debug_option, describe_error, echo_err, main,
                  one_line_errors)


def _apply_threads(ctx, param, value):
    if value is not None:
        from ..threads import set_num_threads
        set_num_threads(value)
    return value


def _train_options(f):
    opts = [
        click.option("--model", "model_name", default=DEFAULTS["model"], show_default=True,
                     help="A zoo model (gpunn models lists them), a Python file FILE.py[:FUNCTION] whose "
                          "build(input_shape, num_classes, rng, dtype) returns a Sequential, or a TOML "
                          "layer spec FILE.toml (see README: own models)."),
        click.option("--dataset", default=DEFAULTS["dataset"], show_default=True,
                     help="fashion-mnist, mnist, kmnist, cifar10, synthetic, or your own: npz:FILE.npz "
                          "(x_train, y_train, x_test, y_test[, class_names]), idx:DIR (four IDX files), "
                          "folder:DIR (DIR/train/<class>/*.png, DIR/test/<class>/*.png)."),
        click.option("--data-dir", type=click.Path(file_okay=False), default=DEFAULTS["data_dir"],
                     help="Folder holding the data set's files; the only place looked (else the usual places)."),
        click.option("--epochs", type=click.IntRange(min=1), default=DEFAULTS["epochs"], show_default=True),
        click.option("--lr", type=float, default=DEFAULTS["lr"],
                     help="Learning rate [" + ", ".join(f"{k}: {v}" for k, v in DEFAULT_LR.items()) + "]."),
        click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULTS["batch_size"], show_default=True),
        click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=DEFAULTS["optimizer"], show_default=True),
        click.option("--momentum", type=float, default=DEFAULTS["momentum"], show_default=True, help="SGD momentum (0 for plain SGD)."),
        click.option("--nesterov/--no-nesterov", default=DEFAULTS["nesterov"], show_default=True),
        click.option("--weight-decay", type=float, default=DEFAULTS["weight_decay"], show_default=True, help="L2 weight decay."),
        click.option("--dropout", type=float, default=DEFAULTS["dropout"], help="Dropout rate for models that take one."),
        click.option("--schedule", type=click.Choice(["none", "step", "exp", "cosine"]), default=DEFAULTS["schedule"],
                     show_default=True, help="Learning-rate schedule, stepped each epoch."),
        click.option("--device", default=DEFAULTS["device"], show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--dtype", type=click.Choice(["float32", "float64"]), default=DEFAULTS["dtype"], show_default=True),
        click.option("--seed", type=int, default=DEFAULTS["seed"], show_default=True),
        click.option("--eval-every", type=click.IntRange(min=0), default=DEFAULTS["eval_every"], show_default=True,
                     help="Evaluate every N training samples (0: at epoch ends only)."),
        click.option("--val-size", type=float, default=DEFAULTS["val_size"], show_default=True,
                     help="Validation samples taken from the training set (a fraction if < 1)."),
        click.option("--standardize/--no-standardize", default=DEFAULTS["standardize"], show_default=True,
                     help="Standardise images with the training split's mean and std (else [0, 1])."),
        click.option("--augment-crop", type=click.IntRange(min=0), default=DEFAULTS["augment_crop"],
                     show_default=True, metavar="PAD",
                     help="Images: random crop after zero padding by PAD pixels (on the device; 0: off)."),
        click.option("--augment-flip/--no-augment-flip", default=DEFAULTS["augment_flip"], show_default=True,
                     help="Images: random horizontal flip (on the device)."),
        click.option("--patience", type=int, default=DEFAULTS["patience"], help="Early stopping: evaluations without improvement."),
        click.option("--save-best/--no-save-best", default=DEFAULTS["save_best"], show_default=True,
                     help="Also keep the weights with the best validation accuracy in best.npz (weights.npz: the last)."),
        click.option("--max-steps", type=int, default=DEFAULTS["max_steps"], help="Stop after this many steps (smoke tests)."),
        click.option("--out", type=click.Path(file_okay=False), default=None,
                     help="Run directory [runs/MODEL-DATASET-TIME]; refused if it holds files, unless --overwrite."),
        click.option("--overwrite", is_flag=True, help="Replace the run in --out (its files are removed once the new settings check out)."),
        click.option("--resume", "resume", type=click.Path(file_okay=False, exists=True), default=None,
                     help="Continue the run in this directory from its checkpoint, with its settings (config.json); "
                          "--epochs may raise the total (the LR schedule is stretched to it), --max-steps, --device, "
                          "--data-dir and --progress may change, other options must agree."),
        click.option("--progress/--no-progress", default=DEFAULTS["progress"], show_default=True),
        click.option("--threads", type=click.IntRange(min=1), default=None, expose_value=False,
                     callback=_apply_threads,
                     help="CPU threads for the NumPy bodies and NumPy's BLAS [GPUNN_THREADS, else "
                          "the cores this process may use]; not recorded (a resume may run elsewhere)."),
        click.option("--graph/--no-graph", default=DEFAULTS["graph"], show_default=True,
                     help="CUDA: capture the training step into a CUDA graph and replay it per "
                          "batch (same results; off by default until measured on a GPU)."),
        click.option("--sync-bn/--no-sync-bn", default=DEFAULTS["sync_bn"], show_default=True,
                     help="Data-parallel (--procs, mpiexec): batch-norm statistics over every rank's samples "
                          "(SyncBatchNorm: the single-process batch-norm of the global batch) instead of per rank "
                          "(PyTorch DDP's default). Alone it changes nothing."),
        click.option("--bucket-mb", type=click.FloatRange(min=0), default=DEFAULTS["bucket_mb"],
                     show_default=True,
                     help="Data-parallel (mpiexec, NCCL): all-reduce the gradients in buckets of this many MiB, each "
                          "started as soon as its layers' backward has run, so that it overlaps the rest of the "
                          "backward pass (PyTorch DDP's bucket_cap_mb); 0: one all-reduce after it."),
        click.option("--tensorboard/--no-tensorboard", default=DEFAULTS["tensorboard"], show_default=True,
                     help="Also write TensorBoard event files to RUN/tensorboard (needs: pip install 'gpunn[tensorboard]')."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _label(model, dataset) -> str:
    """model-dataset for a run directory name, with file paths shortened to their stems."""
    from ..data.registry import parse_own
    from ..specs import ModelSpecError, model_label

    try:
        m = model_label(model)
    except ModelSpecError:
        m = "model"                  # the run fails with the real message when it starts
    own = parse_own(dataset)
    d = os.path.basename(os.path.normpath(own[1] if own else dataset))
    return f"{m}-{os.path.splitext(d)[0] or 'data'}"


@main.command()
@_train_options
@click.option("--distributed/--no-distributed", default=None,
              help="Data-parallel training over the ranks of an MPI launch (mpiexec -n N gpunn train ...; "
                   "--batch-size is per rank). On by itself when a launcher started several ranks; "
                   "--distributed uses MPI even for one rank, --no-distributed trains each process alone.")
@click.option("--procs", type=click.IntRange(min=1), default=None, metavar="N",
              help="Data-parallel training over N processes on this machine (CPU only; shared "
                   "memory, nothing to install; --batch-size is per process, --threads is split "
                   "between them). Uses several cores where one process cannot (NumPy's small ops "
                   "hold the GIL) [GPUNN_PROCS, else 1].")
@click.option("--dist-timeout", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Data-parallel: how long a rank waits for the others in a collective before the job is "
                   "aborted with a message (0: forever) [GPUNN_DIST_TIMEOUT, else 300].")
@debug_option
@click.pass_context
def train(ctx, resume, overwrite, debug, distributed, procs, dist_timeout, **kw):
    """Train a zoo model on a data set and write a run directory with plots and a report."""
    from ..distributed import PeerError
    from ..rundir import RunFinished

    with one_line_errors(debug):
        from ..ops import mkl
        mkl.library()          # GPUNN_BLAS checked, and MKL (if used) loaded before any fork
        comm = _join(distributed, dist_timeout, procs, kw.get("device"),
                     before_fork=lambda: _preload(ctx, resume, kw))
    try:
        _train(ctx, resume, overwrite, debug, comm, kw)
    except PeerError as e:                  # rank 0 failed and said why; end as it did
        if not isinstance(e.error, RunFinished):
            sys.exit(describe_error(e.error)[0])


def _join(distributed, timeout, procs=None, device=None, before_fork=None):
    """The data-parallel world (gpunn.distributed) when asked for, launched by MPI with
    several ranks, or forked here (--procs / GPUNN_PROCS; ``before_fork()`` first), else
    None."""
    from .. import distributed as dist

    n = procs if procs is not None else dist.procs_from_env()
    if n is not None and n > 1:
        if distributed is not None or dist.launched_by_mpi():
            raise click.UsageError(f"--procs {n} (or GPUNN_PROCS) forks processes on this machine; "
                             f"it does not combine with --distributed/--no-distributed or an MPI "
                             f"launch (use one or the other)")
        if device is not None and str(device).strip().lower().startswith("cuda"):
            raise click.UsageError(f"--procs {n} runs on the CPU only (CUDA does not survive a fork); "
                             f"for several GPUs use mpiexec -n N gpunn train (NCCL)")
        if before_fork is not None:
            before_fork()
        return dist.init("procs", procs=n, timeout=timeout)
    if distributed is False:
        return None
    comm = dist.init("mpi" if distributed else "auto", timeout=timeout)
    return comm if (comm.size > 1 or distributed) else None


def _resume_overrides(ctx, kw) -> dict:
    """The settings given explicitly on a --resume command line (and --out, if given)."""
    given = {("model" if k == "model_name" else k): v for k, v in kw.items()
             if ctx.get_parameter_source(k) not in (click.core.ParameterSource.DEFAULT,
                                                    click.core.ParameterSource.DEFAULT_MAP)}
    given["progress"] = kw["progress"]              # display only: always as given now
    return given


def _preload(ctx, resume, kw):
    """--procs: the run's data set loaded once, before the fork, so that every rank trains
    from the same memory instead of a copy of its own (gpunn.runs.preload_data). Only a
    saving: a run that cannot start is reported after the fork by the run's own checks, on
    rank 0, with their messages, exactly as without it."""
    from ..rundir import resume_config
    from ..runs import preload_data
    try:
        if resume:
            given = _resume_overrides(ctx, kw)
            given.pop("out", None)
            cfg = resume_config(resume, given)
        else:
            cfg = RunConfig.from_cli(kw)
        preload_data(cfg)
    except Exception:                       # noqa: BLE001 (reported after the fork, above)
        pass


def _train(ctx, resume, overwrite, debug, comm, kw):
    from ..distributed import PeerError
    from ..distributed.run import agree
    from ..rundir import RunFinished, resume_config
    from ..runs import run_training

    main_rank = comm is None or comm.rank == 0
    if resume:
        given = _resume_overrides(ctx, kw)
        out = given.pop("out", None)
        if out is not None and os.path.abspath(out) != os.path.abspath(resume):
            echo_err(f"error: --out {out} and --resume {resume} name different runs; give one")
            sys.exit(2)
        if overwrite:
            echo_err("error: --overwrite and --resume contradict each other; give one")
            sys.exit(2)
        out = resume
        with one_line_errors(debug, passthrough=(PeerError,)):
            # data-parallel: rank 0 reads the run (the others may not see its disk)
            cfg = resume_config(resume, given) if comm is None else \
                agree(comm, lambda: resume_config(resume, given))
    else:
        cfg = RunConfig.from_cli(kw)
        out = kw["out"] or os.path.join("runs", f"{_label(cfg.model, cfg.dataset)}-"
                                                f"{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        with one_line_errors(debug, f"stopped; resume with: gpunn train --resume {out}"
                             if main_rank else None, passthrough=(RunFinished, PeerError)):
            summary = run_training(cfg, out, resume=bool(resume), overwrite=overwrite)
    except RunFinished as e:
        echo_err(str(e))
        return
    if not main_rank:                       # data-parallel: rank 0 reports
        return
    click.echo(f"test accuracy {summary['test_acc']:.4f}  loss {summary['test_loss']:.4f}  "
               f"({summary['seconds']:.1f} s on {summary['device']})")
    click.echo(f"report: {os.path.join(out, 'report.md')}")
