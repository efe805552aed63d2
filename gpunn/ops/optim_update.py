"""Fused in-place optimizer updates for one parameter array (formulas: CONVENTIONS.md).

SGD (PyTorch form, plus the coursework's EMA momentum):
    g' = g + wd * p
    v  = mu * v + g'                 (ema: v = mu * v + (1 - mu) * g')
    step = g' + mu * v if nesterov else v           (mu == 0: step = g', no buffer)
    p -= lr * step

Adam (PyTorch's, i.e. L2 weight decay added to the gradient, not AdamW):
    g' = g + wd * p
    m  = b1 * m + (1 - b1) * g'
    v  = b2 * v + (1 - b2) * g' * g'
    p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)

``bc1 = 1 - b1**t`` and ``bc2 = 1 - b2**t`` are computed by the caller on the host in
float64; every scalar is converted to the parameter's dtype here (as the CUDA body receives
them), so float32 parameters are updated in float32 arithmetic throughout.

``p``, ``v``, ``m`` are modified in place; ``g`` is only read. All arrays share one shape,
dtype and device. The NumPy bodies reuse one scratch array per call instead of a temporary
per operator.

Dispatch: NumPy arrays go to the ``_cpu`` bodies; CuPy arrays to the ``_cuda`` bodies, which
until the RawKernels (kernels/optim.cu) are wired in run the ``_cpu`` bodies through CuPy.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ._cuda import i32, i64, launch, scalar, use_cuda_body

__all__ = ["sgd_update", "adam_update"]


def sgd_update(p, g, v, lr, momentum=0.0, nesterov=False, weight_decay=0.0, ema=False):
    """One SGD step on ``p`` in place. ``v``: momentum buffer (updated in place), or None
    when ``momentum == 0``."""
    if use_cuda_body(p):
        return _sgd_update_cuda(p, g, v, lr, momentum, nesterov, weight_decay, ema)
    return _sgd_update_cpu(p, g, v, lr, momentum, nesterov, weight_decay, ema)


def _sgd_update_cpu(p, g, v, lr, momentum, nesterov, weight_decay, ema):
    xp = get_array_module(p, g, v)
    dt = p.dtype.type
    lr, mu, wd = dt(lr), dt(momentum), dt(weight_decay)
    tmp = xp.empty_like(p)                        # the one scratch array

    if weight_decay != 0:
        gp = xp.multiply(p, wd, out=tmp)          # g' = g + wd * p, held in tmp
        gp += g
    else:
        gp = g                                    # g is never written

    if momentum == 0:
        step = gp
    else:
        v *= mu
        v += (dt(1) - mu) * gp if ema else gp
        if not nesterov:
            step = v
        elif gp is tmp:
            gp += mu * v                          # step = g' + mu v, over g' (no longer needed)
            step = gp
        else:
            step = xp.multiply(v, mu, out=tmp)
            step += gp

    if step is not tmp:                           # tmp is free once step lives elsewhere
        step = xp.multiply(step, lr, out=tmp)
    else:
        step *= lr
    p -= step


def adam_update(p, g, m, v, lr, b1, b2, eps, weight_decay, bc1, bc2):
    """One Adam step on ``p`` in place; ``m``, ``v``: moment buffers (updated in place);
    ``bc1``/``bc2``: bias corrections for this step count (see module docstring)."""
    if use_cuda_body(p):
        return _adam_update_cuda(p, g, m, v, lr, b1, b2, eps, weight_decay, bc1, bc2)
    return _adam_update_cpu(p, g, m, v, lr, b1, b2, eps, weight_decay, bc1, bc2)


def _adam_update_cpu(p, g, m, v, lr, b1, b2, eps, weight_decay, bc1, bc2):
    xp = get_array_module(p, g, m, v)
    dt = p.dtype.type
    lr, b1, b2, eps, wd, bc1, bc2 = (dt(a) for a in (lr, b1, b2, eps, weight_decay, bc1, bc2))
    one = dt(1)
    tmp = xp.empty_like(p)

    if weight_decay != 0:
        gp = xp.multiply(p, wd)                   # g' needs its own array: tmp is busy below
        gp += g
    else:
        gp = g

    m *= b1                                       # m = b1 m + (1 - b1) g'
    m += xp.multiply(gp, one - b1, out=tmp)
    v *= b2                                       # v = b2 v + (1 - b2) g' g'
    xp.multiply(gp, one - b2, out=tmp)
    tmp *= gp
    v += tmp

    denom = xp.sqrt(v, out=tmp)                   # sqrt(v) / sqrt(bc2) + eps
    denom /= np.sqrt(bc2)                         # a host scalar in the dtype
    denom += eps
    step = xp.divide(m, denom, out=tmp)
    step *= lr / bc1
    p -= step


# -- CUDA bodies: kernels/optim.cu --------------------------------------------------------------
# One grid-stride kernel per update reads p, g and the buffers once and writes them once.
# Parameters are contiguous (the optimizer allocates them); the kernels index flat memory.
def _sgd_update_cuda(p, g, v, lr, momentum, nesterov, weight_decay, ema):
    dt = p.dtype
    if momentum == 0:
        launch("sgd_update", p, p.size,
               (p, g, i64(p.size), scalar(lr, dt), scalar(weight_decay, dt)))
    else:
        launch("sgd_momentum_update", p, p.size,
               (p, g, v, i64(p.size), scalar(lr, dt), scalar(momentum, dt),
                scalar(weight_decay, dt), i32(bool(nesterov)), i32(bool(ema))))


def _adam_update_cuda(p, g, m, v, lr, b1, b2, eps, weight_decay, bc1, bc2):
    dt = p.dtype
    launch("adam_update", p, p.size,
           (p, g, m, v, i64(p.size),
            *(scalar(a, dt) for a in (lr, b1, b2, eps, weight_decay, bc1, bc2))))
