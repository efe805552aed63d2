"""Inverted-dropout masks from the counter-based generator in ``ops/random.py``.

mask_i = scale if (bits_i >> 40) >= threshold else 0, with scale = 1 / (1 - p) in x's dtype,
so the same (seed, step) gives the same mask on the CPU and on a GPU.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..graphs import HostValue, step_values
from .dispatch import op
from .random import keep_threshold, random_bits, stream_key


def dropout_mask(shape, p: float, seed: int, step: int, dtype, xp):
    """Mask of ``shape`` holding 0 or 1/(1-p) (dtype ``dtype``) for stream (seed, step)."""
    n = 1
    for s in shape:
        n *= int(s)
    bits = random_bits(stream_key(seed, step), n, xp)
    keep = (bits >> xp.uint64(40)) >= xp.uint64(keep_threshold(p))
    scale = xp.asarray(1.0 / (1.0 - p), dtype=dtype)
    return (keep.astype(dtype) * scale).reshape(shape)


@op
def dropout_forward(x, p: float, seed: int, step: int):
    """y = x * mask; returns (y, mask). x: any shape."""
    xp = get_array_module(x)
    mask = dropout_mask(x.shape, p, seed, step, x.dtype, xp)
    return x * mask, mask


@dropout_forward.cuda
def _dropout_forward_cuda(b, x, p, seed, step):
    """kernels/dropout.cu: one pass draws the bits, writes the mask and the output. In a
    graph-style step (gpunn/graphs.py) the key is read from device memory, rewritten before
    each replay from ``step`` (a HostValue of the layer's step count)."""
    x = b.xp.ascontiguousarray(x)
    y, mask = b.xp.empty_like(x), b.xp.empty_like(x)
    sv = step_values()
    if sv is None:
        b.kernel("dropout_forward", x.dtype).launch(
            x.size, x, y, mask, x.size, stream_key(seed, step), keep_threshold(p),
            1.0 / (1.0 - p))
    else:
        key = step.derive(lambda s: stream_key(seed, s)) if isinstance(step, HostValue) \
            else stream_key(seed, step)
        b.kernel("dropout_forward_dyn", x.dtype).launch(
            x.size, x, y, mask, x.size, sv.device(b, key, np.uint64), keep_threshold(p),
            1.0 / (1.0 - p))
    return y, mask
