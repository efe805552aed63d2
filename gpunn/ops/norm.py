"""Batch normalisation's passes: the NumPy bodies (chunked over the batch, threaded) and the
CUDA bodies (CuPy's reductions) side by side.

x: (N, C, S) with S = H*W (BatchNorm2d) or 1 (BatchNorm1d); statistics per channel c over
the N*S values, m = N*S. Training forward:

    mean = sum x / m,  var = sum (x - mean)^2 / m  (biased; the running variance gets m/(m-1))
    xhat = (x - mean) * inv_std,  inv_std = 1 / sqrt(var + eps),  y = gamma * xhat + beta

Backward, from dbeta = sum dout and dgamma = sum dout * xhat:

    dx = (gamma * inv_std) * (dout - dbeta / m - xhat * dgamma / m)

(the textbook dxhat - mean(dxhat) - xhat mean(dxhat xhat), with dxhat = gamma dout).

The NumPy bodies read x once for the statistics: each chunk of samples (a few hundred KiB, so
its temporaries stay in cache) gets its own mean and sum of squared deviations, combined in
chunk order with Chan et al.'s parallel formula in float64, so the result never depends on
the thread count. They keep x (not xhat) for backward and recompute xhat per chunk, which
saves a full write in forward (x must not change in place before backward: no gpunn layer
writes into its input). The CUDA bodies (kernels/batchnorm.cu) keep x too and take three to
five launches each way: float64 partial sums per run of RUN values (added FOLD at a time by
batchnorm_fold when there are many), per-channel statistics or gradients, one element-wise
pass; the same formulas, summed in another order, so the two bodies agree to rounding, not
bit for bit.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..threads import parallel_chunks
from .dispatch import op

__all__ = ["batchnorm_forward", "batchnorm_backward", "CHUNK_BYTES"]

CHUNK_BYTES = 512 << 10          # per chunk of samples: its temporaries stay in L2
_WORK = 8                        # element-operations per value of a pass (gpunn/threads.py)


def _samples_per_chunk(x) -> int:
    per_sample = max(1, x[0].nbytes)
    return max(1, CHUNK_BYTES // per_sample)


def _as3(x):
    """(N, C, ...) -> a contiguous (N, C, S) view."""
    x = get_array_module(x).ascontiguousarray(x)
    return x.reshape(x.shape[0], x.shape[1], -1)


def _channel_dots(a, b):
    """sum over n and s of a * b for each channel c; a, b: (n, C, S). For images (S >= 16) one
    dot product per (sample, channel) row through matmul: measured 0.2-0.75x the time of
    np.einsum("ncs,ncs->c"), which is an element-wise loop; for (N, F) inputs (S = 1) the
    einsum (a matmul per element would be far slower)."""
    if a.shape[2] < 16:
        return np.einsum("ncs,ncs->c", a, b)
    n, c, _ = a.shape
    return np.matmul(a[:, :, None, :], b[:, :, :, None]).reshape(n, c).sum(axis=0)


def _update_running(rm, rv, mean, var, m, momentum):
    T = rm.dtype.type
    mom = T(momentum)
    rm *= 1 - mom
    rm += mom * mean.astype(rm.dtype, copy=False).reshape(-1)
    rv *= 1 - mom
    rv += mom * var.astype(rv.dtype, copy=False).reshape(-1) * T(m / (m - 1))


# -- forward ------------------------------------------------------------------------------------
@op
def batchnorm_forward(x, gamma, beta, running_mean, running_var, eps: float, momentum: float,
                      train: bool, combine=None, relu: bool = False):
    """x: (N, C, ...) -> (y of x's shape, cache for :func:`batchnorm_backward`).
    ``relu``: y = max(batchnorm(x), 0), a fused BatchNorm + ReLU (gpunn.fuse): on the CPU the
    ReLU runs on each chunk while it is in cache instead of as a pass of its own.

    train: batch statistics, and running_mean / running_var updated in place; else the
    running estimates normalise. ``combine(count, mean, m2) -> (count, mean, m2)``: this
    process's statistics (float64 (C,) mean and sum of squared deviations over ``count``
    values) to those of the whole batch over every rank (SyncBatchNorm); None: this process's
    batch is the batch.
    """
    x3 = _as3(x)
    n, c, s = x3.shape
    T = x.dtype.type
    chunk = _samples_per_chunk(x3)
    if train:
        m = n * s

        def stats(lo, hi):
            xc = x3[lo:hi]
            cnt = (hi - lo) * s
            mu = xc.sum(axis=2).sum(axis=0) / T(cnt)                 # (C,)
            d = xc - mu[None, :, None]
            return cnt, mu.astype(np.float64), _channel_dots(d, d).astype(np.float64)
        parts = parallel_chunks(stats, n, chunk, work=_WORK * x3.size)
        mean = sum(cnt * mu for cnt, mu, _ in parts) / m            # float64 (C,)
        m2 = sum(q + cnt * (mu - mean) ** 2 for cnt, mu, q in parts)
        if combine is not None:
            m, mean, m2 = combine(m, mean, m2)
        var64 = m2 / m
        mean_t, var_t = mean.astype(x.dtype), var64.astype(x.dtype)
        _update_running(running_mean, running_var, mean_t, var_t, m, momentum)
    else:                                     # copies: a later training step updates these
        mean_t, var_t = running_mean.copy(), running_var.copy()
    inv_std = T(1) / np.sqrt(var_t + T(eps))
    y = np.empty_like(x3)
    scale = (gamma * inv_std)[None, :, None]                       # y = x * scale + shift
    shift = (beta - mean_t * gamma * inv_std)[None, :, None]

    def normalise(lo, hi):
        out = y[lo:hi]
        np.multiply(x3[lo:hi], scale, out=out)
        out += shift
        if relu:                              # relu_forward's np.maximum(y, 0), in cache
            np.maximum(out, 0, out=out)
    parallel_chunks(normalise, n, chunk, work=_WORK * x3.size)
    return y.reshape(x.shape), ("x", x3, mean_t, inv_std, bool(train))


RUN = 32      # values per partial sum of the CUDA bodies (a thread's run of one channel)
FOLD = 32     # partial sums each batchnorm_fold thread adds


def _partial_sums(b, kernel, n, c, s, dt, inputs, tail=()):
    """The CUDA bodies' per-channel float64 sums: ``kernel`` (batchnorm_partial_stats or
    _grad, called with its ``inputs``, the pairs, the geometry, RUN, then ``tail``) writes one
    (s1, s2) pair per run of RUN values of a channel; batchnorm_fold adds FOLD neighbours at a
    time until at most FOLD are left. -> (pairs (C*P*2,), P)."""
    xp = b.xp
    parts = -(-(n * s) // RUN)
    part = xp.empty(2 * c * parts, dtype=np.float64)
    b.kernel(kernel, dt).launch(c * parts, *inputs, part, n, c, s, RUN, *tail)
    fold = b.kernel("batchnorm_fold", dt)
    while parts > FOLD:
        folded = -(-parts // FOLD)
        out = xp.empty(2 * c * folded, dtype=np.float64)
        fold.launch(c * folded, part, out, c, parts, FOLD)
        part, parts = out, folded
    return part, parts


@batchnorm_forward.cuda
def _batchnorm_forward_cuda(b, x, gamma, beta, running_mean, running_var, eps, momentum, train,
                            combine=None, relu=False):
    """kernels/batchnorm.cu: partial sums (folded), per-channel statistics (and the running
    estimates), then one normalising pass with the ReLU in it: 3 launches up to RUN*FOLD
    values per channel, one more per factor FOLD beyond (2 in evaluation)."""
    if combine is not None:
        raise NotImplementedError("batchnorm_forward: combine= is the CPU body's (SyncBatchNorm "
                                  "computes its GPU statistics itself)")
    xp = b.xp
    x3 = _as3(x)
    n, c, s = x3.shape
    dt = x.dtype
    mean, inv_std, scale, shift = (xp.empty(c, dtype=dt) for _ in range(4))
    if train:
        part, parts = _partial_sums(b, "batchnorm_partial_stats", n, c, s, dt, (x3,))
    else:                                     # unread
        part, parts = xp.empty(2, dtype=np.float64), 1
    b.kernel("batchnorm_stats", dt).launch(c, x3, part, gamma, beta, mean, inv_std, scale, shift,
                                           running_mean, running_var, n, c, s, parts, eps,
                                           momentum, int(bool(train)))
    y = xp.empty_like(x3)
    b.kernel("batchnorm_normalise", dt).launch(y.size, x3, scale, shift, y, n, c, s, int(relu))
    return y.reshape(x.shape), ("x", x3, mean, inv_std, bool(train))


# -- backward -----------------------------------------------------------------------------------
@op
def batchnorm_backward(dout, cache, gamma, combine=None, y_relu=None, out=None):
    """dout: the output's gradient -> (dx, dgamma (C,), dbeta (C,)); ``out``: (dgamma, dbeta)
    arrays (C,) to write those into (a layer's gradient buffers), returned as they are.
    ``combine(dbeta, dgamma, m) -> (s1, s2)``: this process's float64 sums over its m values
    to the two means the gradient subtracts, over the whole batch of every rank
    (SyncBatchNorm); None: dbeta / m and dgamma / m. ``y_relu``: the output of a fused
    BatchNorm + ReLU; dout is first masked by y_relu > 0 (relu_backward's dout * (y > 0)),
    chunk by chunk into dx, which the later passes then read instead of dout."""
    kind, x3, mean, inv_std, batch_stats = cache
    d3 = _as3(dout)
    n, c, s = d3.shape
    T = dout.dtype.type
    chunk = _samples_per_chunk(d3)
    mu = mean[None, :, None]
    istd = inv_std[None, :, None]
    dx = np.empty_like(d3)
    y3 = None if y_relu is None else _as3(y_relu)
    src = d3 if y3 is None else dx            # what the passes after sums() read as dout

    def sums(lo, hi):
        dc = d3[lo:hi]
        if y3 is not None:
            dc = np.multiply(dc, y3[lo:hi] > 0, out=dx[lo:hi])
        # sum dout * xhat = inv_std * sum dout * (x - mean): the centred x, not xhat, per chunk
        xc = x3[lo:hi] - mu
        return (dc.sum(axis=2).sum(axis=0).astype(np.float64),
                _channel_dots(dc, xc).astype(np.float64) * inv_std.astype(np.float64))
    parts = parallel_chunks(sums, n, chunk, work=_WORK * d3.size)
    dbeta = sum(p[0] for p in parts).astype(dout.dtype)
    dgamma = sum(p[1] for p in parts).astype(dout.dtype)
    if out is not None:
        out[0][...] = dgamma
        out[1][...] = dbeta
        dgamma, dbeta = out
    k = (gamma * inv_std)[None, :, None]
    if not batch_stats:                       # statistics are constants in evaluation mode
        def scale_only(lo, hi):
            np.multiply(src[lo:hi], k, out=dx[lo:hi])
        parallel_chunks(scale_only, n, chunk, work=_WORK * d3.size)
        return dx.reshape(dout.shape), dgamma, dbeta
    m = n * s
    if combine is not None:
        s1, s2 = combine(sum(p[0] for p in parts), sum(p[1] for p in parts), m)
        b1, b2 = s1.astype(dout.dtype)[None, :, None], s2.astype(dout.dtype)[None, :, None]
    else:
        b1 = (dbeta / T(m))[None, :, None]
        b2 = (dgamma / T(m))[None, :, None]

    # dx = k (dout - b1 - xhat b2) = k dout - k b1 - (x - mean) (k inv_std b2): per channel
    # constants folded, so a chunk takes five passes in cache instead of six
    kb1 = k * b1
    c2 = k * istd * b2

    def grad(lo, hi):
        t = x3[lo:hi] - mu
        t *= c2
        out = dx[lo:hi]
        np.multiply(src[lo:hi], k, out=out)
        out -= t
        out -= kb1
    parallel_chunks(grad, n, chunk, work=_WORK * d3.size)
    return dx.reshape(dout.shape), dgamma, dbeta


@batchnorm_backward.cuda
def _batchnorm_backward_cuda(b, dout, cache, gamma, combine=None, y_relu=None, out=None):
    """kernels/batchnorm.cu: partial sums (folded), per-channel gradients (straight into
    ``out``) and constants, then dx in one pass (a fused ReLU's mask applied inside both): 3
    launches up to RUN*FOLD values per channel, one more per factor FOLD beyond."""
    if combine is not None:
        raise NotImplementedError("batchnorm_backward: combine= is the CPU body's")
    xp = b.xp
    _, x3, mean, inv_std, batch_stats = cache
    d3 = _as3(dout)
    n, c, s = d3.shape
    dt = dout.dtype
    relu = y_relu is not None
    y3 = _as3(y_relu) if relu else d3         # unread without the ReLU
    k, kb1, c2 = (xp.empty(c, dtype=dt) for _ in range(3))
    direct = out is not None and all(a.dtype == dt and a.shape == (c,) and a.flags.c_contiguous
                                     for a in out)
    dgamma, dbeta = out if direct else (xp.empty(c, dtype=dt), xp.empty(c, dtype=dt))
    part, parts = _partial_sums(b, "batchnorm_partial_grad", n, c, s, dt, (d3, y3, x3, mean),
                                (int(relu),))
    b.kernel("batchnorm_grad_coeffs", dt).launch(c, part, gamma, inv_std, dgamma, dbeta, k, kb1,
                                                 c2, n, c, s, parts, int(bool(batch_stats)))
    dx = xp.empty_like(d3)
    b.kernel("batchnorm_backward_dx", dt).launch(dx.size, d3, y3, x3, mean, k, kb1, c2, dx, n, c,
                                                 s, int(relu), int(bool(batch_stats)))
    if out is not None and not direct:
        out[0][...] = dgamma
        out[1][...] = dbeta
        dgamma, dbeta = out
    return dx.reshape(dout.shape), dgamma, dbeta
