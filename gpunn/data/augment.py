"""Image augmentation on the training device: random crop with zero padding and random
horizontal flip, as one gather per batch (no host round trip).

The draws come from the counter-based generator (gpunn/ops/random.py), so they are a pure
function of (seed, epoch, position in the epoch's order) and identical on any device and after
a resume. For the sample at position i of epoch e:

    bits = splitmix64(stream_key(seed ^ SALT, e) + i)
    dy   = ((bits >>  8) & 0xFFFFFF) * (2 * pad + 1) >> 24      offset of the crop window, rows
    dx   = ((bits >> 32) & 0xFFFFFF) * (2 * pad + 1) >> 24      and columns, in [0, 2 * pad]
    flip = bits & 1                                              mirror left-right when 1

The batch (B, C, H, W) is zero-padded by ``pad`` on each side and the (H, W) window at
(dy, dx) is taken (dy = dx = pad is the original image), mirrored where ``flip``.
"""
from __future__ import annotations


from ..backend import get_array_module
from ..errors import ShapeError
from ..ops.random import splitmix64, stream_key

__all__ = ["RandomAugment", "augment_batch"]

_SALT = 0x6175676D656E7421          # "augment!": keeps these streams apart from dropout's


def augment_batch(x, key: int, start: int, pad: int = 0, flip: bool = False):
    """Augment batch ``x`` (B, C, H, W) whose samples sit at positions ``start..start+B-1`` of
    the epoch whose stream key is ``key``; returns a new array on x's device."""
    xp = get_array_module(x)
    b, c, h, w = x.shape
    bits = splitmix64(xp.arange(start, start + b, dtype=xp.uint64) + xp.uint64(key), xp)
    span = xp.uint64(2 * pad + 1)
    mask24 = xp.uint64(0xFFFFFF)
    dy = (((bits >> xp.uint64(8)) & mask24) * span >> xp.uint64(24)).astype(xp.int64)
    dx = (((bits >> xp.uint64(32)) & mask24) * span >> xp.uint64(24)).astype(xp.int64)
    rows = dy[:, None] + xp.arange(h)                                   # (B, H)
    cols = dx[:, None] + xp.arange(w)                                   # (B, W)
    if flip:
        cols = xp.where((bits & xp.uint64(1)).astype(bool)[:, None], cols[:, ::-1], cols)
    src = xp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    return src[xp.arange(b)[:, None, None, None], xp.arange(c)[None, :, None, None],
               rows[:, None, :, None], cols[:, None, None, :]]


class RandomAugment:
    """Random crop (``crop``: zero padding in pixels, 0 for none) and horizontal flip for
    image batches; give it to ``DataLoader(augment=...)``. It draws from ``seed`` and the
    epoch (the loader's seed when ``seed`` is None)."""

    def __init__(self, crop: int = 0, flip: bool = False, seed: int | None = None):
        if int(crop) != crop or crop < 0:
            raise ValueError(f"RandomAugment: crop must be a padding of >= 0 pixels, got {crop!r}")
        self.crop, self.flip, self.seed = int(crop), bool(flip), seed

    def __bool__(self):
        return bool(self.crop or self.flip)

    def check(self, x) -> None:
        if x.ndim != 4:
            raise ShapeError(f"{self!r} augments images (N, C, H, W); the data is {tuple(x.shape)}")

    def key(self, seed: int, epoch: int) -> int:
        s = seed if self.seed is None else self.seed
        return stream_key((int(s) ^ _SALT) & ((1 << 64) - 1), int(epoch))

    def __call__(self, xb, key: int, start: int):
        if not self:
            return xb
        return augment_batch(xb, key, start, self.crop, self.flip)

    def __repr__(self):
        return f"RandomAugment(crop={self.crop}, flip={self.flip})"

