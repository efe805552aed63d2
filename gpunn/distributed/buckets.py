"""Gradient all-reduce in buckets that start during the backward pass (PyTorch DDP's overlap).

Without it a data-parallel step computes every gradient, then all-reduces the flat gradient
buffer, then updates: the all-reduce adds its whole time to the step. The backward pass
finishes the gradients from the last layer to the first, and a model's parameters are packed
in layer order (gpunn/parameter.py), so the gradient buffer fills from its end towards its
start. Cut into buckets of about ``bucket_bytes`` (whole parameters each, the first one
small so that the first all-reduce starts early), each bucket can be all-reduced as soon as
the layers holding its parameters have run their backward, while the earlier layers are
still computing theirs: on a GPU the all-reduce runs on NCCL's own stream beside the compute
kernels; over MPI it is a non-blocking collective, nudged along between layers (MPICH moves
one only inside MPI calls). What is left of it when the backward pass ends is all the step
waits for.

Every rank must start the same all-reduces in the same order (MPI and NCCL match collectives
by order), so the order is fixed once from the buffer layout — from the end of each buffer to
its start, the last buffer first — and a bucket starts only after every bucket before it in
that order has: a model whose backward finishes its parameters in another order, or one that
does not report its layers (only :class:`~gpunn.Sequential` does), still gets the same
collectives, started later (at the latest when its backward pass has ended).

Each bucket is scaled by the rank's weight (n_r / N) before its all-reduce, so the sums are the
global batch's gradient exactly as in the one all-reduce of the whole buffer; the gaps between
parameters hold zeros and stay zero. With 2 ranks a sum does not depend on how the buffer is
cut, so the result is the unbucketed one bit for bit.
"""
from __future__ import annotations

from .comm import DONE

__all__ = ["GradientBuckets", "DEFAULT_BUCKET_MB", "FIRST_BUCKET_BYTES"]

DEFAULT_BUCKET_MB = 25.0            # PyTorch DDP's bucket_cap_mb
FIRST_BUCKET_BYTES = 1 << 20        # DDP's first bucket: 1 MiB, to start the first send early


class _Bucket:
    """A contiguous range [lo, hi) of one flat gradient buffer; ``waiting``: how many of its
    parameters still wait for their layer's backward."""

    __slots__ = ("flat", "lo", "hi", "params", "waiting", "handle")

    def __init__(self, flat, lo, hi, params):
        self.flat, self.lo, self.hi, self.params = flat, lo, hi, params
        self.waiting = len(params)
        self.handle = None

    @property
    def nbytes(self) -> int:
        return (self.hi - self.lo) * self.flat.dtype.itemsize

    def __repr__(self):
        return f"_Bucket({self.lo}:{self.hi} of {self.flat!r}, {len(self.params)} params)"


def plan_buckets(flats, bucket_bytes: float, first_bytes: float = FIRST_BUCKET_BYTES) -> list:
    """The buckets of ``flats`` (FlatBuffers) in the order they are all-reduced: the last
    buffer first, each from its end to its start, parameters whole; together they cover every
    element of every buffer exactly once (the alignment gaps included)."""
    buckets = []
    for flat in reversed(flats):
        itemsize = flat.dtype.itemsize
        hi, members = flat.total, []
        cap = min(first_bytes, bucket_bytes) if not buckets else bucket_bytes
        for i in reversed(range(len(flat.params))):
            members.append(flat.params[i])
            lo = flat.offsets[i] if i else 0
            if (hi - lo) * itemsize >= cap or i == 0:
                buckets.append(_Bucket(flat, lo, hi, members))
                hi, members, cap = lo, [], bucket_bytes
    return buckets


class GradientBuckets:
    """The all-reduce of ``flats``' gradients in buckets, started as the backward pass goes.

    Per step: :meth:`begin` (the rank's weight), :meth:`step_done` after each top-level
    layer's backward (``Sequential.backward``'s ``after_step``), :meth:`finish` when the
    backward pass has ended: it starts what has not started and waits for all.
    """

    def __init__(self, comm, flats, bucket_bytes: float, name: str = "the gradient all-reduce"):
        self.comm = comm
        self.buckets = plan_buckets(list(flats), bucket_bytes)
        self._bucket_of = {id(p): b for b in self.buckets for p in b.params}
        self._plan_key, self._finishes = None, {}
        self._plan_checked = False             # this step's layers checked against the plan
        self.name = name
        self.weight = 1.0
        self.started = 0                       # buckets started this step (they go in order)
        self.early = 0                         # of those, started before the backward ended

    def __len__(self):
        return len(self.buckets)

    def begin(self, weight: float, name: str | None = None) -> None:
        self.weight = float(weight)
        if name is not None:
            self.name = name
        self.started = self.early = 0
        self._plan_checked = False
        for b in self.buckets:
            b.waiting, b.handle = len(b.params), None

    # -- which parameters a layer's backward finishes -----------------------------------------
    def _plan(self, steps) -> dict:
        """id(step) -> the parameters whose gradients are final once that step's backward
        has run: a parameter used by several steps (weights shared between layers) is final
        after the earliest of them, which runs its backward last. The layers are checked
        against the plan once per step (at its first layer), not after every layer."""
        if self._plan_checked:
            return self._finishes
        self._plan_checked = True
        key = tuple(map(id, steps))
        if key != self._plan_key:
            from ..model import _layers_of
            last_user = {}
            for step in reversed(steps):                # backward order: the last one stays
                for layer in _layers_of(step):
                    for p in layer.parameters():
                        last_user[id(p)] = step
            finishes = {}
            for pid, step in last_user.items():
                if pid in self._bucket_of:
                    finishes.setdefault(id(step), []).append(pid)
            self._plan_key, self._finishes = key, finishes
        return self._finishes

    def step_done(self, step, steps) -> None:
        """``step`` (one of ``steps``, the model's top-level layers) has run its backward."""
        for pid in self._plan(steps).get(id(step), ()):
            self._bucket_of[pid].waiting -= 1
        self._start(ready_only=True)
        for b in self.buckets[:self.started]:          # let MPI move the started ones along
            if b.handle is not None and b.handle.test():
                b.handle = DONE

    def _start(self, ready_only: bool) -> None:
        while self.started < len(self.buckets):
            b = self.buckets[self.started]
            if ready_only and b.waiting > 0:
                return
            g = b.flat.grads[b.lo:b.hi]
            if self.weight != 1.0:
                g *= g.dtype.type(self.weight)
            name = self.name if len(self.buckets) == 1 else \
                f"{self.name}, bucket {self.started} of {len(self.buckets)}"
            b.handle = self.comm.iallreduce(g, "sum", name=name)
            self.started += 1
            if ready_only:
                self.early += 1

    def finish(self) -> None:
        """Start the buckets not yet started (in order) and wait for every one."""
        self._start(ready_only=False)
        for b in self.buckets:
            b.handle.wait()
            b.handle = None
