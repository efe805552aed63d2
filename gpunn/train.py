"""The training loop: epochs, periodic evaluation, history, early stopping, checkpoints, resume.

A run directory holds ``checkpoint.npz`` (weights, optimizer state, best weights, history and
the exact position in the data stream), rewritten atomically at every evaluation, so a run
stopped anywhere resumes exactly: the batch order is a function of (seed, epoch) and dropout
masks of (seed, step), so resuming replays the same stream. Ctrl-C finishes the current step,
writes a checkpoint and raises ``KeyboardInterrupt``.
"""
from __future__ import annotations

import io
import os
import signal
import time
from dataclasses import dataclass, field

import click
import numpy as np

from .backend import get_array_module, resolve_device, synchronize, to_device, to_numpy
from .serialization import atomic_savez, load_npz

__all__ = ["TrainConfig", "fit", "evaluate", "predict", "load_checkpoint"]

CHECKPOINT = "checkpoint.npz"


@dataclass
class TrainConfig:
    epochs: int = 5
    batch_size: int = 100
    eval_every: int = 20000          # training samples between evaluations (0: epoch ends only)
    train_eval_fraction: float = 0.2  # share of the training set evaluated for train metrics
    eval_batch_size: int = 1000
    seed: int = 0
    patience: int | None = None      # evaluations without improvement before stopping
    monitor: str = "val_acc"         # "val_acc" | "val_loss" (| "test_*" when no validation)
    restore_best: bool = True        # with patience: end with the best weights seen
    progress: bool = True
    max_steps: int | None = None     # stop after this many optimizer steps (tests, smoke runs)


@dataclass
class TrainResult:
    history: dict
    best: dict = field(default_factory=dict)   # {"metric": ..., "value": ..., "samples": ...}
    stopped_early: bool = False
    interrupted: bool = False
    seconds: float = 0.0
    steps: int = 0


def _new_history():
    keys = ["samples", "epoch", "step", "seconds", "lr",
            "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"]
    return {k: [] for k in keys}


# -- evaluation ---------------------------------------------------------------------------------
def predict(model, x, batch_size: int = 1000):
    """Logits for ``x`` in evaluation mode, batch by batch, on x's device."""
    xp = get_array_module(x)
    outs = [model.forward(x[i:i + batch_size], train=False) for i in range(0, len(x), batch_size)]
    return xp.concatenate(outs) if outs else xp.zeros((0,))


def evaluate(model, loss_fn, x, y, batch_size: int = 1000):
    """Mean loss and accuracy over (x, y) in evaluation mode; returns (loss, acc, predictions).

    Sums stay on the device; one transfer at the end.
    """
    xp = get_array_module(x)
    total_loss = xp.zeros((), dtype=np.float64)
    correct = xp.zeros((), dtype=np.int64)
    preds = []
    n = len(x)
    for i in range(0, n, batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        logits = model.forward(xb, train=False)
        total_loss += loss_fn.forward(logits, yb) * (len(xb) if loss_fn.reduction == "mean" else 1)
        p = logits.argmax(axis=1)
        correct += (p == yb).sum()
        preds.append(p)
    p_all = to_numpy(xp.concatenate(preds)) if preds else np.zeros(0, np.int64)
    return float(total_loss) / max(n, 1), float(correct) / max(n, 1), p_all


# -- checkpoints --------------------------------------------------------------------------------
def _flatten(prefix, obj, arrays):
    """Turn nested dicts/lists of arrays and scalars into (json skeleton, flat arrays)."""
    if isinstance(obj, dict):
        return {"__dict__": {str(k): _flatten(f"{prefix}/{k}", v, arrays) for k, v in obj.items()}}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_flatten(f"{prefix}/{i}", v, arrays) for i, v in enumerate(obj)]}
    if hasattr(obj, "shape") and hasattr(obj, "dtype") and getattr(obj, "ndim", 0) > 0:
        arrays[prefix] = to_numpy(obj)
        return {"__array__": prefix}
    if isinstance(obj, (np.generic,)) or (hasattr(obj, "shape") and getattr(obj, "ndim", 1) == 0):
        obj = to_numpy(obj).item()
    return {"__value__": obj}


def _unflatten(skel, arrays):
    if "__dict__" in skel:
        return {k: _unflatten(v, arrays) for k, v in skel["__dict__"].items()}
    if "__list__" in skel:
        return [_unflatten(v, arrays) for v in skel["__list__"]]
    if "__array__" in skel:
        return arrays[skel["__array__"]]
    return skel["__value__"]


def save_checkpoint(path, model, optimizer, scheduler, best_state, meta: dict) -> None:
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    if best_state is not None:
        arrays.update({f"best/{k}": v for k, v in best_state.items()})
    opt_skel = _flatten("optim", optimizer.state_dict(), arrays)
    sched_skel = _flatten("sched", scheduler.state_dict(), arrays) if scheduler else None
    atomic_savez(path, arrays, meta={"checkpoint": {**meta, "optimizer": opt_skel,
                                                    "scheduler": sched_skel}})


def load_checkpoint(path):
    """Read a checkpoint: returns (model_state, best_state or None, optimizer_state,
    scheduler_state or None, meta)."""
    arrays, meta = load_npz(path, with_meta=True)
    if "checkpoint" not in meta:
        raise ValueError(f"{path}: not a gpunn training checkpoint")
    meta = meta["checkpoint"]
    model_state = {k[6:]: v for k, v in arrays.items() if k.startswith("model/")}
    best = {k[5:]: v for k, v in arrays.items() if k.startswith("best/")} or None
    opt = _unflatten(meta.pop("optimizer"), arrays)
    sched_skel = meta.pop("scheduler")
    sched = _unflatten(sched_skel, arrays) if sched_skel else None
    return model_state, best, opt, sched, meta


# -- the loop -----------------------------------------------------------------------------------
class _StopFlag:
    """SIGINT sets a flag checked between steps, so a checkpoint never sees half a step."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:          # not the main thread: leave Ctrl-C alone
            self._old = None
        return self

    def _handle(self, signum, frame):
        if self.requested:          # second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _better(metric, new, old):
    if old is None:
        return True
    return new < old if metric.endswith("loss") else new > old


def fit(model, loss_fn, optimizer, data, config: TrainConfig, *, out_dir=None, device="auto",
        scheduler=None, resume: bool = False, log=None) -> TrainResult:
    """Train ``model`` on ``data`` (an object with x_train/y_train, optional x_val/y_val and
    x_test/y_test NumPy arrays) and return the history.

    The model and optimizer must already be on ``device`` (build the optimizer after
    ``model.to(device)``). With ``out_dir`` a checkpoint is written at every evaluation;
    ``resume=True`` continues from ``out_dir/checkpoint.npz`` exactly where it stopped.
    """
    from .data import DataLoader

    dev = resolve_device(device)
    log = log or (lambda msg: click.echo(msg, err=True))
    cfg = config
    if cfg.batch_size <= 0 or cfg.epochs <= 0:
        raise ValueError(f"fit: epochs and batch_size must be positive, got {cfg.epochs}, "
                         f"{cfg.batch_size}")
    x_train, y_train = data.x_train, data.y_train
    n_train = len(x_train)
    if n_train == 0:
        raise ValueError("fit: the training set is empty")

    # evaluation sets live on the device once
    rng = np.random.default_rng(cfg.seed + 1)
    n_sub = max(1, int(round(cfg.train_eval_fraction * n_train)))
    sub = np.sort(rng.choice(n_train, size=min(n_sub, n_train), replace=False))
    eval_sets = {"train": (to_device(x_train[sub], dev), to_device(y_train[sub], dev))}
    for split in ("val", "test"):
        xs, ys = getattr(data, f"x_{split}", None), getattr(data, f"y_{split}", None)
        if xs is not None and len(xs):
            eval_sets[split] = (to_device(xs, dev), to_device(ys, dev))
    monitor = cfg.monitor
    if monitor.split("_")[0] not in eval_sets:
        monitor = monitor.replace("val", "test") if "test" in eval_sets else "train_acc"

    loader = DataLoader(x_train, y_train, batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed,
                        drop_last=False, device=dev)
    steps_per_epoch = len(loader)

    history = _new_history()
    state = {"epoch": 0, "batch": 0, "step": 0, "samples": 0, "since_eval": 0,
             "best_value": None, "best_samples": None, "bad_evals": 0, "seconds": 0.0}
    best_state = None
    ckpt_path = os.path.join(out_dir, CHECKPOINT) if out_dir else None
    if resume:
        if not ckpt_path or not os.path.exists(ckpt_path):
            raise FileNotFoundError(f"cannot resume: no checkpoint at {ckpt_path}")
        model_state, best_state, opt_state, sched_state, meta = load_checkpoint(ckpt_path)
        model.load_state_dict(model_state)
        optimizer.load_state_dict(opt_state)
        if scheduler is not None and sched_state is not None:
            scheduler.load_state_dict(sched_state)
        history, state = meta["history"], meta["state"]
        log(f"resuming from {ckpt_path}: epoch {state['epoch'] + 1}, batch {state['batch']}, "
            f"{state['samples']} samples seen")

    result = TrainResult(history=history)
    t_start = time.perf_counter() - state["seconds"]

    def run_eval():
        synchronize(dev)
        row = {"samples": state["samples"], "epoch": round(state["samples"] / n_train, 3),
               "step": state["step"],
               "seconds": round(time.perf_counter() - t_start, 3), "lr": float(optimizer.lr)}
        for split in ("train", "val", "test"):
            if split in eval_sets:
                xs, ys = eval_sets[split]
                l, a, _ = evaluate(model, loss_fn, xs, ys, cfg.eval_batch_size)
            else:
                l = a = None
            row[f"{split}_loss"], row[f"{split}_acc"] = l, a
        for k, v in row.items():
            history[k].append(v)
        value = row[monitor]
        improved = _better(monitor, value, state["best_value"])
        nonlocal best_state
        if improved:
            state["best_value"], state["best_samples"], state["bad_evals"] = value, state["samples"], 0
            if cfg.patience is not None and cfg.restore_best:
                best_state = model.state_dict()
        else:
            state["bad_evals"] += 1
        state["seconds"] = time.perf_counter() - t_start
        if ckpt_path:
            save_checkpoint(ckpt_path, model, optimizer, scheduler, best_state,
                            {"history": history, "state": state, "monitor": monitor})
        parts = [f"{k}={row[k]:.4f}" for k in ("train_loss", "train_acc", "val_loss", "val_acc",
                                                  "test_loss", "test_acc") if row[k] is not None]
        log(f"[eval] epoch {row['epoch']:.2f} ({state['samples']} samples): " + " ".join(parts))
        return cfg.patience is not None and state["bad_evals"] > cfg.patience

    stop = False
    with _StopFlag() as flag:
        while state["epoch"] < cfg.epochs and not stop:
            loader.epoch = state["epoch"]
            batches = iter(loader)
            for _ in range(state["batch"]):          # resuming mid-epoch: skip what was done
                next(batches)
            label = f"epoch {state['epoch'] + 1}/{cfg.epochs}"
            run = {"loss": None, "acc": None, "t0": time.perf_counter(), "n0": state["samples"]}
            xp = get_array_module(eval_sets["train"][0])
            loss_sum = xp.zeros((), dtype=np.float64)
            correct = xp.zeros((), dtype=np.int64)
            seen = 0

            def show(_):
                if run["loss"] is None:
                    return ""
                sps = (state["samples"] - run["n0"]) / max(time.perf_counter() - run["t0"], 1e-9)
                return f"{sps:,.0f} samples/s  loss {run['loss']:.4f}  acc {run['acc']:.4f}"

            remaining = (steps_per_epoch - state["batch"])
            with click.progressbar(length=remaining, label=label, item_show_func=show,
                                   file=None if cfg.progress else io.StringIO(),
                                   show_eta=True) as bar:
                for xb, yb in batches:
                    logits = model.forward(xb, train=True)
                    loss = loss_fn.forward(logits, yb)
                    model.backward(loss_fn.backward())
                    optimizer.step()
                    nb = len(xb)
                    loss_sum += loss * nb
                    correct += (logits.argmax(axis=1) == yb).sum()
                    seen += nb
                    state["batch"] += 1
                    state["step"] += 1
                    state["samples"] += nb
                    state["since_eval"] += nb
                    if state["step"] % 20 == 0 or state["batch"] == steps_per_epoch:
                        run["loss"], run["acc"] = float(loss_sum) / seen, float(correct) / seen
                    bar.update(1)
                    if state["batch"] == steps_per_epoch:
                        break                      # epoch end is evaluated below
                    if cfg.eval_every and state["since_eval"] >= cfg.eval_every:
                        state["since_eval"] = 0
                        if run_eval():
                            stop = result.stopped_early = True
                            break
                    if flag.requested or (cfg.max_steps and state["step"] >= cfg.max_steps):
                        break
            if flag.requested:
                state["seconds"] = time.perf_counter() - t_start
                if ckpt_path:
                    save_checkpoint(ckpt_path, model, optimizer, scheduler, best_state,
                                    {"history": history, "state": state, "monitor": monitor})
                    log(f"interrupted: checkpoint written to {ckpt_path}; continue with --resume")
                result.interrupted = True
                raise KeyboardInterrupt
            if stop:
                break
            if state["batch"] == steps_per_epoch:
                state["epoch"] += 1
                state["batch"] = 0
                state["since_eval"] = 0
                if scheduler is not None:
                    scheduler.step()
                if run_eval():
                    result.stopped_early = True
                    break
            if cfg.max_steps and state["step"] >= cfg.max_steps:
                if state["batch"] != 0:
                    run_eval()
                break

    if best_state is not None and cfg.patience is not None and cfg.restore_best:
        model.load_state_dict(best_state)     # early stopping keeps the best weights seen
    result.best = {"metric": monitor, "value": state["best_value"], "samples": state["best_samples"]}
    result.seconds = time.perf_counter() - t_start
    result.steps = state["step"]
    return result
