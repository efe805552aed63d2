"""Extensions of the training loop: small classes that subscribe to the Trainer's events.

Each has a ``name``; those with state (``state_dict()`` / ``load_state_dict()``) are saved in
the checkpoint under that name, so a resumed run continues each of them where it stopped.
Order matters and is the order :func:`gpunn.train.fit` builds them in: the run lock first
(nothing is read or written before it is held), the schedule steps before the epoch-end
evaluation (whose row records the new lr), the non-finite guard checks the weights before
anything judges or saves them, early stopping judges a row before the best weights and the
checkpoint save it, and the log prints it last.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time

import numpy as np

from ..backend import get_array_module, synchronize, to_device
from ..errors import NonFiniteError, RunLockedError, RunWriteError
from ..finite import last_nonfinite
from ..parameter import FlatBuffer, buffers_of
from ..serialization import load_checkpoint, save_checkpoint
from .loop import TrainState, evaluate

__all__ = ["Extension", "LRSchedule", "Evaluation", "EarlyStopping", "Checkpoint", "EvalLog",
           "ProgressBar", "RunLock", "NonFiniteGuard", "BestWeights", "CHECKPOINT", "BEST",
           "LOCK", "write_error"]

CHECKPOINT = "checkpoint.npz"
BEST = "best.npz"
LOCK = ".gpunn.lock"


def write_error(e: OSError, path, intact: str) -> RunWriteError:
    """A failed write as one line: the file, the OS's reason, and what is still intact."""
    why = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
           errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
           errno.EROFS: "read-only file system"}.get(e.errno, e.strerror or str(e))
    return RunWriteError(f"could not write {path}: {why}; {intact}", errno=e.errno,
                         filename=str(path))


class Extension:
    """Base class (optional: the trainer only looks for ``on_<event>`` methods)."""
    name = ""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class LRSchedule(Extension):
    """Steps an LR scheduler (gpunn.optim.schedules) at the end of every epoch.

    On resume the checkpoint gives the schedule's position (epoch, base lr) and the scheduler
    given here its *plan* (T_max, step_size, gamma...): a run resumed with more epochs passes a
    scheduler planned for the new total, so the schedule stretches to it from where it stopped
    (a cosine that reached 0 at the old end goes on at the stretched curve's lr, not at 0), and
    the change is logged.
    """
    name = "lr_schedule"

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.plan = dict(scheduler.hyper)
        self.replanned = None               # (saved plan, new plan, old lr) after a re-plan

    def on_epoch_end(self, trainer):
        self.scheduler.step()

    def state_dict(self):
        return self.scheduler.state_dict()

    def load_state_dict(self, state):
        self.scheduler.load_state_dict(state)
        saved = dict(self.scheduler.hyper)
        if saved != self.plan:
            old_lr = self.scheduler.get_last_lr()
            self.scheduler.load_state_dict({**state, **self.plan})
            self.replanned = (saved, dict(self.plan), old_lr)

    def on_resume(self, trainer):
        if self.replanned is None:
            return
        saved, plan, old_lr = self.replanned
        change = ", ".join(f"{k} {saved[k]} -> {plan[k]}" for k in plan if saved[k] != plan[k])
        trainer.log(f"lr schedule re-planned for {trainer.epochs} epochs: "
                    f"{type(self.scheduler).__name__} {change}; epoch "
                    f"{trainer.state.epoch + 1} trains at lr {self.scheduler.get_last_lr():.6g} "
                    f"(the old plan had {old_lr:.6g})")


def _new_history():
    keys = ["samples", "epoch", "step", "seconds", "lr",
            "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"]
    return {k: [] for k in keys}


class Evaluation(Extension):
    """Evaluates every ``every`` training samples (0: only at epoch ends), at every epoch end,
    and once more when ``max_steps`` ends the run inside an epoch (unless a periodic
    evaluation just measured that step); appends a row to
    ``history`` and emits ``evaluate(row)``.

    The evaluation sets move to the device once: a fixed random ``train_fraction`` of the
    training set (from ``seed``), and the validation and test splits when present.
    """
    name = "evaluation"

    def __init__(self, data, loss_fn, device, *, every: int, train_fraction: float,
                 batch_size: int | None, seed: int):
        self.loss_fn, self.every = loss_fn, int(every)
        self.batch_size = None if batch_size is None else int(batch_size)   # None: eval_batch()
        x_train, y_train = data.x_train, data.y_train
        self.n_train = len(x_train)
        rng = np.random.default_rng(seed + 1)
        n_sub = max(1, int(round(train_fraction * self.n_train)))
        sub = np.sort(rng.choice(self.n_train, size=min(n_sub, self.n_train), replace=False))
        self.sets = {"train": self.place(x_train[sub], y_train[sub], device)}
        for split in ("val", "test"):
            xs, ys = getattr(data, f"x_{split}", None), getattr(data, f"y_{split}", None)
            if xs is not None and len(xs):
                self.sets[split] = self.place(xs, ys, device)
        self.device = device
        self.history = _new_history()

    # the two places a data-parallel evaluation differs (gpunn/distributed/extensions.py):
    # which samples this process keeps, and how their metrics become the set's
    def place(self, x, y, device):
        """The (x, y) of one evaluation split that this process evaluates, on ``device``."""
        return to_device(x, device), to_device(y, device)

    def measure(self, model, xs, ys):
        """(loss, accuracy) of ``model`` on a placed split."""
        loss, acc, _ = evaluate(model, self.loss_fn, xs, ys, self.batch_size)
        return loss, acc

    def monitor_for(self, wanted: str) -> str:
        """``wanted`` if its split is evaluated, else the training split's metric of the same
        kind. Never the test split: it is reported, and never used to choose anything."""
        split, kind = wanted.split("_", 1)
        if split == "test":
            raise ValueError(f"cannot monitor {wanted}: the test split is never used to choose")
        return wanted if split in self.sets else f"train_{kind}"

    def on_step_end(self, trainer):
        st = trainer.state
        if self.every and st.batch != trainer.steps_per_epoch and st.since_eval >= self.every:
            st.since_eval = 0
            self.run(trainer)

    def on_epoch_end(self, trainer):
        self.run(trainer)

    def on_finish(self, trainer):
        st = trainer.state
        steps = self.history["step"]
        # a periodic evaluation may have just measured this very step: not twice
        if trainer.max_steps_reached and st.batch != 0 and not (steps and steps[-1] == st.step):
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
                loss, acc = self.measure(model, *self.sets[split])
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
    restores all of them when the run starts, then emits ``resume``.

    A write that fails (a full disk, permissions, a read-only file system) raises
    :class:`~gpunn.errors.RunWriteError` naming the file; the previous checkpoint is untouched
    (the write goes to a temporary file renamed over it). :meth:`note` says what is on disk.
    """
    name = "checkpoint"

    def __init__(self, out_dir, resume: bool = False):
        self.path = os.path.join(out_dir, CHECKPOINT) if out_dir else None
        self.resume = resume
        self.saved = None                   # (step, epoch) of the checkpoint now on disk

    def note(self) -> str:
        if not self.path:
            return "no checkpoint is written by this run"
        if self.saved is None:
            return "no checkpoint had been written yet"
        step, epoch = self.saved
        return (f"the last checkpoint, {self.path} (step {step}, epoch {epoch:.2f}), is intact "
                f"and loadable")

    def on_start(self, trainer):
        if not self.resume:
            return
        ck = self.read()
        trainer.step.model.load_state_dict(ck["model"])
        trainer.step.optimizer.load_state_dict(ck["optimizer"])
        trainer.state = TrainState.from_dict(ck["state"])
        for ext in trainer.extensions:
            if getattr(ext, "name", "") in ck["extensions"]:
                ext.load_state_dict(ck["extensions"][ext.name])
        st = trainer.state
        self.saved = (st.step, st.samples / max(len(trainer.loader.x), 1))
        trainer.log(f"resuming from {self.path}: epoch {st.epoch + 1}, batch {st.batch}, "
                    f"{st.samples} samples seen")
        trainer.emit("resume")

    def read(self) -> dict:
        """The checkpoint to resume from (a data-parallel run reads it on rank 0 alone)."""
        if not self.path or not os.path.exists(self.path):
            raise FileNotFoundError(f"cannot resume: no checkpoint at {self.path}")
        return load_checkpoint(self.path)

    def save(self, trainer):
        if not self.path:
            return
        trainer.state.seconds = trainer.elapsed()
        states = {e.name: e.state_dict() for e in trainer.extensions
                  if getattr(e, "name", "") and hasattr(e, "state_dict")}
        try:
            save_checkpoint(self.path, trainer.step.model.state_dict(), trainer.state.to_dict(),
                            trainer.step.optimizer.state_dict(), states)
        except OSError as e:
            intact = self.note().replace("the last checkpoint", "the previous checkpoint")
            raise write_error(e, self.path, intact) from e
        st = trainer.state
        self.saved = (st.step, st.samples / max(len(trainer.loader.x), 1))

    def on_evaluate(self, trainer, row):
        self.save(trainer)

    def on_interrupt(self, trainer):
        if self.path:
            self.save(trainer)
            trainer.log(f"interrupted: checkpoint written to {self.path}; continue with --resume")

    def state_dict(self):
        return {}


class BestWeights(Extension):
    """Keeps the best weights seen in ``out_dir/best.npz`` (as ``Sequential.save`` writes them),
    judged by the early-stopping extension's monitor, a validation metric: written at each
    evaluation that improves on the best, atomically, after the non-finite guard checked it."""
    name = "best_weights"

    def __init__(self, out_dir):
        self.path = os.path.join(out_dir, BEST)
        self.saved_samples = None

    def on_evaluate(self, trainer, row):
        stopping = trainer.extension("early_stopping")
        if stopping is None:
            raise RuntimeError("BestWeights needs the early_stopping extension (it judges)")
        if stopping.best_samples == row["samples"] and self.saved_samples != row["samples"]:
            try:
                trainer.step.model.save(self.path)
            except OSError as e:
                raise write_error(e, self.path, "the previous best.npz is intact; " +
                                  trainer.checkpoint_note()) from e
            self.saved_samples = row["samples"]

    def state_dict(self):
        return {"saved_samples": self.saved_samples}

    def load_state_dict(self, state):
        self.saved_samples = state.get("saved_samples")


class RunLock(Extension):
    """Holds ``out_dir/.gpunn.lock`` while a run writes its directory, so a second writer is
    refused (:class:`~gpunn.errors.RunLockedError`, naming the holder's pid and host).

    The lock is an ``flock`` on the file, which the kernel drops when its process dies however
    it dies: a lock left by a killed run is stale, detected (the file still names the dead
    process) and taken over, with a note in :attr:`stale`. The file holds the holder's pid,
    host, start time and command line. Re-entrant: :meth:`acquire` by the holder nests, and
    the lock goes at the matching :meth:`release` (``on_start`` / ``on_close`` do that pair,
    so a lock taken before the run by its owner is kept through it).
    """
    name = ""

    def __init__(self, out_dir):
        self.dir = os.fspath(out_dir)
        self.path = os.path.join(self.dir, LOCK)
        self._fd = None
        self._depth = 0
        self.stale = None                   # what a stale lock's file said, when one was taken

    @staticmethod
    def _describe(info: dict) -> str:
        if not info:
            return "a process that left no details"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
        return f"pid {info.get('pid')} on {info.get('host')}, since {since}"

    @staticmethod
    def _read(fd) -> dict:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 65536)
        try:
            return json.loads(raw.decode()) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError):
            return {"pid": "?", "host": "?"}

    def acquire(self) -> "RunLock":
        if self._fd is not None:
            self._depth += 1
            return self
        import fcntl
        os.makedirs(self.dir, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                held = e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
                info = self._read(fd) if held else {}
                os.close(fd)
                if held:
                    raise RunLockedError(
                        f"{self.dir} is being written by another gpunn process "
                        f"({self._describe(info)}); wait for it to end or stop it, or use "
                        f"another --out") from None
                raise
            # the holder before us may have removed the file between our open and our lock:
            # then we hold a lock on a file nobody else sees, and must start again
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = self._read(fd)
        if info:
            self.stale = info
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "argv": sys.argv}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(me) + "\n").encode())
        self._fd, self._depth = fd, 1
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        try:
            os.unlink(self.path)            # while still locked: a waiter re-checks the inode
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

    def on_start(self, trainer):
        self.acquire()
        if self.stale and self._depth == 1:
            trainer.log(f"note: took over a stale lock on {self.dir} left by "
                        f"{self._describe(self.stale)}, which is no longer running")

    def on_close(self, trainer):
        self.release()


def _grads_of(owner):
    """The gradient array of a flat buffer or of a loose Parameter, as it is now."""
    return owner.grads if isinstance(owner, FlatBuffer) else owner.grad


def _last_nonfinite(xp, grads):
    """(any NaN/inf, its last index or -1) in 1-D ``grads``, as device scalars: on the CPU
    by gpunn.finite's dot-product test; on a GPU by a search that does not wait for the
    device and uses the same arrays each step (a captured graph replays it)."""
    if xp is np:
        with np.errstate(over="ignore", invalid="ignore"):
            last = last_nonfinite(grads)
        return np.asarray(last >= 0), np.asarray(last, dtype=np.int64)
    ok_rev = xp.isfinite(grads[::-1])      # reversed: backward order, last layer first
    j = ok_rev.argmin()
    hit = ~ok_rev[j]
    return hit, xp.where(hit, grads.size - 1 - j, -1)


class NonFiniteGuard(Extension):
    """Stops training when the loss or a gradient is NaN or infinite, with
    :class:`~gpunn.errors.NonFiniteError` naming the step, the loss, the first parameter the
    backward pass reached with a non-finite gradient (its layer), and the lr.

    A hook at ``TrainStep.after_backward`` records, on the device and without waiting for it,
    the first step whose loss or gradients are not finite and where. The host looks at that
    record every ``every`` steps (1 on the CPU, where it costs nothing; 50 on a GPU, where
    looking waits for the device), and always before an evaluation row is judged or saved, on
    Ctrl-C and at the end: so no checkpoint or best.npz ever holds non-finite weights, and the
    last checkpoint stays loadable.
    """
    name = ""
    graph_safe = True               # its hook only works on the device, in place

    def __init__(self, every: int | None = None):
        self.every = every
        self.trainer = None
        self._state = None

    def on_start(self, trainer):
        self.trainer = trainer
        model = trainer.step.model
        named = model.named_parameters()
        params = [p for _, p in named]
        names = {id(p): n for n, p in named}
        flats = buffers_of(params)
        # (owner, members): the gradient is read from its owner at each step, since ranks
        # that share one model (--procs) re-point the buffers at shared memory on their
        # first step
        if flats:                           # one gradient buffer per (device, dtype)
            self.groups = [(f, [(off, p.size, names[id(p)], p)
                                for p, off in zip(f.params, f.offsets)]) for f in flats]
        else:
            self.groups = [(p, [(0, p.size, names[id(p)], p)]) for p in params]
        xp = get_array_module(_grads_of(self.groups[0][0])) if self.groups else np
        if self.every is None:
            self.every = 1 if xp is np else 50
        self._xp = xp
        self._state = None
        trainer.step.after_backward.append(self._record)

    def _record(self, step):
        xp = self._xp
        if self._state is None:             # first step of this process: one small upload
            self._state = {"count": xp.asarray(self.trainer.state.step, dtype=np.int64),
                           "step": xp.asarray(-1, dtype=np.int64),
                           "loss": xp.zeros((), dtype=np.float64),
                           "pos": [xp.asarray(-1, dtype=np.int64) for _ in self.groups]}
        s = self._state
        s["count"] += 1
        first = s["step"] < 0
        loss = xp.asarray(step.loss, dtype=np.float64)
        bad = ~xp.isfinite(loss)
        positions = []
        shared = getattr(step, "nonfinite_positions", lambda: None)()
        slots = step.optimizer.slots if shared is not None else []
        for owner, _ in self.groups:
            j = next((j for j, slot in enumerate(slots) if slot is owner), None)
            if j is not None:               # ranks sharing one model: the reduction looked
                hit = xp.asarray(shared[j] >= 0)
                pos = xp.asarray(shared[j], dtype=np.int64)
            else:                           # the last non-finite index: backward order
                hit, pos = _last_nonfinite(xp, _grads_of(owner))
            bad = bad | hit
            positions.append(pos)
        newly = first & bad
        # written in place: the record's arrays stay the same, so a CUDA graph that captured
        # this hook with the step (gpunn.train.GraphedTrainStep) keeps updating them
        s["step"][...] = xp.where(newly, s["count"], s["step"])
        s["loss"][...] = xp.where(newly, loss, s["loss"])
        for p, old in zip(positions, s["pos"]):
            old[...] = xp.where(newly, p, old)

    # ranks sharing one model: each holds only its own segment of the averaged gradient,
    # and _record reads the reduction's findings instead (DistributedTrainStep)
    _record.segment_aware = True

    def check(self, trainer) -> None:
        """Raise NonFiniteError if a step so far had a non-finite loss or gradient."""
        if self._state is None:
            return
        step = int(self._state["step"])
        if step < 0:
            return
        spe = max(trainer.steps_per_epoch, 1)
        epoch, batch = (step - 1) // spe + 1, (step - 1) % spe + 1
        loss = float(self._state["loss"])
        where = f"at step {step} (epoch {epoch}, batch {batch} of {spe})"
        what = f"the loss is {loss}" if not np.isfinite(loss) else f"the loss is finite ({loss:.4g})"
        culprit = "every gradient is finite"
        for (_, members), pos in reversed(list(zip(self.groups, self._state["pos"]))):
            pos = int(pos)
            if pos < 0:
                continue
            for off, size, pname, p in reversed(members):
                if off <= pos < off + size:
                    layer = getattr(p, "_layer", None)
                    lname = pname.rsplit(".", 1)[0] if "." in pname else ""
                    desc = f"layer {lname} {layer!r}" if layer is not None else "a parameter"
                    culprit = (f"the first non-finite gradient the backward pass reached is "
                               f"{pname!r}, of {desc}")
                    break
            break
        lr = float(trainer.step.optimizer.lr)
        raise NonFiniteError(
            f"non-finite values {where}: {what}; {culprit}. Training stopped; "
            f"{trainer.checkpoint_note()}. Try a smaller learning rate (now {lr:g})")

    def on_step_end(self, trainer):
        if trainer.state.step % self.every == 0:
            self.check(trainer)

    def on_evaluate(self, trainer, row):
        self.check(trainer)

    def on_interrupt(self, trainer):
        self.check(trainer)

    def on_finish(self, trainer):
        self.check(trainer)

    def on_close(self, trainer):
        if self._record in trainer.step.after_backward:
            trainer.step.after_backward.remove(self._record)


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


def _clock(seconds) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class ProgressBar(Extension):
    """A one-line progress bar on stderr (a terminal), redrawn at most 5 times a second:
    epoch, batches, samples/s, the epoch's running loss and accuracy, and the time left in
    the epoch and in the run (at this epoch's step rate; evaluations add a little). Other
    output (the evaluation lines) ends the bar's line first and so starts on its own.

    Reading the running loss syncs the device, so it is read every ``every`` steps only.
    """
    name = "progress"

    def __init__(self, enabled: bool = True, stream=None, every: int = 20, width: int = 24,
                 interval: float = 0.2):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.every, self.width, self.interval = every, width, interval
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
        if now - self._last >= self.interval or st.batch == trainer.steps_per_epoch:
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
        line += f"  ETA {_clock(left)}"
        run_total = trainer.epochs * total
        if trainer.max_steps:
            run_total = min(run_total, trainer.max_steps)
        if run_total > total and steps_rate > 0:
            line += f" (run {_clock((run_total - st.step) / steps_rate)})"
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

    def on_close(self, trainer):          # also after a fault: its message starts a new line
        self.clear()
