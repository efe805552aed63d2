"""A run directory's safety rules, used by :func:`gpunn.runs.run_training`:

- a new run never writes over an existing one: :func:`check_new_run_dir` refuses a directory
  that holds files unless ``overwrite``, and :func:`clear_run` then removes the old run's files
  (only the files a run writes; anything else stays);
- one writer at a time: the :class:`~gpunn.train.RunLock` extension (gpunn/train/extensions.py);
- a resume says what it does: :func:`resume_config` refuses options that contradict the run's
  config (naming both values), :func:`resume_position` refuses fewer epochs than were done and
  says so when the run is finished (:class:`RunFinished`), and :func:`save_config` records each
  resume in ``config.json`` under ``resumes`` (when, from where, what changed);
- a run that fails before it wrote a checkpoint leaves no folder behind
  (:func:`remove_if_unstarted`);
- a failed write is one line (:func:`writes` turns the OSError into a
  :class:`~gpunn.errors.RunWriteError` naming the file and what is still intact).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
from dataclasses import asdict

__all__ = ["RUN_FILES", "RESUMABLE", "RunExistsError", "RunFinished", "check_new_run_dir",
           "clear_run", "resume_config", "resume_position", "save_config", "load_resumes",
           "remove_if_unstarted", "writes", "WRITE_ERRNOS", "plain"]

# everything a run writes (a run that is overwritten loses exactly these)
RUN_FILES = ("config.json", "history.json", "metrics.json", "metrics.csv", "weights.npz",
             "best.npz", "checkpoint.npz", "report.md", "curves.png", "confusion.png",
             "misclassified.png", "filters.png", "tensorboard", ".gpunn.lock")
# run settings a resume may change; any other option must agree with config.json
RESUMABLE = ("epochs", "max_steps", "device", "data_dir", "progress", "tensorboard", "graph",
             "bucket_mb")
# OSErrors that mean "could not write here" (a missing file to read is not one of them)
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO,
                errno.EFBIG}


class RunExistsError(FileExistsError):
    """The run directory already holds a run (or other files), and no ``overwrite`` was given."""


class RunFinished(Exception):
    """A resumed run has nothing left to do; the message says why and how to train more."""


def _entries(out) -> list:
    try:
        return sorted(os.listdir(out))
    except FileNotFoundError:
        return []


def check_new_run_dir(out, overwrite: bool = False) -> None:
    """Refuse to start a new run in ``out`` when it holds files, unless ``overwrite``."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise RunExistsError(f"{out} exists and is not a directory")
    have = [f for f in _entries(out) if f != ".gpunn.lock"]   # the lock names its holder
    if not have or overwrite:
        return
    runs = [f for f in have if f in RUN_FILES]
    what = (f"holds a run ({', '.join(runs[:4])}{', ...' if len(runs) > 4 else ''})" if runs
            else f"is not empty ({', '.join(have[:4])}{', ...' if len(have) > 4 else ''})")
    hint = f"continue it with --resume {out}, " if "checkpoint.npz" in runs else ""
    raise RunExistsError(f"{out} {what}; {hint}replace it with --overwrite, or choose another "
                         f"--out")


def clear_run(out) -> list:
    """Remove the files an earlier run wrote in ``out`` (before a run that overwrites it);
    returns their names. Other files stay."""
    gone = []
    for name in _entries(out):
        path = os.path.join(out, name)
        if name in RUN_FILES and name != ".gpunn.lock":
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            gone.append(name)
    return gone


def remove_if_unstarted(out, created: bool) -> None:
    """After a failure: if this run created ``out`` and never wrote a checkpoint there, remove
    what it wrote (its config, the log header) and the folder, so that no run that cannot be
    resumed is left behind and the same --out works again."""
    if not created or os.path.exists(os.path.join(out, "checkpoint.npz")):
        return
    clear_run(out)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(out, ".gpunn.lock"))
    with contextlib.suppress(OSError):
        os.rmdir(out)                       # only if nothing else is there


# -- resuming -----------------------------------------------------------------------------------
def _same(name, have, want) -> bool:
    if name == "dataset":
        try:
            from .data.registry import absolute_dataset
            want = absolute_dataset(want)
        except ImportError:
            pass
    if isinstance(have, (int, float)) and isinstance(want, (int, float)) \
            and not isinstance(have, bool) and not isinstance(want, bool):
        return float(have) == float(want)
    return have == want


def _option(name) -> str:
    return "--" + name.replace("_", "-")


def resume_config(run_dir, overrides: dict):
    """The run's config with the ``overrides`` a resume may make (``RESUMABLE``) applied.

    ``overrides`` are the settings the user gave explicitly ({field: value}). One that a resume
    may not change and that differs from the run's config is refused, naming both values.
    """
    from .runs import RunConfig

    cfg = RunConfig.load(os.path.join(run_dir, "config.json"))
    have = asdict(cfg)
    clash = [(k, have[k], v) for k, v in overrides.items()
             if k not in RESUMABLE and k in have and not _same(k, have[k], v)]
    if clash:
        given = ", ".join(f"{_option(k)} {plain(v)}" for k, _, v in clash)
        saved = ", ".join(f"{k} = {plain(h)}" for k, h, _ in clash)
        raise ValueError(
            f"cannot resume {run_dir} with {given}: the run was trained with {saved}. A resumed "
            f"run keeps its settings (only {', '.join(map(_option, RESUMABLE))} may change); "
            f"train a new run with --out for different ones")
    for k, v in overrides.items():
        if k in RESUMABLE:
            setattr(cfg, k, v)
    return cfg


def resume_position(run_dir, cfg) -> dict:
    """Where the run's checkpoint stands ({"epoch", "batch", "step", "samples"}), checked
    against ``cfg``: fewer epochs than were done is refused; a run with nothing left to do
    raises :class:`RunFinished` saying why."""
    from .serialization import load_checkpoint

    path = os.path.join(run_dir, "checkpoint.npz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"cannot resume {run_dir}: no checkpoint.npz there (the run "
                                f"stopped before its first evaluation); start it again with "
                                f"--overwrite")
    ck = load_checkpoint(path)
    st = ck["state"]
    pos = {k: int(st[k]) for k in ("epoch", "batch", "step", "samples")}
    begun = pos["epoch"] + (1 if pos["batch"] else 0)       # epochs done or under way
    if cfg.epochs < begun:
        raise ValueError(f"cannot resume {run_dir} with --epochs {cfg.epochs}: it has already "
                         f"trained {pos['epoch']} epoch(s)" +
                         (f" and part of epoch {begun}" if pos["batch"] else "") +
                         "; give at least that many")
    stop = ck["extensions"].get("early_stopping") or {}
    how = f"gpunn train --resume {run_dir} --epochs N (N > {cfg.epochs})"
    if pos["epoch"] >= cfg.epochs:
        raise RunFinished(f"{run_dir} has finished all {cfg.epochs} epochs; nothing to do. To "
                          f"train more: {how}")
    if cfg.max_steps and pos["step"] >= cfg.max_steps:
        raise RunFinished(f"{run_dir} stopped at its --max-steps {cfg.max_steps}; nothing to do. "
                          f"To train more: gpunn train --resume {run_dir} --max-steps N")
    if cfg.patience is not None and int(stop.get("bad_evals", 0)) > cfg.patience:
        raise RunFinished(f"{run_dir} stopped early (no {stop.get('monitor')} improvement in "
                          f"{cfg.patience + 1} evaluations); nothing to do")
    return pos


def load_resumes(path) -> list:
    """The resume history recorded in a run's config.json ([] for none or an older run)."""
    try:
        with open(path) as f:
            return list(json.load(f).get("resumes", []))
    except (FileNotFoundError, ValueError):
        return []


def save_config(cfg, path, *, resumed_from: dict | None = None, old=None) -> None:
    """Write ``cfg`` to config.json keeping its resume history; with ``resumed_from`` (a
    checkpoint position) add an entry: when, from where, and each setting that changed."""
    from . import __version__
    from .runs import _write_json

    resumes = load_resumes(path)
    if resumed_from is not None:
        changed = {}
        if old is not None:
            a, b = asdict(old), asdict(cfg)
            changed = {k: [a[k], b[k]] for k in RESUMABLE if k != "progress" and a[k] != b[k]}
        resumes.append({"date": time.strftime("%Y-%m-%d %H:%M:%S"), "from": resumed_from,
                        "changed": changed})
    doc = {**asdict(cfg), "gpunn_version": __version__}
    if resumes:
        doc["resumes"] = resumes
    _write_json(path, doc)


# -- failed writes ------------------------------------------------------------------------------
@contextlib.contextmanager
def writes(intact):
    """Turn a failed write inside the block into a one-line RunWriteError naming the file and
    ``intact`` (a string, or a callable giving it at the time: what is still good on disk)."""
    from .train.extensions import write_error

    try:
        yield
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        raise write_error(e, e.filename or "a run file", intact() if callable(intact)
                          else intact) from e


# -- plain values for reports -------------------------------------------------------------------
def plain(v) -> str:
    """A setting as a reader writes it: yes/no, "-" for none, 5000 for 5000.0, 0.05 for 0.05."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if v is None:
        return "-"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(plain(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}: {plain(x)}" for k, x in v.items())
    return str(v)
