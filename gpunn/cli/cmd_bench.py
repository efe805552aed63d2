"""``gpunn bench``: training-step speed of the zoo models beside PyTorch, on each device."""
from __future__ import annotations

import json
import sys

import click

from .app import echo_err, main


def _split(s):
    return tuple(v.strip() for v in s.split(",") if v.strip()) if s else None


@main.command()
@click.option("--models", default=None,
              help="Comma-separated zoo models [model1, model2, mlp1000, model4, cnn-bn, "
                   "resnet-small, vgg-cifar, resnet20].")
@click.option("--device", "devices", default="auto", show_default=True,
              help="Comma-separated devices: cpu, cuda, cuda:N; auto = cpu and, if usable, cuda.")
@click.option("--batch", "batches", default=None,
              help="Comma-separated batch sizes [100,512; CIFAR models 128].")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for gpunn and PyTorch [GPUNN_THREADS, else the usable cores].")
@click.option("--seconds", type=float, default=None,
              help="Timing budget per implementation and case [4; --quick 1].")
@click.option("--quick", is_flag=True, help="A few minutes on a 2-core CPU: batch 100/128 only, "
              "short timing, smaller device probes.")
@click.option("--memory/--no-memory", default=True, show_default=True,
              help="Measure peak memory (host RSS in child processes on the CPU).")
@click.option("--torch/--no-torch", "with_torch", default=True, show_default=True,
              help="Compare with PyTorch when it is installed.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--out", default="docs/benchmarks", show_default=True,
              help="Folder for the .json and .md results.")
@click.option("--save/--no-save", default=True, show_default=True,
              help="Write the results into --out.")
@click.option("--profile", is_flag=True,
              help="Instead: per-layer forward/backward times of gpunn's step for each model.")
@click.option("--procs", type=click.IntRange(min=1), default=None,
              help="Processes for the 'gpunn --procs' column (gpunn train --procs: the batch split "
                   "between forked processes sharing the model) [one per thread; 1: no such column].")
@click.option("--ranks", type=click.IntRange(min=2), default=None,
              help="Instead: data-parallel scaling on the CPU over N ranks (mlp1000, model4, cnn-bn "
                   "by default): 1 rank x 1 thread, 1 rank x N threads, N MPI ranks x 1 thread (with "
                   "the mpi extra), N forked ranks x 1 thread (--procs) (gpunn/distributed/bench.py).")
def bench(models, devices, batches, threads, seconds, quick, memory, with_torch, as_json, out,
          save, profile, procs, ranks):
    """Time each zoo model's training step in gpunn and in PyTorch (the same network, weights
    copied) on each device, print one table with gpunn/PyTorch ratios and each model's floor,
    and write the results to docs/benchmarks/."""
    from ..backend import cuda_available
    from ..bench.runner import DEFAULT_MODELS, BenchConfig, format_report, run_bench, write_results
    from ..zoo import MODELS

    models = _split(models) or DEFAULT_MODELS
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        echo_err(f"error: unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
        sys.exit(2)
    devs = _split(devices) or ("auto",)
    if "auto" in devs:
        devs = ("cpu", "cuda") if cuda_available() else ("cpu",)
    for d in devs:
        if d.startswith("cuda") and not cuda_available():
            echo_err(f"error: {d}: CUDA is not usable here (gpunn info says why)")
            sys.exit(2)
        if d != "cpu" and not d.startswith("cuda"):
            echo_err(f"error: unknown device {d!r}; use cpu, cuda or cuda:N")
            sys.exit(2)
    try:
        bs = tuple(int(b) for b in _split(batches)) if batches else None
    except ValueError:
        echo_err(f"error: --batch must be comma-separated integers, got {batches!r}")
        sys.exit(2)
    if bs and min(bs) < 2:
        echo_err("error: batch sizes must be >= 2 (batch-norm needs two samples)")
        sys.exit(2)

    if ranks:
        from ..distributed.bench import DEFAULT_MODELS as DP_MODELS, format_scaling, run_scaling
        chosen = DP_MODELS if models is DEFAULT_MODELS else models      # no --models given
        res = run_scaling(chosen, batch=bs[0] if bs else 100, ranks=ranks,
                          repeats=1 if quick else 3, log=lambda s: echo_err(f"  ... {s}"))
        click.echo(json.dumps(res, indent=1) if as_json else format_scaling(res))
        return

    if profile:
        from ..bench.profile import format_profile, profile_step
        from ..threads import set_num_threads
        if threads:
            set_num_threads(threads)
        for d in devs:
            for m in models:
                for b in bs or (128 if m in ("vgg-cifar", "resnet20") else 100,):
                    click.echo(format_profile(profile_step(m, b, d, steps=10 if quick else 30)))
        return

    log = None if as_json else (lambda s: click.echo(f"  ... {s}", err=True))
    cfg = BenchConfig(models=models, devices=devs, batches=bs, threads=threads,
                      seconds=seconds if seconds is not None else (1.0 if quick else 4.0),
                      min_rounds=3 if quick else 7, warmup=2 if quick else 3, memory=memory,
                      torch=with_torch, quick=quick, log=log, procs=procs)
    result = run_bench(cfg)
    if save:
        paths = write_results(result, out)
        if not as_json:
            click.echo(f"wrote {paths[0]} and {paths[1]}", err=True)
    click.echo(json.dumps(result, indent=1, sort_keys=True) if as_json else format_report(result))
