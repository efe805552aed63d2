"""Independent NumPy references for the CUDA kernels, written from docs/CONVENTIONS.md.

Nothing here imports gpunn: these are the formulas as the conventions state them, so a test
that compares a kernel with them checks the kernel against the contract, not against another
implementation that might share its mistake. Where the result is a sum of several terms the
reference adds them in window-offset order (i, j) row-major, starting from zero, which is the
order the kernels and the NumPy bodies use; so those comparisons can be exact.
"""
from __future__ import annotations

import numpy as np

M64 = np.uint64


# -- element-wise -----------------------------------------------------------------------------
def relu(x):
    return np.where((x > 0) | np.isnan(x), x, np.zeros_like(x))   # NaN stays NaN


def relu_backward(dout, x):
    return dout * (x > 0).astype(dout.dtype)


def leaky_relu(x, slope):
    s = x.dtype.type(slope)
    return np.where(x > 0, x, s * x)


def leaky_relu_backward(dout, x, slope):
    s = x.dtype.type(slope)
    return dout * np.where(x > 0, x.dtype.type(1), s)


def sigmoid(x):
    one = x.dtype.type(1)
    pos = one / (one + np.exp(-np.abs(x)))
    e = np.exp(np.minimum(x, 0))             # exp(x) for x < 0, never overflowing
    return np.where(x >= 0, pos, e / (one + e))


def sigmoid_backward(dout, y):
    return dout * y * (1 - y)


def tanh_backward(dout, y):
    return dout * (1 - y * y)


def gelu(x):
    """GELU, tanh form, evaluated in float64 (the kernel works in its own dtype)."""
    v = x.astype(np.float64)
    return (0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v ** 3)))).astype(x.dtype)


def gelu_backward(dout, x):
    v = x.astype(np.float64)
    t = np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v ** 3))
    d = 0.5 * (1 + t) + 0.5 * v * (1 - t ** 2) * np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * v ** 2)
    return (dout.astype(np.float64) * d).astype(x.dtype)


# One row per element-wise activation kernel pair (tests/test_kernels_emu.py runs them all):
# name (kernels <name>_forward / <name>_backward in elementwise.cu), the forward and backward
# references, what the backward kernel reads besides dout ("x": the input, "y": the forward's
# output), extra scalar arguments (of the kernel's dtype), and how closely the forward and the
# backward must agree: EXACT, ulp(n) (exp / tanh go through libm in the kernel and NumPy's own
# routines here), or eps(n) (rtol = atol = n machine epsilons, where a cancellation such as
# 1 + tanh(u) near -1 turns an ulp of difference into many). A new activation kernel needs its
# references and a row here, nothing else.
EXACT = ("exact", 0)


def ulp(n):
    return ("ulp", n)


def eps(n):
    return ("eps", n)


ACTIVATIONS = [
    ("relu", relu, relu_backward, "x", (), EXACT, EXACT),
    ("leaky_relu", leaky_relu, leaky_relu_backward, "x", (0.13,), EXACT, EXACT),
    ("sigmoid", sigmoid, sigmoid_backward, "y", (), ulp(4), EXACT),
    ("tanh", np.tanh, tanh_backward, "y", (), ulp(4), EXACT),
    ("gelu", gelu, gelu_backward, "x", (), eps(64), eps(64)),
]


# -- counter-based dropout ----------------------------------------------------------------------
def splitmix64(z):
    """z: uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = z + M64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> M64(30))) * M64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> M64(27))) * M64(0x94D049BB133111EB)
        return z ^ (z >> M64(31))


def stream_key(seed: int, step: int) -> int:
    s = splitmix64(np.array([step & (2**64 - 1)], dtype=M64))[0]
    return int(splitmix64(np.array([(seed & (2**64 - 1)) ^ int(s)], dtype=M64))[0])


def dropout(x, p, seed, step):
    """(y, mask) for x of any shape: keep_i = (splitmix64(key + i) >> 40) >= round(p * 2**24)."""
    key = M64(stream_key(seed, step))
    i = np.arange(x.size, dtype=M64)
    with np.errstate(over="ignore"):
        bits = splitmix64(i + key)
    keep = (bits >> M64(40)) >= M64(int(round(p * 2**24)))
    scale = x.dtype.type(1.0 / (1.0 - p))     # 1/(1-p) rounded once to the dtype
    mask = np.where(keep, scale, x.dtype.type(0)).astype(x.dtype).reshape(x.shape)
    return x * mask, mask


# -- convolution / pooling geometry -----------------------------------------------------------------
def out_size(h, w, kh, kw, stride, pad):
    sy, sx = stride
    pt, pb, pl, pr = pad
    return (h + pt + pb - kh) // sy + 1, (w + pl + pr - kw) // sx + 1


def _coords(h, w, kh, kw, stride, pad):
    """Pixel rows/cols read by window (y, x) at offset (i, j): arrays (oh, kh) and (ow, kw)."""
    oh, ow = out_size(h, w, kh, kw, stride, pad)
    rows = np.arange(oh)[:, None] * stride[0] + np.arange(kh)[None, :] - pad[0]
    cols = np.arange(ow)[:, None] * stride[1] + np.arange(kw)[None, :] - pad[2]
    return rows, cols


def im2col(x, kh, kw, stride, pad):
    """col[(c*kh + i)*kw + j, (n*oh + y)*ow + x] = x[n, c, y*sy + i - pt, x*sx + j - pl] or 0."""
    n, c, h, w = x.shape
    oh, ow = out_size(h, w, kh, kw, stride, pad)
    rows, cols = _coords(h, w, kh, kw, stride, pad)
    # index grids shaped (C, kh, kw, N, oh, ow)
    C_ = np.arange(c)[:, None, None, None, None, None]
    I_ = np.arange(kh)[None, :, None, None, None, None]
    J_ = np.arange(kw)[None, None, :, None, None, None]
    N_ = np.arange(n)[None, None, None, :, None, None]
    Y_ = np.arange(oh)[None, None, None, None, :, None]
    X_ = np.arange(ow)[None, None, None, None, None, :]
    hh = rows[Y_, I_]
    ww = cols[X_, J_]
    inside = (hh >= 0) & (hh < h) & (ww >= 0) & (ww < w)
    vals = x[N_, C_, np.clip(hh, 0, h - 1), np.clip(ww, 0, w - 1)]
    col = np.where(inside, vals, x.dtype.type(0))
    return col.reshape(c * kh * kw, n * oh * ow)


def col2im(col, x_shape, kh, kw, stride, pad):
    """The adjoint of im2col: every pixel sums the col entries that read it, in col row order
    (so in (i, j) order for each pixel, as the kernel gathers them)."""
    n, c, h, w = x_shape
    oh, ow = out_size(h, w, kh, kw, stride, pad)
    rows, cols = _coords(h, w, kh, kw, stride, pad)
    C_ = np.arange(c)[:, None, None, None, None, None]
    I_ = np.arange(kh)[None, :, None, None, None, None]
    J_ = np.arange(kw)[None, None, :, None, None, None]
    N_ = np.arange(n)[None, None, None, :, None, None]
    Y_ = np.arange(oh)[None, None, None, None, :, None]
    X_ = np.arange(ow)[None, None, None, None, None, :]
    shape = (c, kh, kw, n, oh, ow)
    hh = np.broadcast_to(rows[Y_, I_], shape)
    ww = np.broadcast_to(cols[X_, J_], shape)
    inside = (hh >= 0) & (hh < h) & (ww >= 0) & (ww < w)
    flat = ((np.broadcast_to(N_, shape) * c + np.broadcast_to(C_, shape)) * h + hh) * w + ww
    dx = np.zeros(n * c * h * w, dtype=col.dtype)
    # np.add.at applies the updates in the order given: col's row-major order
    np.add.at(dx, flat[inside], col.reshape(shape)[inside])
    return dx.reshape(x_shape)


def _windows(x, kh, kw, stride, pad, fill):
    """(N, C, oh, ow, kh*kw) window values, out-of-image positions set to ``fill``."""
    n, c, h, w = x.shape
    rows, cols = _coords(h, w, kh, kw, stride, pad)
    hh = rows[:, None, :, None]                       # (oh, 1, kh, 1)
    ww = cols[None, :, None, :]                       # (1, ow, 1, kw)
    inside = (hh >= 0) & (hh < h) & (ww >= 0) & (ww < w)
    vals = x[:, :, np.clip(hh, 0, h - 1), np.clip(ww, 0, w - 1)]   # (N, C, oh, ow, kh, kw)
    vals = np.where(inside, vals, x.dtype.type(fill))
    oh, ow = rows.shape[0], cols.shape[0]
    return vals.reshape(n, c, oh, ow, kh * kw), inside.reshape(oh, ow, kh * kw)


def maxpool(x, kh, kw, stride, pad):
    """(out, argmax int32): padding is -inf, first maximum wins, argmax = h*W + w."""
    n, c, h, w = x.shape
    vals, _ = _windows(x, kh, kw, stride, pad, -np.inf)
    k = np.argmax(vals, axis=-1)                     # first maximum in row-major window order
    out = np.take_along_axis(vals, k[..., None], axis=-1)[..., 0]
    rows, cols = _coords(h, w, kh, kw, stride, pad)
    y0 = rows[:, 0][None, None, :, None]
    x0 = cols[:, 0][None, None, None, :]
    argmax = ((y0 + k // kw) * w + (x0 + k % kw)).astype(np.int32)
    return out, argmax


def maxpool_backward(dout, argmax, x_shape, kh, kw, stride, pad):
    """Each window's gradient goes to its argmax pixel; a pixel sums its windows' gradients
    in window-offset order."""
    n, c, h, w = x_shape
    oh, ow = dout.shape[2:]
    rows, cols = _coords(h, w, kh, kw, stride, pad)
    y0 = rows[:, 0][:, None]
    x0 = cols[:, 0][None, :]
    offset = (argmax // w - y0) * kw + (argmax % w - x0)     # window offset of each argmax
    dx = np.zeros((n * c, h * w), dtype=dout.dtype)
    plane = np.arange(n * c).reshape(n, c)[:, :, None, None]
    for k in range(kh * kw):
        sel = offset == k
        np.add.at(dx, (np.broadcast_to(plane, sel.shape)[sel], argmax[sel]), dout[sel])
    return dx.reshape(x_shape)


def avg_divisor(h, w, kh, kw, stride, pad, count_include_pad, dtype):
    """(oh, ow) divisors: kh*kw, or the number of in-bounds pixels of each window."""
    oh, ow = out_size(h, w, kh, kw, stride, pad)
    if count_include_pad:
        return np.full((oh, ow), kh * kw, dtype=dtype)
    rows, cols = _coords(h, w, kh, kw, stride, pad)
    nr = ((rows >= 0) & (rows < h)).sum(axis=1)
    nc = ((cols >= 0) & (cols < w)).sum(axis=1)
    return (nr[:, None] * nc[None, :]).astype(dtype)


def avgpool(x, kh, kw, stride, pad, count_include_pad):
    n, c, h, w = x.shape
    vals, _ = _windows(x, kh, kw, stride, pad, 0)
    acc = np.zeros(vals.shape[:-1], dtype=x.dtype)
    for k in range(kh * kw):                          # offset order, as the kernel sums
        acc += vals[..., k]
    return acc / avg_divisor(h, w, kh, kw, stride, pad, count_include_pad, x.dtype)


def avgpool_backward(dout, x_shape, kh, kw, stride, pad, count_include_pad):
    n, c, h, w = x_shape
    share = dout / avg_divisor(h, w, kh, kw, stride, pad, count_include_pad, dout.dtype)
    rows, cols = _coords(h, w, kh, kw, stride, pad)
    dx = np.zeros((n, c, h, w), dtype=dout.dtype)
    for i in range(kh):
        for j in range(kw):
            r, q = rows[:, i], cols[:, j]
            ri = (r >= 0) & (r < h)
            qi = (q >= 0) & (q < w)
            # for a fixed offset, distinct windows touch distinct pixels: plain += is exact
            dx[:, :, r[ri][:, None], q[qi][None, :]] += share[:, :, ri][:, :, :, qi]
    return dx


# -- softmax cross-entropy --------------------------------------------------------------------
def softmax_xent(z, labels, scale):
    """(loss per row, dz): loss_i = log(s) + m - z[label], dz = (softmax - onehot) * scale."""
    n, k = z.shape
    m = z.max(axis=1, keepdims=True)
    e = np.exp(z - m)
    s = e.sum(axis=1, keepdims=True)
    zy = z[np.arange(n), labels][:, None]
    loss = (np.log(s) - (zy - m))[:, 0]
    onehot = np.zeros_like(z)
    onehot[np.arange(n), labels] = 1
    return loss, (e / s - onehot) * z.dtype.type(scale)


def softmax_xent_hits(z, labels):
    """1 where NumPy's argmax of the row (first maximum, or first NaN) is the label, else 0."""
    return (z.argmax(axis=1) == labels).astype(np.int32)


def softmax_xent_finish(rows, hits, mean, loss_sum=None, correct=None):
    """(loss, loss_sum, correct) as the finishing kernel adds them: the rows in double, eight
    running sums (row r into sum r % 8) added pairwise, rounded to the rows' dtype, / N when
    mean; then loss_sum + double(loss * N) and correct + the number of hits."""
    t = rows.dtype.type
    lanes = [0.0] * 8
    for r, v in enumerate(rows.tolist()):
        lanes[r % 8] += float(t(v))
    total = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + \
            ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
    n = len(rows)
    loss = t(total)
    if mean:
        loss = t(loss / t(n))
    if loss_sum is None:
        return loss, None, None
    return loss, loss_sum + float(t(loss * t(n))), correct + int(hits.sum())


# -- optimizers -------------------------------------------------------------------------------
def sgd(p, g, v, lr, momentum, nesterov, wd, ema):
    """New (p, v) after one SGD step, every scalar in p's dtype (v None when momentum is 0)."""
    t = p.dtype.type
    lr, mu, wd = t(lr), t(momentum), t(wd)
    gp = p * wd + g if wd != 0 else g
    if momentum == 0:
        return p - gp * lr, None
    v = v * mu + ((t(1) - mu) * gp if ema else gp)
    step = gp + mu * v if nesterov else v
    return p - step * lr, v


def adam(p, g, m, v, lr, b1, b2, eps, wd, bc1, bc2):
    """New (p, m, v) after one Adam step, every scalar in p's dtype."""
    t = p.dtype.type
    lr, b1, b2, eps, wd, bc1, bc2 = (t(a) for a in (lr, b1, b2, eps, wd, bc1, bc2))
    gp = p * wd + g if wd != 0 else g
    m = m * b1 + gp * (t(1) - b1)
    v = v * b2 + gp * (t(1) - b2) * gp
    denom = np.sqrt(v) / np.sqrt(bc2) + eps
    return p - (m / denom) * (lr / bc1), m, v


# -- convolution epilogue and fused ReLU + max-pool ---------------------------------------------
def conv_output(ycol, b, n, relu):
    """(O, N*P) GEMM output -> (N, O, P): + b[o] (one rounding), then ReLU if asked."""
    o = ycol.shape[0]
    p = ycol.shape[1] // n
    y = ycol.reshape(o, n, p).transpose(1, 0, 2).copy()
    if b is not None:
        y = y + b[None, :, None]
    return globals()["relu"](y) if relu else y


def conv_output_backward(dout, y, relu):
    """(N, O, P) -> (O, N*P), dout masked by y > 0 when the ReLU was fused."""
    n, o, p = dout.shape
    d = relu_backward(dout, y) if relu else dout
    return d.transpose(1, 0, 2).reshape(o, n * p).copy()


def relu_maxpool(x, kh, kw, stride, pad):
    """Max-pooling of ReLU(x): the same output and argmax (ties among the zeros included)."""
    return maxpool(relu(x), kh, kw, stride, pad)


def relu_maxpool_backward(dout, argmax, x, kh, kw, stride, pad):
    return relu_backward(maxpool_backward(dout, argmax, x.shape, kh, kw, stride, pad), x)


# -- batch normalisation (kernels/batchnorm.cu): x3 (N, C, S); a channel's values in t = n*S + s
# order, cut into runs of V; each partial sum adds its run's values one by one, in float64 -------
def _channel(a, c):
    return a[:, c, :].reshape(-1)


def _runs(values, v):
    return [values[i:i + v] for i in range(0, len(values), v)]


def batchnorm_partial_stats(x3, v):
    """(C*P*2,) float64, P = ceil(N*S / v): for (c, p) the sums of d = x - K and d*d over run
    p of channel c, K = the channel's first value."""
    out = []
    for c in range(x3.shape[1]):
        vals = _channel(x3, c).astype(np.float64)
        for run in _runs((vals - vals[0]).tolist(), v):
            s1 = s2 = 0.0
            for d in run:
                s1 += d
                s2 += d * d
            out += [s1, s2]
    return np.array(out)


def batchnorm_fold(part, c_n, p_n, f):
    """(C*ceil(P/f)*2,): each pair the in-order sum of f neighbouring pairs of one channel."""
    pairs = np.asarray(part).reshape(c_n, p_n, 2)
    out = []
    for c in range(c_n):
        for group in _runs(pairs[c].tolist(), f):
            s1 = s2 = 0.0
            for a, b in group:
                s1 += a
                s2 += b
            out += [s1, s2]
    return np.array(out)


def _add_partials(part, c, parts):
    s1 = s2 = 0.0
    for p in range(parts):
        s1 += float(part[2 * (c * parts + p)])
        s2 += float(part[2 * (c * parts + p) + 1])
    return s1, s2


def batchnorm_stats(x3, part, gamma, beta, rm, rv, parts, eps, momentum, train):
    """(mean, inv_std, scale, shift, running_mean, running_var), each (C,) of x's dtype."""
    T = x3.dtype.type
    n, c_n, s = x3.shape
    m = n * s
    mean, istd = np.empty(c_n, x3.dtype), np.empty(c_n, x3.dtype)
    rm, rv = rm.copy(), rv.copy()
    for c in range(c_n):
        if train:
            s1, s2 = _add_partials(part, c, parts)
            d = s1 / m
            v = max(s2 / m - d * d, 0.0)
            mean[c], var = T(float(x3[0, c, 0]) + d), T(v)
            keep, mom = T(1) - T(momentum), T(momentum)
            rm[c] = rm[c] * keep + mom * mean[c]
            rv[c] = rv[c] * keep + mom * var * T(m / (m - 1))
        else:
            mean[c], var = rm[c], rv[c]
        istd[c] = T(1) / np.sqrt(var + T(eps))
    return mean, istd, gamma * istd, beta - mean * gamma * istd, rm, rv


def batchnorm_normalise(x3, scale, shift, relu_after):
    y = x3 * scale[None, :, None] + shift[None, :, None]
    return relu(y) if relu_after else y


def _masked(dout3, y3, relu_before):
    return dout3 * (y3 > 0).astype(dout3.dtype) if relu_before else dout3


def batchnorm_partial_grad(dout3, y3, x3, mean, v, relu_before):
    """(C*P*2,) float64: for (c, p) the sums of dm and dm*(x - mean) over run p (dm: dout,
    masked by y > 0 after a fused ReLU; x - mean in x's dtype, the product in float64)."""
    dm = _masked(dout3, y3, relu_before)
    xc = x3 - mean[None, :, None]
    out = []
    for c in range(x3.shape[1]):
        pairs = list(zip(_channel(dm, c).astype(np.float64).tolist(),
                         _channel(xc, c).astype(np.float64).tolist()))
        for run in _runs(pairs, v):
            s1 = s2 = 0.0
            for u, w in run:
                s1 += u
                s2 += u * w
            out += [s1, s2]
    return np.array(out)


def batchnorm_grad_coeffs(part, gamma, inv_std, m, parts, train):
    """(dgamma, dbeta, k, kb1, c2), each (C,) of gamma's dtype."""
    T = gamma.dtype.type
    c_n = gamma.size
    out = [np.empty(c_n, gamma.dtype) for _ in range(5)]
    for c in range(c_n):
        s1, s2 = _add_partials(part, c, parts)
        db, dg = T(s1), T(s2 * float(inv_std[c]))
        kc = gamma[c] * inv_std[c]
        kb1 = kc * (db / T(m)) if train else T(0)
        c2 = kc * inv_std[c] * (dg / T(m)) if train else T(0)
        for arr, v in zip(out, (dg, db, kc, kb1, c2)):
            arr[c] = v
    return tuple(out)


def batchnorm_backward_dx(dout3, y3, x3, mean, k, kb1, c2, relu_before, train):
    b = lambda a: a[None, :, None]                                       # noqa: E731
    out = _masked(dout3, y3, relu_before) * b(k)
    if train:
        out = out - (x3 - b(mean)) * b(c2)
        out = out - b(kb1)
    return out
