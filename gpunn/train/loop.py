"""The training loop: epochs and batches, a position that round-trips through checkpoints, and
events for the extensions.

:class:`Trainer` only iterates: it runs the :class:`~gpunn.train.step.TrainStep` on each batch,
counts steps and samples in a :class:`TrainState`, and emits events to its extensions, in the
order they were given:

    start                     after construction (a checkpoint extension resumes here)
    step_end                  after every step
    epoch_end                 after the last step of an epoch, the counters already advanced
    resume                    emitted by the checkpoint extension once a resume restored
                              every extension's state (the schedule says how it re-planned)
    evaluate(row)             emitted by the evaluation extension with each history row
    interrupt                 Ctrl-C: the step in flight finished; KeyboardInterrupt follows
    finish                    the loop is over (all epochs, early stop or max_steps)
    close                     always last, also when the run failed (locks are released here)

Everything else — evaluation, checkpoints, early stopping and best weights, the LR schedule,
the progress bar, the run lock, the non-finite guard — is an extension
(gpunn/train/extensions.py) with its own state in the checkpoint, so a run stopped anywhere
resumes exactly: the batch order is a function of (seed, epoch), dropout masks of (seed,
step), and every piece of state is saved.

A fault stops the run with a :class:`gpunn.errors.RunError` whose message says what happened
and whether the last checkpoint is intact (it is: a checkpoint is only written after a check
that the weights are finite, and atomically): non-finite values (:class:`NonFiniteError`, from
the guard), an allocation that failed on the GPU or the host (:class:`OutOfMemoryError`, from
the loop), a failed write (:class:`RunWriteError`, from the checkpoint).

:func:`fit` puts the usual run together.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from ..backend import get_array_module, resolve_device, to_numpy
from ..errors import OutOfMemoryError
from .step import TrainStep

__all__ = ["TrainConfig", "TrainState", "TrainResult", "Trainer", "fit", "evaluate"]


@dataclass
class TrainConfig:
    epochs: int = 5
    batch_size: int = 100
    eval_every: int = 20000          # training samples between evaluations (0: epoch ends only)
    train_eval_fraction: float = 0.2  # share of the training set evaluated for train metrics
    eval_batch_size: int | None = None  # None: eval_batch() (1000 on a GPU; on the CPU
    #                                   as many as keep the largest activation under 24 MiB)
    seed: int = 0
    patience: int | None = None      # evaluations without improvement before stopping
    monitor: str = "val_acc"         # "val_acc" | "val_loss" ("train_*" when no validation);
    #                                  never the test split: it is for reporting, not choosing
    restore_best: bool = True        # with patience: end with the best weights seen
    progress: bool = True
    max_steps: int | None = None     # stop after this many optimizer steps (tests, smoke runs)
    augment: object = None           # a gpunn.data.RandomAugment for the training batches
    save_best: bool = False          # with out_dir: keep the best weights in out_dir/best.npz
    check_finite: bool = True        # stop on a NaN/inf loss or gradient (NonFiniteGuard)
    global_batch: int | None = None  # data-parallel: samples per step over all ranks
    #                                  (default batch_size x ranks; gpunn/distributed)
    graph: bool = False              # replay the step from a CUDA graph (GraphedTrainStep;
    #                                  CUDA only; off until proven on a GPU: docs/GRAPHS.md)
    bucket_mb: float = 25.0          # data-parallel: gradient buckets all-reduced during the
    #                                  backward pass (MiB; 0: one all-reduce after it)


@dataclass
class TrainState:
    """Where a run is: the part of the checkpoint that belongs to the loop itself."""
    epoch: int = 0          # completed epochs
    batch: int = 0          # batches done in the current epoch
    step: int = 0           # optimizer steps in all
    samples: int = 0        # training samples seen in all
    since_eval: int = 0     # samples since the last periodic evaluation
    seconds: float = 0.0    # training time before this process (resume) plus this one's

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(d))
        if missing:
            raise ValueError(f"train state is missing {', '.join(missing)}")
        return cls(**{k: d[k] for k in names})


@dataclass
class TrainResult:
    history: dict
    best: dict = field(default_factory=dict)   # {"metric": ..., "value": ..., "samples": ...}
    stopped_early: bool = False
    interrupted: bool = False
    seconds: float = 0.0
    steps: int = 0


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


class Trainer:
    """Runs ``step`` over ``loader`` for ``epochs`` epochs and tells ``extensions`` about it.

    An extension is any object with some of the methods ``on_start(trainer)``,
    ``on_step_end(trainer)``, ``on_epoch_end(trainer)``, ``on_evaluate(trainer, row)``,
    ``on_interrupt(trainer)``, ``on_finish(trainer)``; with a ``name`` and
    ``state_dict()``/``load_state_dict()`` its state goes into checkpoints. An extension stops
    the run by setting ``trainer.should_stop = True`` (and ``trainer.stopped_early`` when that
    is why).
    """

    def __init__(self, step: TrainStep, loader, epochs: int, *, extensions=(),
                 max_steps: int | None = None, log=None):
        self.step, self.loader, self.epochs = step, loader, int(epochs)
        self.extensions = list(extensions)
        self.max_steps = max_steps
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.state = TrainState()
        self.steps_per_epoch = len(loader)
        self.should_stop = self.stopped_early = self.interrupted = False
        self.max_steps_reached = False
        self.t_start = time.perf_counter()

    def extension(self, name: str):
        """The extension called ``name``, or None."""
        return next((e for e in self.extensions if getattr(e, "name", None) == name), None)

    def emit(self, event: str, *args) -> None:
        for ext in self.extensions:
            handler = getattr(ext, f"on_{event}", None)
            if handler is not None:
                handler(self, *args)

    def elapsed(self) -> float:
        """Training seconds so far, including the time before a resume."""
        return time.perf_counter() - self.t_start

    def checkpoint_note(self) -> str:
        """What a fault leaves on disk: the last checkpoint, intact, or that none was written."""
        ck = self.extension("checkpoint")
        return ck.note() if ck is not None else "no checkpoint is written by this run"

    def run(self) -> None:
        try:
            self._run()
        except MemoryError as e:
            if isinstance(e, OutOfMemoryError):
                raise
            raise OutOfMemoryError(out_of_memory_message(self, e)) from e
        finally:
            self.emit("close")

    def _run(self) -> None:
        self.emit("start")                 # may restore self.state (resume)
        st = self.state
        self._check_position()
        self.t_start = time.perf_counter() - st.seconds
        xp = get_array_module(self.loader.x)
        stop = False
        with _StopFlag() as flag:
            while st.epoch < self.epochs and not self.should_stop:
                self.step.reset_metrics(xp)
                for xb, yb in self.loader.batches(st.epoch, start=st.batch):
                    self.step(xb, yb)
                    n = self.step.samples_in(xb)        # all ranks' (data-parallel)
                    st.batch += 1
                    st.step += 1
                    st.samples += n
                    st.since_eval += n
                    self.emit("step_end")
                    # all ranks or none. A Ctrl-C that lands while the ranks agree (rank 0
                    # waits there for the others) stays requested for the next step's
                    # agreement: writing the answer back into the flag would lose it
                    stop = self.step.agree_stop(flag.requested)
                    if st.batch == self.steps_per_epoch or self.should_stop or stop \
                            or self._out_of_steps():
                        break
                if stop:
                    st.seconds = self.elapsed()
                    self.interrupted = True
                    self.emit("interrupt")
                    raise KeyboardInterrupt
                if self.should_stop:
                    break
                if st.batch == self.steps_per_epoch:
                    st.epoch += 1
                    st.batch = 0
                    st.since_eval = 0
                    self.emit("epoch_end")
                    if self.should_stop:
                        break
                if self._out_of_steps():
                    self.max_steps_reached = True
                    break
        self.emit("finish")

    def _check_position(self) -> None:
        """A resumed position must fit this loader: the same samples per step as the run had
        (else batch k of the epoch would be other samples, or no batch at all)."""
        st, n = self.state, len(self.loader.x)
        per_step = getattr(self.loader, "global_batch", None) or \
            getattr(self.loader, "batch_size", None)
        if not per_step:
            return
        per_epoch = min(self.steps_per_epoch * per_step, n)        # drop_last drops the rest
        if st.samples != st.epoch * per_epoch + min(st.batch * per_step, n) or \
                st.batch > self.steps_per_epoch:
            raise ValueError(
                f"cannot resume: the checkpoint is at batch {st.batch} of epoch {st.epoch + 1} "
                f"with {st.samples} samples seen, which does not fit {per_step} samples per "
                f"step ({self.steps_per_epoch} steps per epoch of {n}): resume with the "
                f"run's batch size (over all ranks)")

    def _out_of_steps(self) -> bool:
        return bool(self.max_steps) and self.state.step >= self.max_steps


# -- faults -------------------------------------------------------------------------------------
def _gib(n) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def memory_info(device) -> tuple:
    """(free bytes, total bytes, note) of ``device`` (a GPU, or the host's RAM); None where
    unknown. On a GPU the note names the bytes CuPy's pool holds and its limit, if set."""
    if getattr(device, "is_cuda", False):
        try:
            import cupy
            with cupy.cuda.Device(device.index):
                free, total = cupy.cuda.runtime.memGetInfo()
                pool = cupy.get_default_memory_pool()
                note = f"CuPy's pool holds {_gib(pool.total_bytes())}"
                if pool.get_limit():
                    note += f", its limit is {_gib(pool.get_limit())}"
            return int(free), int(total), note
        except Exception:
            return None, None, ""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page, ""
    except (ValueError, OSError, AttributeError):
        return None, None, ""


def out_of_memory_message(trainer, e) -> str:
    """One line for an allocation that failed inside the loop: where, the batch size, the bytes
    asked for (CuPy's and NumPy's errors carry them) and free, what to try, what is intact."""
    device = getattr(trainer.loader, "device", None)
    on_gpu = getattr(device, "is_cuda", False) or type(e).__module__.startswith("cupy")
    asked = getattr(e, "_size", None) or getattr(e, "_total_size", None)
    free, total, note = memory_info(device)
    st, bs = trainer.state, getattr(trainer.loader, "batch_size", 0)
    what = f"out of {'GPU' if on_gpu else 'host'} memory on {device}"
    parts = [f"{what} at step {st.step + 1} (epoch {st.epoch + 1}, batch size {bs})"]
    if asked:
        parts.append(f"asked for {_gib(asked)}")
    if free is not None:
        parts.append(f"{_gib(free)} free of {_gib(total)}" + (f" ({note})" if note else ""))
    smaller = max(1, bs // 2)
    hint = (f"try a smaller --batch-size (e.g. {smaller}) or a smaller model"
            + (", or free the GPU from other processes (nvidia-smi)" if on_gpu else ""))
    return f"{'; '.join(parts)}. {hint.capitalize()}; {trainer.checkpoint_note()}"


# -- evaluation ---------------------------------------------------------------------------------
GPU_EVAL_BATCH = 1000
# On the CPU an evaluation batch whose activations are large is slower, not faster: every
# array above glibc's mmap threshold (at most 32 MiB) is mapped fresh and its pages faulted
# in and zeroed, then unmapped, batch after batch. cnn-bn on 10k images, two threads:
# batch 1000 (100 MB activations) 1.7-2.1 s, 1.5-2.4 s of it system time; 250 (25 MB)
# 1.06-1.09 s; 100 1.14 s. (Since gpunn keeps freed large arrays for reuse, gpunn/threads.py,
# those faults are gone and 250 against 1000 measured even, 1.11-1.25 s against 1.00-1.84:
# the cap now keeps peak memory down at no cost.)
CPU_EVAL_BYTES = 24 << 20
_CPU_EVAL_FALLBACK = 250       # a model whose activation sizes cannot be worked out


def eval_batch(model, x) -> int:
    """The evaluation batch for ``model`` on ``x``'s device: GPU_EVAL_BATCH on a GPU; on the
    CPU the most samples (16 to 1000) whose largest per-layer activation fits CPU_EVAL_BYTES."""
    if get_array_module(x) is not np:
        return GPU_EVAL_BATCH
    shape, largest = tuple(x.shape[1:]), int(np.prod(x.shape[1:], dtype=np.int64))
    try:
        for layer in model.layers:
            shape = layer.output_shape(shape)
            largest = max(largest, int(np.prod(shape, dtype=np.int64)))
    except Exception:                     # noqa: BLE001 (not a Sequential, or no shapes)
        return _CPU_EVAL_FALLBACK
    return int(min(GPU_EVAL_BATCH, max(16, CPU_EVAL_BYTES // max(1, largest * x.itemsize))))


def evaluate(model, loss_fn, x, y, batch_size: int | None = None):
    """Mean loss and accuracy over (x, y) in evaluation mode; returns (loss, acc, predictions).

    ``batch_size``: None picks :func:`eval_batch`. Sums stay on the device; one transfer at
    the end.
    """
    xp = get_array_module(x)
    batch_size = eval_batch(model, x) if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ValueError(f"evaluate: batch_size must be a positive integer, got {batch_size}")
    total_loss = xp.zeros((), dtype=np.float64)
    correct = xp.zeros((), dtype=np.int64)
    preds = []
    n = len(x)
    for i in range(0, n, batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        logits = model.forward(xb, train=False)
        if hasattr(model, "release_caches"):    # no backward follows: the next batch's
            model.release_caches()              # forward need not run beside this one's
        total_loss += loss_fn.forward(logits, yb) * (len(xb) if loss_fn.reduction == "mean" else 1)
        p = logits.argmax(axis=1)
        correct += (p == yb).sum()
        preds.append(p)
    p_all = to_numpy(xp.concatenate(preds)) if preds else np.zeros(0, np.int64)
    return float(total_loss) / max(n, 1), float(correct) / max(n, 1), p_all


# -- the usual run ------------------------------------------------------------------------------
def _several_ranks():
    """The world communicator when gpunn.distributed was initialised with several ranks."""
    from ..distributed import world
    comm = world()
    return comm if comm.size > 1 else None


def fit(model, loss_fn, optimizer, data, config: TrainConfig, *, out_dir=None, device="auto",
        scheduler=None, resume: bool = False, log=None, extensions=()) -> TrainResult:
    """Train ``model`` on ``data`` (an object with x_train/y_train, optional x_val/y_val and
    x_test/y_test NumPy arrays) and return the history.

    The model must already be on ``device`` (the optimizer may have been built before the
    move). With ``out_dir`` a checkpoint is written at every evaluation; ``resume=True``
    continues from ``out_dir/checkpoint.npz`` exactly where it stopped. ``extensions`` are
    added after the standard ones (evaluation, early stopping, checkpoint, log, progress).
    """
    from ..data import DataLoader
    from . import extensions as ext

    dev = resolve_device(device)
    cfg = config
    if cfg.batch_size <= 0 or cfg.epochs <= 0:
        raise ValueError(f"fit: epochs and batch_size must be positive, got {cfg.epochs}, "
                         f"{cfg.batch_size}")
    if not cfg.monitor.startswith(("val_", "train_")) or \
            not cfg.monitor.endswith(("_acc", "_loss")):
        raise ValueError(f"fit: monitor must be val_acc, val_loss, train_acc or train_loss, got "
                         f"{cfg.monitor!r} (the test split is for reporting, never for choosing)")
    if cfg.save_best and not out_dir:
        raise ValueError("fit: save_best needs an out_dir to write best.npz into")
    if len(data.x_train) == 0:
        raise ValueError("fit: the training set is empty")
    comm = _several_ranks()       # gpunn.distributed.init() with more than one rank, or None
    if comm is None:
        loader = DataLoader(data.x_train, data.y_train, batch_size=cfg.global_batch or
                            cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=False,
                            device=dev, augment=cfg.augment)
        evaluation = ext.Evaluation(data, loss_fn, dev, every=cfg.eval_every,
                                    train_fraction=cfg.train_eval_fraction,
                                    batch_size=cfg.eval_batch_size, seed=cfg.seed)
    else:
        from .. import distributed as dist
        from ..distributed.extensions import ShardedEvaluation
        loader = dist.ShardedLoader(data.x_train, data.y_train, cfg.batch_size, comm=comm,
                                    global_batch=cfg.global_batch, seed=cfg.seed, device=dev,
                                    augment=cfg.augment)
        evaluation = ShardedEvaluation(data, loss_fn, dev, comm=comm, every=cfg.eval_every,
                                       train_fraction=cfg.train_eval_fraction,
                                       batch_size=cfg.eval_batch_size, seed=cfg.seed)
        log = log if comm.rank == 0 else (lambda msg: None)
    monitor = evaluation.monitor_for(cfg.monitor)
    stopping = ext.EarlyStopping(monitor, patience=cfg.patience, restore_best=cfg.restore_best)
    # a run lock or progress bar given in ``extensions`` takes the standard one's place
    given = [e for e in extensions if isinstance(e, (ext.RunLock, ext.ProgressBar))]
    locks = [e for e in given if isinstance(e, ext.RunLock)]
    if out_dir and not locks:
        locks = [ext.RunLock(out_dir)]
    bars = [e for e in given if isinstance(e, ext.ProgressBar)] or [
        ext.ProgressBar(enabled=cfg.progress)]
    exts = [*locks, *bars,
            ext.LRSchedule(scheduler) if scheduler is not None else None, evaluation,
            ext.NonFiniteGuard() if cfg.check_finite else None, stopping,
            ext.BestWeights(out_dir) if cfg.save_best else None,
            ext.Checkpoint(out_dir, resume=resume) if out_dir or resume else None,
            ext.EvalLog(), *[e for e in extensions if not any(e is g for g in given)]]
    exts = [e for e in exts if e is not None]
    if cfg.graph and comm is not None:
        raise ValueError("fit: graph=True and several ranks: the data-parallel all-reduce "
                         "cannot be captured in a CUDA graph yet; train one or the other")
    if comm is None:
        if cfg.graph:
            from .graph import GraphedTrainStep
            step = GraphedTrainStep(model, loss_fn, optimizer)
        else:
            step = TrainStep(model, loss_fn, optimizer)
    else:                         # writers on rank 0, rank 0's state everywhere at the start
        from ..distributed.extensions import distribute
        step = dist.DistributedTrainStep(model, loss_fn, optimizer, comm=comm, loader=loader,
                                         bucket_mb=cfg.bucket_mb)
        exts = distribute(exts, comm)
    trainer = Trainer(step, loader, cfg.epochs, extensions=exts, max_steps=cfg.max_steps,
                      log=log)
    if monitor != cfg.monitor:
        trainer.log(f"no validation split: the best weights are judged on {monitor} "
                    f"(the test split is never used to choose)")
    # the guard reports a NaN/inf with its step and layer: NumPy's overflow warnings would
    # only print the same news earlier and less clearly
    quiet = np.errstate(over="ignore", invalid="ignore", divide="ignore") if cfg.check_finite \
        else contextlib.nullcontext()
    with quiet:
        trainer.run()
    return TrainResult(history=evaluation.history, best=stopping.best(),
                       stopped_early=trainer.stopped_early, seconds=trainer.elapsed(),
                       steps=trainer.state.step)
