"""The training loop's extensions on many ranks: what :func:`gpunn.train.fit` changes when
``gpunn.distributed`` has more than one rank.

- :class:`ShardedEvaluation`: each rank keeps and evaluates its piece of every evaluation
  split; one all-reduce gives every rank the same history row (so early stopping and the
  schedule decide the same everywhere).
- :class:`RankZeroCheckpoint`: rank 0 alone reads and writes ``checkpoint.npz``; a resume
  sends what it read to every rank, and a failed write is raised on every rank (nobody is
  left waiting in a collective for a rank that has stopped).
- :class:`StartEqual`: after a resume (or at the start) every rank takes rank 0's
  parameters, buffers, dropout seeds and optimizer state.
- :func:`on_main`: an extension that only writes or prints (progress bar, eval log, best
  weights, metrics.csv, TensorBoard, the run lock) runs on rank 0 alone.
"""
from __future__ import annotations

from ..backend import to_device
from ..train.extensions import Checkpoint, Evaluation, Extension
from .data import shard
from .evaluate import evaluate_shard
from .run import agree
from .step import _world, broadcast_model, broadcast_optimizer

__all__ = ["ShardedEvaluation", "RankZeroCheckpoint", "StartEqual", "OnMain", "on_main",
           "distribute", "MAIN_ONLY"]


class ShardedEvaluation(Evaluation):
    """:class:`~gpunn.train.extensions.Evaluation` with the work split over the ranks."""

    def __init__(self, data, loss_fn, device, *, comm=None, **kw):
        self.comm = _world(comm)
        super().__init__(data, loss_fn, device, **kw)

    def place(self, x, y, device):
        lo, hi = shard(len(x), self.comm.size, self.comm.rank)
        return to_device(x[lo:hi], device), to_device(y[lo:hi], device)

    def measure(self, model, xs, ys):
        loss, acc, _ = evaluate_shard(model, self.loss_fn, xs, ys, self.batch_size,
                                      comm=self.comm)
        return loss, acc

    def run(self, trainer):
        self.comm.synchronize()            # a GPU collective still running: with a deadline
        super().run(trainer)


class RankZeroCheckpoint(Checkpoint):
    """:class:`~gpunn.train.extensions.Checkpoint` read and written by rank 0 only."""

    def __init__(self, out_dir, resume: bool = False, *, comm=None):
        super().__init__(out_dir, resume)
        self.comm = _world(comm)

    @classmethod
    def like(cls, ck: Checkpoint, comm) -> "RankZeroCheckpoint":
        new = cls(None, ck.resume, comm=comm)
        new.path, new.saved = ck.path, ck.saved
        return new

    def read(self) -> dict:
        return agree(self.comm, super().read)

    def save(self, trainer):
        if not self.path:
            return
        super_save = super().save
        agree(self.comm, lambda: super_save(trainer))
        if self.comm.rank != 0:                     # what is on disk, for note()
            st = trainer.state
            self.saved = (st.step, st.samples / max(len(trainer.loader.x), 1))


class StartEqual(Extension):
    """At the start (after a resume restored rank 0's state), every rank takes rank 0's
    model and optimizer state."""

    def __init__(self, comm=None):
        self.comm = _world(comm)

    def on_start(self, trainer):
        broadcast_model(trainer.step.model, self.comm)
        broadcast_optimizer(trainer.step.optimizer, self.comm)


class OnMain:
    """``ext`` with its events delivered on rank 0 only; everything else (name, state_dict,
    attributes) is ``ext``'s, so the checkpoint and ``trainer.extension(name)`` see it."""

    def __init__(self, ext, comm=None):
        self.ext, self.comm = ext, _world(comm)

    @property
    def name(self):
        return getattr(self.ext, "name", "")

    def __getattr__(self, attr):
        if attr.startswith("on_") and self.comm.rank != 0:
            raise AttributeError(attr)              # the trainer skips a missing handler
        return getattr(self.ext, attr)

    def __repr__(self):
        return f"OnMain({self.ext!r})"


def on_main(ext, comm=None):
    """Deliver ``ext``'s events on rank 0 only (a world of one: ``ext`` unchanged)."""
    comm = _world(comm)
    return ext if comm.size == 1 or isinstance(ext, OnMain) else OnMain(ext, comm)


def _main_only_types():
    from ..train import extensions as ext
    from ..train import logs
    return (ext.RunLock, ext.ProgressBar, ext.EvalLog, ext.BestWeights, logs.MetricsCSV,
            logs.TensorBoardLog)


MAIN_ONLY = "RunLock, ProgressBar, EvalLog, BestWeights, MetricsCSV, TensorBoardLog"


def distribute(extensions, comm=None) -> list:
    """The extension list of a data-parallel run: writers on rank 0 only, the checkpoint
    read and written by rank 0, and :class:`StartEqual` right after it (or first)."""
    comm = _world(comm)
    main_only = _main_only_types()
    out, placed = [], False
    for e in extensions:
        if isinstance(e, Checkpoint) and not isinstance(e, RankZeroCheckpoint):
            e = RankZeroCheckpoint.like(e, comm)
        if isinstance(e, main_only):
            e = on_main(e, comm)
        out.append(e)
        if isinstance(e, Checkpoint):
            out.append(StartEqual(comm))
            placed = True
    if not placed:
        out.insert(0, StartEqual(comm))
    return out
