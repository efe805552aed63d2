"""A synthetic image set generated from a seed, so the CLI and tests run anywhere.

Class k is a bar at orientation k * 18 degrees through a jittered centre, drawn with a random
thickness and brightness over Gaussian noise: a task a small CNN learns in one epoch and a
linear model only partly, like the real sets.
"""
from __future__ import annotations

import numpy as np


def make_synthetic(n: int, *, seed: int = 0, channels: int = 1, size: int = 28,
                   num_classes: int = 10, noise: float = 0.15):
    """Images uint8 (n, channels, size, size) and labels int64 (n,), a pure function of seed."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) - (size - 1) / 2
    angle = labels * np.pi / num_classes + rng.normal(0, 0.05, n)
    cx, cy = rng.normal(0, size / 14, (2, n))
    thick = rng.uniform(size / 28, size / 12, n)
    # distance of every pixel from the line through (cx, cy) at `angle`
    d = np.abs((xx[None] - cx[:, None, None]) * np.sin(angle)[:, None, None] -
               (yy[None] - cy[:, None, None]) * np.cos(angle)[:, None, None])
    img = np.clip(1.2 - d / thick[:, None, None], 0, 1) * rng.uniform(0.6, 1.0, (n, 1, 1))
    img = img[:, None] + rng.normal(0, noise, (n, channels, size, size))
    if channels > 1:                       # colour carries a little class information too
        tint = 0.75 + 0.25 * np.cos(labels[:, None] + np.arange(channels)[None, :])
        img = img * tint[:, :, None, None]
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), labels.astype(np.int64)
