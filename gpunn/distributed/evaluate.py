"""Evaluation sharded across ranks: each rank evaluates its piece, the sums are all-reduced.

Every rank holds the evaluation set (or just its piece); rank r evaluates the r-th of W
nearly equal consecutive pieces (:func:`~gpunn.distributed.shard`), and one all-reduce of
(loss sum, correct, count) gives every rank the metrics of the whole set. Predictions, when
asked for, are all-gathered in order, so they line up with the labels. The model evaluated
is rank 0's: layer buffers (batch-norm running statistics) are broadcast from it first.
"""
from __future__ import annotations

import numpy as np

from ..backend import to_numpy
from ..train.loop import evaluate as _evaluate_local
from .data import shard
from .step import _world, sync_buffers

__all__ = ["evaluate", "evaluate_shard"]


def evaluate_shard(model, loss_fn, x, y, batch_size: int | None = None, *, comm=None,
                   predictions: bool = False):
    """(loss, accuracy, predictions or None) over the union of every rank's (x, y).

    x: (n_r, ...), y: (n_r,) — this rank's piece, possibly empty. Predictions (with
    ``predictions=True``) come back for the whole union, rank 0's piece first.
    """
    comm = _world(comm)
    sync_buffers(model, comm)
    n = len(x)
    if n:
        loss, acc, pred = _evaluate_local(model, loss_fn, x, y, batch_size)
        # evaluate() gives the per-sample mean whatever the reduction: times n, this piece's sum
        sums = np.array([loss * n, round(acc * n), n], dtype=np.float64)
    else:
        pred = np.zeros(0, dtype=np.int64)
        sums = np.zeros(3, dtype=np.float64)
    comm.allreduce(sums, "sum")
    total = max(sums[2], 1.0)
    out_pred = None
    if predictions:
        out_pred = np.concatenate([np.asarray(p) for p in comm.allgather_object(to_numpy(pred))])
    return float(sums[0] / total), float(sums[1] / total), out_pred


def evaluate(model, loss_fn, x, y, batch_size: int | None = None, *, comm=None,
             predictions: bool = True):
    """:func:`gpunn.train.evaluate` with the work split over the ranks: every rank passes the
    whole set and evaluates its piece; returns (loss, accuracy, predictions of the whole set
    or None) on every rank."""
    comm = _world(comm)
    lo, hi = shard(len(x), comm.size, comm.rank)
    return evaluate_shard(model, loss_fn, x[lo:hi], y[lo:hi], batch_size, comm=comm,
                          predictions=predictions)
