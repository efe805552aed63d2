"""Extensions of the training loop: small classes that subscribe to the Trainer's events.

Each has a ``name``; those with state (``state_dict()`` / ``load_state_dict()``) are saved in
the checkpoint under that name, so a resumed run continues each of them where it stopped.
Order matters and is the order :func:`gpunn.train.fit` builds them in: the schedule steps
before the epoch-end evaluation (whose row records the new lr), early stopping judges a row
before the checkpoint saves it, and the log prints it last.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from ..backend import synchronize, to_device
from ..serialization import load_checkpoint, save_checkpoint
from .loop import TrainState, evaluate

__all__ = ["Extension", "LRSchedule", "Evaluation", "EarlyStopping", "Checkpoint", "EvalLog",
           "ProgressBar", "CHECKPOINT"]

CHECKPOINT = "checkpoint.npz"


class Extension:
    """Base class (optional: the trainer only looks for ``on_<event>`` methods)."""
    name = ""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class LRSchedule(Extension):
    """Steps an LR scheduler (gpunn.optim.schedules) at the end of every epoch."""
    name = "lr_schedule"

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def on_epoch_end(self, trainer):
        self.scheduler.step()

    def state_dict(self):
        return self.scheduler.state_dict()

    def load_state_dict(self, state):
        self.scheduler.load_state_dict(state)


def _new_history():
    keys = ["samples", "epoch", "step", "seconds", "lr",
            "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"]
    return {k: [] for k in keys}


class Evaluation(Extension):
    """Evaluates every ``every`` training samples (0: only at epoch ends), at every epoch end,
    and once more when ``max_steps`` ends the run inside an epoch; appends a row to
    ``history`` and emits ``evaluate(row)``.

    The evaluation sets move to the device once: a fixed random ``train_fraction`` of the
    training set (from ``seed``), and the validation and test splits when present.
    """
    name = "evaluation"

    def __init__(self, data, loss_fn, device, *, every: int, train_fraction: float,
                 batch_size: int, seed: int):
        self.loss_fn, self.every, self.batch_size = loss_fn, int(every), int(batch_size)
        x_train, y_train = data.x_train, data.y_train
        self.n_train = len(x_train)
        rng = np.random.default_rng(seed + 1)
        n_sub = max(1, int(round(train_fraction * self.n_train)))
        sub = np.sort(rng.choice(self.n_train, size=min(n_sub, self.n_train), replace=False))
        self.sets = {"train": (to_device(x_train[sub], device), to_device(y_train[sub], device))}
        for split in ("val", "test"):
            xs, ys = getattr(data, f"x_{split}", None), getattr(data, f"y_{split}", None)
            if xs is not None and len(xs):
                self.sets[split] = (to_device(xs, device), to_device(ys, device))
        self.device = device
        self.history = _new_history()

    def monitor_for(self, wanted: str) -> str:
        """``wanted`` if its split is evaluated, else the nearest that is (val -> test -> train)."""
        if wanted.split("_")[0] in self.sets:
            return wanted
        return wanted.replace("val", "test") if "test" in self.sets else "train_acc"

    def on_step_end(self, trainer):
        st = trainer.state
        if self.every and st.batch != trainer.steps_per_epoch and st.since_eval >= self.every:
            st.since_eval = 0
            self.run(trainer)

    def on_epoch_end(self, trainer):
        self.run(trainer)

    def on_finish(self, trainer):
        if trainer.max_steps_reached and trainer.state.batch != 0:
            self.run(trainer)

    def run(self, trainer):
        synchronize(self.device)
        st = trainer.state
        row = {"samples": st.samples, "epoch": round(st.samples / self.n_train, 3),
               "step": st.step, "seconds": round(trainer.elapsed(), 3),
               "lr": float(trainer.step.optimizer.lr)}
        model = trainer.step.model
        for split in ("train", "val", "test"):
            if split in self.sets:
                xs, ys = self.sets[split]
                loss, acc, _ = evaluate(model, self.loss_fn, xs, ys, self.batch_size)
            else:
                loss = acc = None
            row[f"{split}_loss"], row[f"{split}_acc"] = loss, acc
        for k, v in row.items():
            self.history[k].append(v)
        trainer.emit("evaluate", row)

    def state_dict(self):
        return {"history": self.history}

    def load_state_dict(self, state):
        self.history = {k: list(v) for k, v in state["history"].items()}


class EarlyStopping(Extension):
    """Tracks the best value of ``monitor`` ("*_acc": higher is better, "*_loss": lower);
    with ``patience``, stops after that many evaluations without improvement and, with
    ``restore_best``, ends the run with the best weights seen."""
    name = "early_stopping"

    def __init__(self, monitor: str, patience: int | None = None, restore_best: bool = True):
        self.monitor, self.patience, self.restore_best = monitor, patience, restore_best
        self.best_value = self.best_samples = None
        self.bad_evals = 0
        self.best_state = None

    def _better(self, new) -> bool:
        if self.best_value is None:
            return True
        return new < self.best_value if self.monitor.endswith("loss") else new > self.best_value

    def on_evaluate(self, trainer, row):
        value = row[self.monitor]
        if self._better(value):
            self.best_value, self.best_samples, self.bad_evals = value, row["samples"], 0
            if self.patience is not None and self.restore_best:
                self.best_state = trainer.step.model.state_dict()
        else:
            self.bad_evals += 1
        if self.patience is not None and self.bad_evals > self.patience:
            trainer.should_stop = trainer.stopped_early = True

    def on_finish(self, trainer):
        if self.best_state is not None and self.patience is not None and self.restore_best:
            trainer.step.model.load_state_dict(self.best_state)

    def best(self) -> dict:
        return {"metric": self.monitor, "value": self.best_value, "samples": self.best_samples}

    def state_dict(self):
        return {"monitor": self.monitor, "best_value": self.best_value,
                "best_samples": self.best_samples, "bad_evals": self.bad_evals,
                "best_state": self.best_state}

    def load_state_dict(self, state):
        self.best_value, self.best_samples = state["best_value"], state["best_samples"]
        self.bad_evals, self.best_state = int(state["bad_evals"]), state["best_state"]


class Checkpoint(Extension):
    """Writes ``out_dir/checkpoint.npz`` atomically after every evaluation and on Ctrl-C
    (model, optimizer, train state, and every named extension's state); with ``resume``,
    restores all of them when the run starts."""
    name = "checkpoint"

    def __init__(self, out_dir, resume: bool = False):
        self.path = os.path.join(out_dir, CHECKPOINT) if out_dir else None
        self.resume = resume

    def on_start(self, trainer):
        if not self.resume:
            return
        if not self.path or not os.path.exists(self.path):
            raise FileNotFoundError(f"cannot resume: no checkpoint at {self.path}")
        ck = load_checkpoint(self.path)
        trainer.step.model.load_state_dict(ck["model"])
        trainer.step.optimizer.load_state_dict(ck["optimizer"])
        trainer.state = TrainState.from_dict(ck["state"])
        for ext in trainer.extensions:
            if getattr(ext, "name", "") in ck["extensions"]:
                ext.load_state_dict(ck["extensions"][ext.name])
        st = trainer.state
        trainer.log(f"resuming from {self.path}: epoch {st.epoch + 1}, batch {st.batch}, "
                    f"{st.samples} samples seen")

    def save(self, trainer):
        if not self.path:
            return
        trainer.state.seconds = trainer.elapsed()
        states = {e.name: e.state_dict() for e in trainer.extensions
                  if getattr(e, "name", "") and hasattr(e, "state_dict")}
        save_checkpoint(self.path, trainer.step.model.state_dict(), trainer.state.to_dict(),
                        trainer.step.optimizer.state_dict(), states)

    def on_evaluate(self, trainer, row):
        self.save(trainer)

    def on_interrupt(self, trainer):
        if self.path:
            self.save(trainer)
            trainer.log(f"interrupted: checkpoint written to {self.path}; continue with --resume")

    def state_dict(self):
        return {}


class EvalLog(Extension):
    """One line per evaluation through ``trainer.log``."""

    def on_evaluate(self, trainer, row):
        bar = trainer.extension("progress")
        if bar is not None:
            bar.clear()
        parts = [f"{k}={row[k]:.4f}" for k in ("train_loss", "train_acc", "val_loss", "val_acc",
                                               "test_loss", "test_acc") if row[k] is not None]
        trainer.log(f"[eval] epoch {row['epoch']:.2f} ({row['samples']} samples): " +
                    " ".join(parts))


class ProgressBar(Extension):
    """A one-line progress bar on stderr (a terminal), redrawn at most 5 times a second:
    epoch, batches, samples/s, the epoch's running loss and accuracy, and the time left.

    Reading the running loss syncs the device, so it is read every ``every`` steps only.
    """
    name = "progress"

    def __init__(self, enabled: bool = True, stream=None, every: int = 20, width: int = 24):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.every, self.width = every, width
        self._shown = False
        self._t0 = self._n0 = self._b0 = None
        self._metrics = None
        self._last = 0.0

    def _begin(self, trainer):
        self._t0, self._n0, self._b0 = time.perf_counter(), trainer.state.samples, trainer.state.batch
        self._metrics = None

    def on_start(self, trainer):
        self._begin(trainer)

    def on_step_end(self, trainer):
        if not self.enabled:
            return
        st = trainer.state
        if self._t0 is None:
            self._begin(trainer)
        if st.step % self.every == 0 or st.batch == trainer.steps_per_epoch:
            self._metrics = trainer.step.metrics()
        now = time.perf_counter()
        if now - self._last >= 0.2 or st.batch == trainer.steps_per_epoch:
            self._last = now
            self._draw(trainer, now)

    def _draw(self, trainer, now):
        st, total = trainer.state, trainer.steps_per_epoch
        done = st.batch
        rate = (st.samples - self._n0) / max(now - self._t0, 1e-9)
        steps_rate = (done - self._b0) / max(now - self._t0, 1e-9)
        left = (total - done) / steps_rate if steps_rate > 0 else 0.0
        fill = int(self.width * done / max(total, 1))
        line = (f"epoch {st.epoch + 1}/{trainer.epochs} "
                f"[{'#' * fill}{'.' * (self.width - fill)}] {done}/{total}  {rate:,.0f} samples/s")
        if self._metrics is not None:
            line += f"  loss {self._metrics[0]:.4f}  acc {self._metrics[1]:.4f}"
        line += f"  ETA {int(left) // 60}:{int(left) % 60:02d}"
        if self.stream.isatty():
            self.stream.write("\r" + line + "\033[K")
            self._shown = True
        elif done == total:
            self.stream.write(line + "\n")
        self.stream.flush()

    def clear(self):
        """End the bar's line so that other output starts on a fresh one."""
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False

    def on_epoch_end(self, trainer):
        self.clear()
        self._begin(trainer)

    def on_interrupt(self, trainer):
        self.clear()

    def on_finish(self, trainer):
        self.clear()
