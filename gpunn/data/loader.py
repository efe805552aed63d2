"""Mini-batches from a data set held whole on one device.

The arrays move to the device once; each epoch's order is a permutation drawn on the host
from (seed, epoch) — a small int array, identical on every device — and moved over, so batches
are device-side gathers with no host round trip per batch. Augmentation (``augment=``, a
:class:`~gpunn.data.augment.RandomAugment`) runs on the device too, drawn from (seed, epoch,
position), so a resumed epoch sees the same augmented batches.
"""
from __future__ import annotations

import numpy as np

from ..backend import resolve_device, to_device


class DataLoader:
    """Iterate ``(xb, yb)`` batches on ``device``.

    x: (N, ...) array, y: (N,) labels. ``shuffle``: each pass draws the order of epoch
    ``loader.epoch`` from (seed, epoch) and then moves ``loader.epoch`` on, so every ``for``
    loop over the loader sees a new order (set ``loader.epoch`` to replay one).
    ``batches(epoch, start)`` gives epoch ``epoch``'s batches from batch ``start`` on without
    touching ``loader.epoch`` (the trainer uses it to resume mid-epoch). ``drop_last`` skips a
    final short batch. ``augment``: a RandomAugment applied to every training batch (images).
    """

    def __init__(self, x, y, batch_size: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, device="cpu", augment=None):
        if len(x) != len(y):
            raise ValueError(f"DataLoader: x has {len(x)} samples but y has {len(y)}")
        if int(batch_size) <= 0:
            raise ValueError(f"DataLoader: batch_size must be positive, got {batch_size}")
        self.device = resolve_device(device)
        self.x = to_device(x, self.device)
        self.y = to_device(y, self.device)
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.drop_last = bool(drop_last)
        self.augment = augment if augment else None
        if self.augment is not None:
            self.augment.check(self.x)
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """The host permutation for ``epoch`` (identity without shuffling)."""
        e = self.epoch if epoch is None else epoch
        if not self.shuffle:
            return np.arange(len(self.x))
        return np.random.default_rng([self.seed, e]).permutation(len(self.x))

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        return self.batches(epoch)

    def batches(self, epoch: int, start: int = 0):
        """Epoch ``epoch``'s batches from batch ``start`` on (a resumed epoch skips the rest)."""
        n, bs = len(self.x), self.batch_size
        if self.shuffle:
            perm = to_device(self.order(epoch).astype(np.int64), self.device)
        key = self.augment.key(self.seed, epoch) if self.augment is not None else None
        for b in range(start, len(self)):
            lo, hi = b * bs, min(n, (b + 1) * bs)
            if self.shuffle:
                idx = perm[lo:hi]
                xb, yb = self.x[idx], self.y[idx]
            else:
                xb, yb = self.x[lo:hi], self.y[lo:hi]
            if key is not None:
                xb = self.augment(xb, key, lo)
            yield xb, yb
