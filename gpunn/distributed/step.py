"""The data-parallel training step, and the broadcasts that make every replica start equal.

:class:`DistributedTrainStep` is a :class:`~gpunn.train.step.TrainStep` whose first
``after_backward`` hook averages the gradients over all ranks. The flat gradient buffer (one
per (device, dtype)) is all-reduced in buckets of about ``bucket_mb`` MiB started during the
backward pass, as each bucket's layers finish (gpunn/distributed/buckets.py: the all-reduce
overlaps the rest of the backward pass, as PyTorch DDP's does), and the hook waits for what is
left; ``bucket_mb=0`` makes it one all-reduce per buffer after the backward pass. Every
rank then applies the same update to the same weights, so the replicas never drift.

The average is the gradient of the *global* batch. With a mean-reduced loss each rank's
gradient is the mean over its own n_r samples, and the mean over all N = sum(n_r) samples is

    g = sum_r (n_r / N) * g_r

so each rank scales its buffer by n_r / N and the all-reduce sums: a short last batch split
unevenly (or a rank with no sample at all, which contributes zeros) is weighted exactly. With
a sum-reduced loss the weight is 1. Batch-norm layers keep per-rank statistics
(:class:`~gpunn.layers.BatchNorm2d`), as PyTorch DDP does, unless they are
:class:`~gpunn.layers.SyncBatchNorm`, which the step tells the same weight.
"""
from __future__ import annotations

import numpy as np

from ..model import Sequential
from ..parameter import FlatBuffer
from ..train.step import TrainStep
from .buckets import DEFAULT_BUCKET_MB, GradientBuckets

__all__ = ["DistributedTrainStep", "broadcast_model", "broadcast_optimizer", "sync_buffers",
           "set_rank"]


def _world(comm):
    from . import world
    return world() if comm is None else comm


def set_rank(model, rank: int) -> None:
    """Fold ``rank`` into every Dropout layer's mask stream (rank 0 keeps the single-process
    masks), so each replica drops different units, reproducibly."""
    from ..layers.dropout import Dropout
    for layer in model.walk():
        if isinstance(layer, Dropout):
            layer.rank = int(rank)


def _sync_bn_layers(model):
    from ..layers.norm import SyncBatchNorm
    return [layer for layer in model.walk() if isinstance(layer, SyncBatchNorm)]


class DistributedTrainStep(TrainStep):
    """``step(xb, yb, total=None)``: one data-parallel step on this rank's part of a batch.

    xb: (n_r, ...) this rank's inputs, yb: (n_r,) labels; ``total`` is the global batch
    (sum of n_r over the ranks). Without ``total`` the step asks ``loader.last_total`` (a
    :class:`~gpunn.distributed.ShardedLoader` knows it for free), and failing that all-reduces
    the count (one small collective more). ``samples`` is the global count of the last step.
    ``weight`` is n_r / total (mean loss) or 1 (sum loss). ``bucket_mb``: the size of the
    gradient buckets all-reduced while the backward pass goes on (default 25 MiB, PyTorch
    DDP's ``bucket_cap_mb``); 0 or None: one all-reduce after the backward pass. Ranks that
    share one model (``--procs``) reduce after the backward pass in any case.
    """

    def __init__(self, model, loss_fn, optimizer, *, comm=None, loader=None,
                 bucket_mb: float | None = DEFAULT_BUCKET_MB):
        super().__init__(model, loss_fn, optimizer)
        self.comm = _world(comm)
        self.loader = loader
        if bucket_mb is not None and not bucket_mb >= 0:
            raise ValueError(f"DistributedTrainStep: bucket_mb must be >= 0 (0: one all-reduce "
                             f"after the backward pass), got {bucket_mb}")
        self.bucket_mb = bucket_mb or 0
        self.buckets = None               # GradientBuckets, when the all-reduce overlaps
        self.weight = 1.0
        self.samples = 0
        self._calls = 0                   # steps by this object (names the collectives)
        self._shared = None               # SharedTraining (ranks on one machine, --procs)
        self._share_asked = False
        self.after_backward.append(self.average_gradients)
        set_rank(model, self.comm.rank)
        self._sync_bn = _sync_bn_layers(model)
        if self._sync_bn and loader is not None and hasattr(loader, "smallest_shard") \
                and self.comm.size > 1 and loader.smallest_shard() == 0:
            raise ValueError(
                f"DistributedTrainStep: a batch of {loader!r} leaves some rank without a "
                f"sample, and SyncBatchNorm needs every rank in every forward pass; use "
                f"drop_last=True or a training set size that leaves a last batch of at least "
                f"{self.comm.size} samples")

    def grad_buffers(self) -> list:
        """The arrays the optimizer updates from: its flat gradient buffers."""
        return [slot.grads for slot in self.optimizer.slots]

    def average_gradients(self, step=None) -> None:
        """The after_backward hook: scale by ``weight`` and sum over all ranks, per buffer."""
        if self.comm.size == 1:
            return
        name = f"the gradient all-reduce (step {self._calls} of this process)"
        if self._shared is not None:
            later = self._hooks_after_average()
            aware = [getattr(h, "segment_aware", False) for h in later]
            self._shared.reduce(self.weight, name, spread=not all(aware),
                                find_nonfinite=any(aware))
            return
        if self.buckets is not None:      # started during the backward pass: finish it
            self.buckets.finish()
            return
        for g in self.grad_buffers():
            if self.weight != 1.0:
                g *= g.dtype.type(self.weight)
            self.comm.allreduce(g, "sum", name=name)

    def _hooks_after_average(self) -> list:
        hooks = self.after_backward
        i = next((i for i, h in enumerate(hooks) if h == self.average_gradients), None)
        return [] if i is None else hooks[i + 1:]

    def nonfinite_positions(self):
        """Ranks sharing one model (``--procs``), inside a hook after the average that is
        ``segment_aware``: per optimizer slot (flat buffer), the last index whose averaged
        gradient is NaN or inf (-1: none), found by the reduction itself and the same on
        every rank. None anywhere else: the gradient buffers hold the whole average then.

        Why: such ranks hold only their own segment of the average (gpunn/distributed/
        shm.py); a hook without ``segment_aware = True`` makes every rank receive all of it
        instead, as after an all-reduce, at the cost of one more write of the gradients."""
        return None if self._shared is None else self._shared.nonfinite

    def update(self) -> None:
        """The optimizer's step: split between the ranks when they share the model."""
        if self._shared is not None:
            self._shared.update(f"the shared update (step {self._calls} of this process)")
        else:
            self.optimizer.step()

    def _share(self, rows: int = 0) -> None:
        """On the first step (after any resume and the broadcasts): ranks that share memory
        (gpunn train --procs) train one shared copy of the model; checked every step after,
        since a replaced buffer (model.to(), a new optimizer state) would silently split it."""
        if not self._share_asked:
            self._share_asked = True
            if self.comm.size > 1:
                self._shared = self.comm.shared_training(self.model, self.optimizer, rows)
                if self._shared is None and self.bucket_mb:
                    self._overlap()
        elif self._shared is not None and not self._shared.intact():
            raise RuntimeError(
                "DistributedTrainStep: the model's parameters, gradients or the optimizer's "
                "state were replaced after the ranks started sharing them (model.to(), "
                "load_state_dict with new buffers, a new optimizer): build the step again")

    def _overlap(self) -> None:
        """All-reduce the gradients in buckets started during the backward pass
        (gpunn/distributed/buckets.py), when the optimizer's gradients are flat buffers and
        the model reports its layers' backward (a Sequential); else one all-reduce after it."""
        slots = self.optimizer.slots
        if isinstance(self.model, Sequential) and slots \
                and all(isinstance(s, FlatBuffer) for s in slots):
            self.buckets = GradientBuckets(self.comm, slots, self.bucket_mb * 2 ** 20)
            self.after_layer = self.buckets.step_done

    def _total(self, n: int) -> int:
        if self.comm.size == 1:
            return n
        last = getattr(self.loader, "last_total", None) if self.loader is not None else None
        if last is not None:
            return int(last)
        return int(self.comm.allreduce(np.array([n], dtype=np.int64), "sum")[0])

    def __call__(self, xb, yb, total: int | None = None):
        n = len(xb)
        self._calls += 1
        total = self._total(n) if total is None else int(total)
        if total <= 0 or n > total:
            raise ValueError(f"DistributedTrainStep: this rank has {n} samples of a global "
                             f"batch of {total}")
        mean = getattr(self.loss_fn, "reduction", "mean") == "mean"
        self.weight = n / total if mean else 1.0
        for bn in self._sync_bn:
            bn.grad_weight = self.weight
        self._share(n)
        if self._shared is not None:
            self._shared.begin(self.weight)
        if self.buckets is not None:
            self.buckets.begin(self.weight, f"the gradient all-reduce (step {self._calls} of "
                                            f"this process)")
        if n == 0:
            loss = self._sit_out()
        else:
            loss = super().__call__(xb, yb)
        self.samples = total
        return loss

    def _sit_out(self):
        """A rank without samples this step (a last batch smaller than the world): it adds
        zeros to the all-reduce and applies the same update as everyone."""
        from ..backend import get_array_module
        self.optimizer.zero_grad()
        g = self.grad_buffers()[0]
        self.loss = get_array_module(g).zeros((), dtype=g.dtype)   # what hooks may read
        for hook in self.after_backward:
            hook(self)
        self.update()
        return None

    def samples_in(self, xb) -> int:
        """Every rank's samples of the global batch just taken (the loop counts these)."""
        return self.samples

    def agree_stop(self, requested: bool) -> bool:
        """True on every rank when any rank was asked to stop (Ctrl-C reaches the ranks at
        slightly different moments: without agreeing, one would stop and write the checkpoint
        while another waited in the next step's all-reduce). One small host all-reduce."""
        if self.comm.size == 1:
            return bool(requested)
        flag = np.array([1 if requested else 0], dtype=np.int64)
        return bool(self.comm.allreduce(flag, "max", name="the stop check")[0])

    def metrics(self) -> tuple:
        """(mean loss, accuracy) of *this rank's* samples since ``reset_metrics``."""
        self.comm.synchronize()
        return super().metrics()


# -- broadcasts from rank 0 -------------------------------------------------------------------
def _flats_and_loose(model):
    params = model.parameters()
    flats = list({id(p.flat): p.flat for p in params if p.flat is not None}.values())
    return flats, [p for p in params if p.flat is None]


def sync_buffers(model, comm=None, root: int = 0) -> None:
    """Every layer buffer (batch-norm running statistics) from ``root``: the per-rank
    statistics of plain batch-norm differ between ranks, and rank 0's are the model's (they
    are what it saves), as PyTorch DDP's broadcast_buffers makes them."""
    comm = _world(comm)
    if comm.size == 1:
        return
    for layer in model.walk():
        for k in sorted(layer.buffers):
            comm.broadcast(layer.buffers[k], root)


def broadcast_model(model, comm=None, root: int = 0) -> None:
    """Parameters (one broadcast per flat buffer), buffers and host state (dropout seeds and
    counters) from ``root`` to every rank, in place."""
    comm = _world(comm)
    if comm.size == 1:
        return
    flats, loose = _flats_and_loose(model)
    shapes = comm.allgather_object([(f.size, str(f.dtype)) for f in flats] +
                                   [(p.size, str(p.dtype)) for p in loose])
    if any(s != shapes[0] for s in shapes):
        bad = next(r for r, s in enumerate(shapes) if s != shapes[0])
        raise ValueError(f"broadcast_model: rank {bad}'s model has parameters {shapes[bad]}, "
                         f"rank 0's {shapes[0]} (every rank must build the same model)")
    for f in flats:
        comm.broadcast(f.values, root)
    for p in loose:
        comm.broadcast(p.data, root)
    sync_buffers(model, comm, root)
    layers = list(model.walk())
    host = comm.broadcast_object([dict(layer.host_state) for layer in layers], root)
    for layer, state in zip(layers, host):
        layer.host_state.update(state)


def broadcast_optimizer(optimizer, comm=None, root: int = 0) -> None:
    """Step count, hyper-parameters and state buffers (momentum, Adam's m and v) from
    ``root``, in place."""
    comm = _world(comm)
    if comm.size == 1:
        return
    meta = comm.allgather_object((type(optimizer).__name__, sorted(optimizer.state),
                                  len(optimizer.slots)))
    if any(m != meta[root] for m in meta):
        bad = next(r for r, m in enumerate(meta) if m != meta[root])
        raise ValueError(f"broadcast_optimizer: rank {bad} has {meta[bad]}, rank {root} "
                         f"{meta[root]} (every rank must build the same optimizer)")
    t, hyper = comm.broadcast_object((optimizer.t, dict(optimizer.hyper)), root)
    optimizer.t, optimizer.hyper = int(t), hyper
    for j in range(len(optimizer.slots)):
        state = optimizer._state_of(j)        # on the parameters' device, as step() wants
        for b in sorted(state):
            comm.broadcast(state[b], root)
