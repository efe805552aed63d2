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
dtype and device; the optimizers pass whole flat parameter buffers (gpunn/parameter.py), so
one call updates a model. The NumPy bodies reuse one scratch array per call instead of a
temporary per operator; the CUDA bodies (kernels/optim.cu) read p, g and the buffers once and
write them once, in one grid-stride kernel. On the CPU the update runs in pieces of CHUNK
elements on gpunn's thread pool (gpunn/threads.py), bit for bit the whole-array result.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..graphs import step_values
from .dispatch import op

__all__ = ["sgd_update", "adam_update"]


def _in_chunks(body, arrays, *args):
    """Run an element-wise update ``body(*chunk_views, *args)`` over pieces of the flat
    ``arrays`` (CHUNK elements on one thread, BIG_CHUNK on gpunn's thread pool), each piece's
    scratch in cache. The arithmetic per element is the same as one whole-array call, so the
    bits are too."""
    if not all(a is None or a.flags.c_contiguous for a in arrays):
        return body(*arrays, *args)
    flat = [None if a is None else a.reshape(-1) for a in arrays]
    # one element-operation per element: a streaming update. On one thread (below the
    # pool's threshold, one thread set, a --procs rank) pieces of CHUNK, whose four arrays
    # stay in L2; on the pool, pieces of BIG_CHUNK: two threads alternating on small pieces
    # were slower than one (4.9M parameters: 6.0 ms against 3.8), on 2 MiB pieces faster
    # (3.0 ms); in cnn-bn's whole step 128 KiB to 4 MiB pieces were within 3%, 2 MiB the
    # fastest. On one thread 2 MiB pieces spill L2: 2.46M parameters 2.4-2.6 ms against
    # 1.5-1.7 in 256 KiB pieces (docs/benchmarks/README.md)
    from ..threads import parallel_chunks, parallel_here
    n = flat[0].size
    parallel_chunks(lambda lo, hi: body(*[None if f is None else f[lo:hi] for f in flat], *args),
                    n, BIG_CHUNK if parallel_here(n) else CHUNK, work=n)


CHUNK = 1 << 16            # elements per piece: 256 KiB of float32 per array
BIG_CHUNK = 1 << 19        # elements per piece on the thread pool: 2 MiB per array


@op
def sgd_update(p, g, v, lr, momentum=0.0, nesterov=False, weight_decay=0.0, ema=False):
    """One SGD step on ``p`` in place. ``v``: momentum buffer (updated in place), or None
    when ``momentum == 0``."""
    _in_chunks(_sgd_numpy, (p, g, v), lr, momentum, nesterov, weight_decay, ema)


def _sgd_numpy(p, g, v, lr, momentum, nesterov, weight_decay, ema):
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


# In a graph-style step (gpunn/graphs.py) the CUDA bodies launch the _dyn twins, which read
# lr (and Adam's bias corrections) from one-element device arrays rewritten before each replay.
@sgd_update.cuda
def _sgd_update_cuda(b, p, g, v, lr, momentum=0.0, nesterov=False, weight_decay=0.0, ema=False):
    sv = step_values()
    dyn = "" if sv is None else "_dyn"
    if sv is not None:
        lr = sv.device(b, lr, p.dtype)
    if momentum == 0:
        b.kernel("sgd_update" + dyn, p.dtype).launch(p.size, p, g, p.size, lr, weight_decay)
    else:
        b.kernel("sgd_momentum_update" + dyn, p.dtype).launch(
            p.size, p, g, v, p.size, lr, momentum, weight_decay, bool(nesterov), bool(ema))


@op
def adam_update(p, g, m, v, lr, b1, b2, eps, weight_decay, bc1, bc2):
    """One Adam step on ``p`` in place; ``m``, ``v``: moment buffers (updated in place);
    ``bc1``/``bc2``: bias corrections for this step count (see module docstring)."""
    _in_chunks(_adam_numpy, (p, g, m, v), lr, b1, b2, eps, weight_decay, bc1, bc2)


def _adam_numpy(p, g, m, v, lr, b1, b2, eps, weight_decay, bc1, bc2):
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


@adam_update.cuda
def _adam_update_cuda(b, p, g, m, v, lr, b1, b2, eps, weight_decay, bc1, bc2):
    sv = step_values()
    if sv is None:
        b.kernel("adam_update", p.dtype).launch(p.size, p, g, m, v, p.size, lr, b1, b2, eps,
                                                weight_decay, bc1, bc2)
    else:
        lr, bc1, bc2 = (sv.device(b, a, p.dtype) for a in (lr, bc1, bc2))
        b.kernel("adam_update_dyn", p.dtype).launch(p.size, p, g, m, v, p.size, lr, b1, b2,
                                                    eps, weight_decay, bc1, bc2)
