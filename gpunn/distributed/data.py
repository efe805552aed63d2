"""Each rank's share of every global batch.

The unit of data-parallel training is the *global* batch of G samples (G = ranks x per-rank
batch when a run starts). Batch k of epoch e is samples [k*G, (k+1)*G) of that epoch's
permutation, which every rank draws identically from (seed, e) (DataLoader.order), so it is
exactly batch k of one process at batch size G; rank r takes the r-th of W nearly equal
consecutive pieces of it (:func:`shard`). N ranks x batch B therefore take the steps one
process takes at batch N*B, a short last batch included (split as evenly as possible; the
step weights each rank by its share).
"""
from __future__ import annotations

import numpy as np

from ..backend import to_device
from ..data import DataLoader

__all__ = ["shard", "ShardedLoader"]


def shard(n: int, world_size: int, rank: int) -> tuple:
    """(lo, hi): rank ``rank``'s piece of ``n`` items split into ``world_size`` consecutive
    pieces as evenly as possible (the first ``n % world_size`` pieces have one more item)."""
    n, world_size, rank = int(n), int(world_size), int(rank)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"shard: rank {rank} is not in a world of {world_size}")
    q, extra = divmod(n, world_size)
    lo = rank * q + min(rank, extra)
    return lo, lo + q + (rank < extra)


class ShardedLoader:
    """This rank's part of each global batch, as ``(xb, yb)`` on ``device``.

    x: (N, ...), y: (N,) — the whole training set (every rank holds it, as a DataLoader
    does). ``batch_size`` is the per-rank batch; ``global_batch`` (default
    ``batch_size * world_size``) is what each step trains on across all ranks; pass it to
    keep a run's global batch when it resumes on a different number of ranks.
    ``last_total`` is the global size of the batch most recently yielded (the step weights
    this rank by ``len(xb) / last_total``). ``augment`` (a RandomAugment) draws each sample's
    crop and flip from its position in the epoch, so the pieces are augmented exactly as the
    single-process batch. Same iteration protocol as DataLoader:
    ``len()``, ``batches(epoch, start)``, ``for`` loops that move ``epoch`` on.
    """

    def __init__(self, x, y, batch_size: int | None = None, *, comm=None,
                 global_batch: int | None = None, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, device="cpu", augment=None):
        from . import world
        self.comm = world() if comm is None else comm
        self.rank, self.world_size = self.comm.rank, self.comm.size
        for name, v in (("batch_size", batch_size), ("global_batch", global_batch)):
            if v is not None and int(v) <= 0:
                raise ValueError(f"ShardedLoader: {name} must be positive, got {v}")
        if batch_size is None and global_batch is None:
            raise ValueError("ShardedLoader: give batch_size (per rank) or global_batch")
        g = int(batch_size) * self.world_size if global_batch is None else int(global_batch)
        self.global_batch = g
        # the per-rank batch: as given, or the largest share of the global batch
        self.batch_size = int(batch_size) if global_batch is None else -(-g // self.world_size)
        self.loader = DataLoader(x, y, batch_size=g, shuffle=shuffle, seed=seed,
                                 drop_last=drop_last, device=device,
                                 **({"augment": augment} if augment else {}))
        self.augment = getattr(self.loader, "augment", None)
        self.x, self.y, self.device = self.loader.x, self.loader.y, self.loader.device
        self.shuffle, self.seed, self.drop_last = shuffle, int(seed), bool(drop_last)
        self.last_total = None

    @property
    def epoch(self) -> int:
        return self.loader.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.loader.epoch = int(value)

    def __len__(self) -> int:
        return len(self.loader)

    def order(self, epoch: int | None = None) -> np.ndarray:
        return self.loader.order(epoch)

    def total_of(self, b: int) -> int:
        """Samples in global batch ``b`` (all ranks together)."""
        n, g = len(self.x), self.global_batch
        return max(0, min(g, n - b * g))

    def smallest_shard(self) -> int:
        """The fewest samples any rank gets in any batch (0: some rank sits a step out)."""
        if len(self) == 0:
            return 0
        last = self.total_of(len(self) - 1)
        return min(self.total_of(0), last) // self.world_size

    def __iter__(self):
        epoch = self.loader.epoch
        self.loader.epoch += 1
        return self.batches(epoch)

    def batches(self, epoch: int, start: int = 0):
        """This rank's part of epoch ``epoch``'s global batches, from batch ``start`` on."""
        g = self.global_batch
        if self.shuffle:
            perm = to_device(self.order(epoch).astype(np.int64), self.device)
        key = self.augment.key(self.seed, epoch) if self.augment is not None else None
        for b in range(start, len(self)):
            total = self.total_of(b)
            lo, hi = shard(total, self.world_size, self.rank)
            lo, hi = b * g + lo, b * g + hi
            self.last_total = total
            if self.shuffle:
                idx = perm[lo:hi]
                xb, yb = self.x[idx], self.y[idx]
            else:
                xb, yb = self.x[lo:hi], self.y[lo:hi]
            if key is not None:          # drawn by position in the epoch: as one process draws
                xb = self.augment(xb, key, lo)
            yield xb, yb

    def __repr__(self):
        return (f"ShardedLoader(rank {self.rank} of {self.world_size}, batch {self.batch_size}, "
                f"global batch {self.global_batch}, {len(self)} steps per epoch)")
