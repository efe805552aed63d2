"""A large Linear's weight gradient, computed by forked ranks already summed, a share each.

Ranks that share one model (gpunn train --procs, gpunn/distributed/shm.py) each compute the
full weight gradient of their own samples, ``x_r.T @ dout_r`` (in, out), and then the
shared reduction adds the ranks' buffers, segment by segment. For a large Linear (cnn-bn's
6272 -> 784: 4.9M of its 4.9M parameters) that is a full-size GEMM output per rank written
out, read back and added. Instead, a layer here defers its weight GEMM: in backward each rank
copies its input x_r and its weighted output gradient w_r dout_r (w_r = n_r / N, the rank's
share of the global mean) into a stage in shared memory, and in the reduction each rank
computes only the rows of dW inside its own segment, over every rank's samples at once:

    dW[rows of rank r] = X[:, rows].T @ D,   X: (ranks * cap, in),  D: (ranks * cap, out)

which is the reduced gradient sum_k w_k x_k.T dout_k for those rows: a reduce-scatter fused
into the GEMM, with the same multiply-adds as before and no gradient pass at all. (The
segments of the flat buffer are cut on row boundaries of such a W, so every row is one
rank's.) Measured on the 2-vCPU Xeon: docs/benchmarks/README.md.

A rank that cannot stage this step (more samples than the stage's ``cap`` rows, which is the
largest rank batch of the first step, or no samples at all) computes its gradient as before
and says so; its stage rows are zeroed, and the others add its buffer to their rows with its
weight. The ranks' flags and stages are in shared memory, read only after the reduction's
first barrier.
"""
from __future__ import annotations

import numpy as np

from ..ops.gemm import gemm

__all__ = ["WeightShard", "SHARD_MIN"]

SHARD_MIN = 1 << 18      # elements of W from which a Linear's weight gradient is sharded


class WeightShard:
    """One Linear layer's deferred weight gradient. ``j``: its flat buffer's index among the
    optimizer's slots; ``w0``: where W starts in that buffer; ``X``, ``D``, ``flags``: shared
    arrays (ranks * cap, in), (ranks * cap, out), (ranks,)."""

    def __init__(self, layer, j: int, w0: int, X, D, flags, rank: int, ranks: int, cap: int):
        self.layer, self.j, self.w0 = layer, j, w0
        self.rows, self.cols = layer.in_features, layer.out_features
        self.X, self.D, self.flags = X, D, flags
        self.rank, self.ranks, self.cap = rank, ranks, cap
        self.weight = 1.0
        self.active = False           # only inside a step of the sharing ranks
        self.staged = []              # per rank, at the last reduction: staged its rows

    @property
    def span(self) -> tuple:
        """(start, stop) of W in its flat buffer."""
        return self.w0, self.w0 + self.rows * self.cols

    def snap(self, cut: int) -> int:
        """A segment cut moved to the nearest row boundary of W when it falls inside it."""
        lo, hi = self.span
        if not lo < cut < hi:
            return cut
        return lo + int(round((cut - lo) / self.cols)) * self.cols

    # -- the step -----------------------------------------------------------------------------
    def begin(self, weight: float) -> None:
        self.weight, self.active = float(weight), True
        self.flags[self.rank] = 0

    def defer(self, x, dout) -> bool:
        """Linear.backward's hook: stage (x, w dout) and skip the GEMM; False: compute it now."""
        n = x.shape[0]
        if not self.active or n > self.cap or x.dtype != self.X.dtype:
            return False
        lo = self.rank * self.cap
        self.X[lo:lo + n] = x
        np.multiply(dout, dout.dtype.type(self.weight), out=self.D[lo:lo + n])
        if n < self.cap:
            self.X[lo + n:lo + self.cap] = 0
            self.D[lo + n:lo + self.cap] = 0
        self.flags[self.rank] = 1
        return True

    def before_barrier(self) -> None:
        """A rank that did not stage this step zeroes its rows, so that they add nothing."""
        if not self.flags[self.rank]:
            lo = self.rank * self.cap
            self.X[lo:lo + self.cap] = 0
            self.D[lo:lo + self.cap] = 0
        self.active = False

    def reduce(self, g, lo: int, hi: int, ws) -> None:
        """The summed gradient of W's flat range [lo, hi) (whole rows, inside this rank's
        segment) into this rank's buffer g[rank]; ``ws``: every rank's weight."""
        i0, i1 = (lo - self.w0) // self.cols, (hi - self.w0) // self.cols
        dst = g[self.rank, lo:hi].reshape(i1 - i0, self.cols)
        missing = [k for k, staged in enumerate(self.staged) if not staged]
        if not missing:
            gemm(self.X[:, i0:i1], self.D, transa=True, out=dst)
            return
        acc = gemm(self.X[:, i0:i1], self.D, transa=True)
        t = g.dtype.type
        for k in missing:             # computed in its backward: add it, weighted
            acc += g[k, lo:hi].reshape(i1 - i0, self.cols) * t(ws[k])
        dst[...] = acc


def find_shards(model, slots) -> list:
    """(layer, slot index, offset of W) for each Linear whose W has SHARD_MIN elements or more
    and lives in one of the optimizer's flat buffers ``slots``; [] for anything else."""
    from ..layers.linear import Linear
    if model is None:
        return []
    found = []
    for layer in model.walk():
        if not isinstance(layer, Linear) or layer.in_features * layer.out_features < SHARD_MIN:
            continue
        p = layer._parameters["W"]
        flat = p.flat
        if flat is None or not any(flat is s for s in slots):
            continue
        j = next(i for i, s in enumerate(slots) if s is flat)
        found.append((layer, j, flat.offsets[flat.params.index(p)]))
    return found
