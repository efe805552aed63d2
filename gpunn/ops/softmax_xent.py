"""Fused, numerically stable softmax + cross-entropy: loss and dL/dlogits in one pass.

Per row i of logits z: (N, K), with label y_i (CONVENTIONS.md):

    m = max_k z_k,  s = sum_k exp(z_k - m)
    loss_i = log(s) - (z_y - m)                       # = log(s) + m - z_y, cancellation-free
    dz_k   = (exp(z_k - m) / s - [k == y]) * scale    # scale = 1/N ("mean") or 1 ("sum")
    loss   = sum_i loss_i / N ("mean") or sum_i loss_i ("sum")

Subtracting the row maximum keeps every exponent <= 0, so no logit magnitude overflows
(1e4 and -1e4 in float32 included); the largest term of s is exactly 1, so log(s) is finite.

A label outside [0, K) makes that row's loss and gradient NaN (in both bodies) instead of
reading another row's memory or wrapping around: the low-level op does not raise, so a
GPU step needs no host synchronisation. ``gpunn.losses.SoftmaxCrossEntropy`` checks labels
and raises a clear error before calling in.

The loss comes back as a 0-d array of the logits' dtype on the logits' device, so a GPU
training loop can keep it there; ``float(loss)`` copies it to the host.

The index-label op has a CUDA body (kernels/softmax_xent.cu: one fused pass per row, then one
thread for the loss); soft targets are rare on the hot path, and CuPy runs their NumPy body.

``tally=(loss_sum, correct)`` folds a training loop's running metrics into the op: it adds
``loss * N`` to ``loss_sum`` (0-d float64) and the number of rows whose largest logit (NumPy's
argmax: the first maximum, or the first NaN) is at the label to ``correct`` (0-d int64), as
``TrainStep`` would after the step. On a GPU the whole loss and both sums are two launches
instead of ten (the labels' cast, the kernel, the sum, the mean, ``loss * N``, its addition,
argmax, ``==``, the count, its addition); the sums land exactly where the separate ops put
them.
"""
from __future__ import annotations

import numpy as np

from ..backend import device_of, get_array_module
from ..errors import DTypeError, ShapeError
from .dispatch import op

__all__ = ["softmax_cross_entropy", "softmax_cross_entropy_soft", "REDUCTIONS"]

REDUCTIONS = ("mean", "sum")


def _scale(reduction: str, n: int) -> float:
    if reduction == "mean":
        return 1.0 / n
    if reduction == "sum":
        return 1.0
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _check_tally(tally, logits):
    """``tally`` is None or (loss_sum: 0-d float64, correct: 0-d int64) on the logits' device."""
    if tally is None:
        return None
    try:
        loss_sum, correct = tally
    except (TypeError, ValueError):
        raise TypeError("softmax_cross_entropy: tally must be (loss_sum, correct) or None, "
                        f"got {type(tally).__name__}") from None
    for name, a, dt in (("loss_sum", loss_sum, np.float64), ("correct", correct, np.int64)):
        if not hasattr(a, "dtype") or getattr(a, "shape", None) != ():
            raise ShapeError(f"softmax_cross_entropy: tally's {name} must be a 0-d array, got "
                             f"{type(a).__name__} of shape {getattr(a, 'shape', None)}")
        if a.dtype != dt:
            raise DTypeError(f"softmax_cross_entropy: tally's {name} must be {np.dtype(dt)}, "
                             f"got {a.dtype}")
        if device_of(a) != device_of(logits):
            raise ValueError(f"softmax_cross_entropy: tally's {name} is on {device_of(a)}, "
                             f"the logits on {device_of(logits)}")
    return loss_sum, correct


# -- index labels -----------------------------------------------------------------------------
@op
def softmax_cross_entropy(logits, labels, reduction: str = "mean", tally=None):
    """Loss and gradient for integer class labels.

    logits: (N, K) float32/float64; labels: (N,) integer class indices in [0, K)
    (int64 is what the CUDA body takes without a cast; the NumPy body takes any integer dtype).
    tally: None, or (loss_sum, correct) updated in place (module docstring).
    Returns ``(loss, dlogits)``: loss a 0-d array (logits' dtype and device), dlogits (N, K).
    """
    tally = _check_tally(tally, logits)
    xp = get_array_module(logits, labels)
    n, k = logits.shape
    dt = logits.dtype
    scale = _scale(reduction, n)

    m = logits.max(axis=1, keepdims=True)                     # (N, 1)
    e = logits - m                                             # shifted logits, all <= 0
    # labels outside [0, K): gather from a clipped index, then poison the row with NaN through s
    idx = labels.astype(xp.intp)                               # a copy: clipped below
    valid = (idx >= 0) & (idx < k)
    xp.clip(idx, 0, k - 1, out=idx)
    rows_i = xp.arange(n)
    z_y = e[rows_i, idx]                                       # z_y - m, (N,)
    xp.exp(e, out=e)                                           # e now holds exp(z - m)
    s = e.sum(axis=1)                                          # (N,), in [1, K]
    s = xp.where(valid, s, xp.asarray(float("nan"), dtype=dt))

    rows = xp.log(s) - z_y                                     # loss_i
    loss = rows.sum()
    if reduction == "mean":
        loss = loss / dt.type(n)

    e /= s[:, None]                                            # softmax probabilities
    e[rows_i, idx] -= 1                                        # one index per row: no clashes
    if scale != 1.0:
        e *= dt.type(scale)
    loss = xp.asarray(loss, dtype=dt)
    if tally is not None:                   # TrainStep's running sums, as it added them
        loss_sum, correct = tally           # 0-d arrays: += adds in place
        loss_sum += loss * n
        correct += (logits.argmax(axis=1) == labels).sum()
    return loss, e


@softmax_cross_entropy.cuda
def _softmax_cross_entropy_cuda(b, logits, labels, reduction="mean", tally=None):
    """kernels/softmax_xent.cu: one fused pass per row (loss row, gradient row, hit), then one
    thread for the loss and, with a tally, the running sums."""
    tally = _check_tally(tally, logits)
    logits = b.xp.ascontiguousarray(logits)
    n, k = logits.shape
    dt = logits.dtype
    labels = b.xp.ascontiguousarray(labels.astype(np.int64, copy=False))
    rows = b.xp.empty(n, dtype=dt)
    hits = b.xp.empty(n, dtype=np.int32)
    dlogits = b.xp.empty_like(logits)
    b.kernel("softmax_xent", dt).launch(n, logits, labels, rows, hits, dlogits, n, k,
                                        _scale(reduction, n))
    loss = b.xp.empty((), dtype=dt)
    if tally is None:                       # the kernel writes no sum: any float64/int64 will do
        loss_sum, correct = b.xp.empty((), np.float64), b.xp.empty((), np.int64)
    else:
        loss_sum, correct = tally
    b.kernel("softmax_xent_finish", dt).launch(1, rows, hits, loss, loss_sum, correct, n,
                                               int(reduction == "mean"), int(tally is not None),
                                               block=1)
    return loss, dlogits


# -- soft / one-hot targets ---------------------------------------------------------------------
def softmax_cross_entropy_soft(logits, targets, reduction: str = "mean"):
    """Loss and gradient for per-class targets (one-hot or soft), ``targets``: (N, K).

    loss_i = -sum_k t_k log p_k = sum_k t_k (log(s) - (z_k - m));
    dz = (p * sum_k t_k - t) * scale, which is p - t for targets that sum to 1. For one-hot
    targets this gives the same numbers as :func:`softmax_cross_entropy`. Targets are used in
    the logits' dtype.
    """
    xp = get_array_module(logits, targets)
    n = logits.shape[0]
    dt = logits.dtype
    scale = _scale(reduction, n)
    t = targets.astype(dt, copy=False)

    # the same arithmetic as the index body, so one-hot targets reproduce it bit for bit
    e = logits - logits.max(axis=1, keepdims=True)             # z - m
    p = xp.exp(e)
    s = p.sum(axis=1, keepdims=True)                           # (N, 1)
    e -= xp.log(s)                                             # log p = (z - m) - log(s)
    e *= t
    rows = -e.sum(axis=1)                                      # loss_i
    loss = rows.sum()
    if reduction == "mean":
        loss = loss / dt.type(n)

    p /= s
    p *= t.sum(axis=1, keepdims=True)
    p -= t
    if scale != 1.0:
        p *= dt.type(scale)
    return xp.asarray(loss, dtype=dt), p
