"""Max and average pooling over NCHW: the NumPy bodies (CUDA bodies beside them).

Semantics shared with kernels/pool.cu:
- stride = (sy, sx), pad = (pt, pb, pl, pr); oh = (H + pt + pb - kh) // sy + 1, same for ow.
- max: padding acts as -inf; ``argmax`` (int32, (N, C, oh, ow)) is the flat index h*W + w of
  the chosen pixel in the unpadded plane; ties go to the first maximum in row-major window
  order (as PyTorch). Backward sends each window's gradient to its argmax pixel, summing where
  overlapping windows chose the same pixel. (The CPU body multiplies dout by a 0/1 mask, so a
  non-finite dout also reaches the window's other pixels as NaN; finite values are exact.)
  On the CPU a 2x2 / stride-2 pool returns a :class:`DeferredArgmax` instead of the int32
  array (``np.asarray`` gives that array); its backward matches each window against its
  output, so a window whose maximum is NaN sends its gradient to its last pixel.
- average: with ``count_include_pad=False`` the mean over the window's in-bounds pixels
  (TensorFlow "same", PyTorch count_include_pad=False); with True, divide by kh*kw.

The CPU bodies loop over the kh*kw window offsets, each a strided slice of the whole batch:
for a 2x2 pool that is the element-wise maximum of four slices, far faster than
``reshape(...).max(axis=(3, 5))``.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from .dispatch import op
from .geometry import conv_output_size, crop_padding, pad_input

__all__ = ["maxpool2d_forward", "maxpool2d_backward", "avgpool2d_forward", "avgpool2d_backward",
           "global_avgpool2d_forward", "global_avgpool2d_backward",
           "relu_maxpool2d_forward", "relu_maxpool2d_backward"]


def _geometry(x_shape, kh, kw, stride, pad):
    """(output shape, the kernels' geometry arguments (n, c, h, w, kh, kw, sy, sx, pt, pl,
    oh, ow))."""
    n, c, h, w = x_shape
    oh, ow = _out_size(h, w, kh, kw, stride, pad)
    return (n, c, oh, ow), (n, c, h, w, kh, kw, stride[0], stride[1], pad[0], pad[2], oh, ow)


def _out_size(h, w, kh, kw, stride, pad):
    return (conv_output_size(h, kh, stride[0], pad[0], pad[1]),
            conv_output_size(w, kw, stride[1], pad[2], pad[3]))


def _slice(a, i, j, sy, sx, oh, ow):
    """The (N, C, oh, ow) strided slice of padded ``a`` that window offset (i, j) reads."""
    return a[:, :, i:i + sy * (oh - 1) + 1:sy, j:j + sx * (ow - 1) + 1:sx]


def _window_origin(h, w, oh, ow, stride, pad, xp):
    """Row and column of each window's top-left pixel in the unpadded plane (may be < 0)."""
    ys = xp.arange(oh, dtype=np.int32) * stride[0] - pad[0]
    xs = xp.arange(ow, dtype=np.int32) * stride[1] - pad[2]
    return ys, xs


def _window_base(h, w, oh, ow, stride, pad, xp):
    """(oh, ow) int32: flat index h*W + w of each window's top-left pixel (may lie in padding)."""
    ys, xs = _window_origin(h, w, oh, ow, stride, pad, xp)
    return ys[:, None] * np.int32(w) + xs[None, :]


def _offset_table(kh, kw, w, xp):
    """int32 (kh*kw,): the flat-index step from a window's origin to its offset k = i*kw + j."""
    k = xp.arange(kh * kw, dtype=np.int32)
    return (k // kw) * np.int32(w) + k % kw


# -- max pooling --------------------------------------------------------------------------------
# The CPU bodies run on chunks of samples (each chunk's temporaries stay in cache) on gpunn's
# thread pool; every output element is computed as in one whole-batch pass, so the bits are
# the same. The common 2x2 / stride-2 / unpadded pool takes a shorter path: the maximum of the
# window's two rows, then of the two row maxima.
CHUNK_BYTES = 256 << 10


# On the pool's threads, bigger chunks (at least two per thread): a 256 KiB chunk is too short
# a region to share. Pooling's values do not depend on the chunks. Measured on the 2-vCPU
# Xeon, forward + backward at two threads: (100, 32, 28, 28) 8.35 -> 4.69 ms (one thread:
# 7.36), (100, 16, 28, 28) 3.75 -> 2.59 ms, (128, 64, 32, 32) 31.0 -> 25.9 ms; 4 MiB chunks
# were slower again (docs/benchmarks/README.md).
PARALLEL_CHUNK_BYTES = 1 << 20


def _chunk_samples(x) -> int:
    """Samples per chunk of a pass over x (N, C, H, W)."""
    from ..threads import samples_per_chunk
    return samples_per_chunk(x.shape[0], x[0].nbytes, CHUNK_BYTES, PARALLEL_CHUNK_BYTES, x.size)


def _is_2x2(kh, kw, stride, pad):
    return (kh, kw) == (2, 2) and tuple(stride) == (2, 2) and tuple(pad) == (0, 0, 0, 0)


def _max2x2(x, out):
    """2x2 stride-2 max of x (n, C, H, W) into out: the maximum of the four strided slices."""
    oh, ow = out.shape[2:]
    np.maximum(x[:, :, 0:2 * oh:2, 0:2 * ow:2], x[:, :, 0:2 * oh:2, 1:2 * ow:2], out=out)
    np.maximum(out, x[:, :, 1:2 * oh:2, 0:2 * ow:2], out=out)
    np.maximum(out, x[:, :, 1:2 * oh:2, 1:2 * ow:2], out=out)


def _relu_max2x2(x, out):
    """out = the 2x2 max of relu(x), bit for bit, with the ReLU on the pooled quarter:
    ReLU is monotone, NaN stays NaN, and np.maximum(v, 0) never leaves a -0.0 (on a tie it
    returns its second argument), so relu(max(window)) == max(relu(window)) exactly."""
    _max2x2(x, out)
    np.maximum(out, out.dtype.type(0), out=out)


class DeferredArgmax:
    """The argmax of a 2x2 / stride-2 CPU max-pool, not computed: the pooled input ``x`` and
    the output ``out`` (both alive anyway) stand for it. Backward finds each window's first
    maximum by comparing the window with its output, which costs what reading an argmax
    costs, while building the int32 flat indices in forward costs twice the pooling itself.
    ``np.asarray(deferred)`` gives that int32 (N, C, oh, ow) array (tests, inspection).
    ``relu``: x is the fused ReLU's input; the pool read relu(x).
    """

    def __init__(self, x, out, relu: bool):
        self.x, self.out, self.relu = x, out, relu
        self.shape, self.dtype = out.shape, np.dtype(np.int32)

    def masks(self, lo, hi, relu=None):
        """The 0/1 choice of each window offset (a, b, c, d) for samples lo..hi: the first of
        the window's values equal to its maximum (a window whose maximum is NaN matches none
        of them and sends its gradient to d). ``relu=False``: match x itself."""
        x, m = self.x[lo:hi], self.out[lo:hi]
        if self.relu if relu is None else relu:
            x = np.maximum(x, x.dtype.type(0))
        oh, ow = m.shape[2:]
        ea = x[:, :, 0:2 * oh:2, 0:2 * ow:2] == m
        eb = x[:, :, 0:2 * oh:2, 1:2 * ow:2] == m
        eb &= ~ea
        taken = ea | eb
        ec = x[:, :, 1:2 * oh:2, 0:2 * ow:2] == m
        ec &= ~taken
        taken |= ec
        return ea, eb, ec, ~taken

    def __array__(self, dtype=None, copy=None):
        n, c, oh, ow = self.shape
        w = self.x.shape[3]
        code = np.zeros(self.shape, dtype=np.int32)
        for k, e in enumerate(self.masks(0, n)):
            code += e * np.int32((k // 2) * w + k % 2)
        code += _window_base(2 * oh, w, oh, ow, (2, 2), (0, 0, 0, 0), np)
        return code if dtype is None else code.astype(dtype)


def _maxpool_chunk(xc, kh, kw, stride, pad, out, argmax):
    """The general window loop on one chunk, writing out (and argmax) in place."""
    n, c, h, w = xc.shape
    sy, sx = stride
    oh, ow = out.shape[2:]
    xpad = pad_input(xc, pad, -np.inf)
    out[...] = _slice(xpad, 0, 0, sy, sx, oh, ow)
    if argmax is None:
        for k in range(1, kh * kw):
            np.maximum(out, _slice(xpad, k // kw, k % kw, sy, sx, oh, ow), out=out)
        return
    # offset: the window offset k = i*kw + j of the running maximum. A strict `>` moves it only
    # on a larger value, so ties keep the first maximum. k only grows, so "set offset to k where
    # better" is maximum(offset, better * k): plain uint8 arithmetic, which makes this forward
    # ~3x faster than with the masked assignment offset[better] = k.
    offset = np.zeros(out.shape, dtype=np.uint8 if kh * kw <= 256 else np.int32)
    for k in range(1, kh * kw):
        s = _slice(xpad, k // kw, k % kw, sy, sx, oh, ow)
        better = (s > out).astype(offset.dtype)
        np.maximum(out, s, out=out)
        better *= offset.dtype.type(k)
        np.maximum(offset, better, out=offset)
    # flat index = window origin + the offset's (i*W + j): a lookup and one add, in int32
    np.take(_offset_table(kh, kw, w, np), offset, out=argmax)
    argmax += _window_base(h, w, oh, ow, stride, pad, np)


def _maxpool_numpy(x, kh, kw, stride, pad, with_argmax, relu=False):
    from ..threads import parallel_chunks
    x = np.ascontiguousarray(x)
    n, c, h, w = x.shape
    oh, ow = _out_size(h, w, kh, kw, stride, pad)
    out = np.empty((n, c, oh, ow), dtype=x.dtype)
    fast = _is_2x2(kh, kw, stride, pad)
    argmax = np.empty(out.shape, dtype=np.int32) if with_argmax and not fast else None

    def chunk(lo, hi):
        if fast and relu:
            _relu_max2x2(x[lo:hi], out[lo:hi])
        elif fast:
            _max2x2(x[lo:hi], out[lo:hi])
        else:
            xc = np.maximum(x[lo:hi], x.dtype.type(0)) if relu else x[lo:hi]
            _maxpool_chunk(xc, kh, kw, stride, pad, out[lo:hi],
                           None if argmax is None else argmax[lo:hi])
    parallel_chunks(chunk, n, _chunk_samples(x), work=x.size)
    if fast and with_argmax:
        return out, DeferredArgmax(x, out, relu)
    return out, argmax


@op
def maxpool2d_forward(x, kh: int, kw: int, stride: tuple, pad: tuple, with_argmax: bool = True):
    """x: (N, C, H, W) -> (out (N, C, oh, ow), argmax int32 (N, C, oh, ow) or None).

    Evaluation needs no argmax: ``with_argmax=False`` skips it (on the CPU that is ~2.5x faster
    for a 2x2 pool, the plain maximum of four slices).
    """
    return _maxpool_numpy(x, kh, kw, stride, pad, with_argmax)


def _maxpool_forward_cuda(b, base, x, kh, kw, stride, pad, with_argmax):
    """kernels/pool.cu ``base`` ("maxpool2d_forward" or the fused "relu_maxpool2d_forward"),
    or its ``_noargmax`` twin for evaluation."""
    x = b.xp.ascontiguousarray(x)
    out_shape, geo = _geometry(x.shape, kh, kw, stride, pad)
    y = b.xp.empty(out_shape, dtype=x.dtype)
    if not with_argmax:
        b.kernel(base + "_noargmax", x.dtype).launch(y.size, x, y, *geo)
        return y, None
    argmax = b.xp.empty(out_shape, dtype=np.int32)
    b.kernel(base, x.dtype).launch(y.size, x, y, argmax, *geo)
    return y, argmax


@maxpool2d_forward.cuda
def _maxpool2d_forward_cuda(b, x, kh, kw, stride, pad, with_argmax=True):
    return _maxpool_forward_cuda(b, "maxpool2d_forward", x, kh, kw, stride, pad, with_argmax)



def _maxpool_backward_numpy(dout, argmax, x_shape, kh, kw, stride, pad, x_relu=None):
    """The NumPy body of both backward ops; x_relu: the fused ReLU's input (mask x > 0)."""
    from ..threads import parallel_chunks
    dout = np.ascontiguousarray(dout)
    n, c, h, w = x_shape
    sy, sx = stride
    pt, pb, pl, pr = pad
    oh, ow = dout.shape[2:]
    dx = np.empty(tuple(x_shape), dtype=dout.dtype)
    if isinstance(argmax, DeferredArgmax):
        # With the fused ReLU, relu_backward's mask x > 0 at a window's chosen pixel is
        # out > 0, so dout * (out > 0) on the pooled quarter replaces the full-size mask pass
        # and the windows may be matched on x itself (where out > 0 the same pixels match):
        # every element, signed zeros included, comes out as relu_backward(maxpool_backward).
        def deferred(lo, hi):
            d, out = dout[lo:hi], dx[lo:hi]
            if x_relu is not None:
                d = d * (argmax.out[lo:hi] > 0)
            if h % 2 or w % 2:                   # the row / column no window reads
                out[:, :, 2 * oh:] = 0
                out[:, :, :, 2 * ow:] = 0
            for k, e in enumerate(argmax.masks(lo, hi, relu=False)):
                i, j = k // 2, k % 2
                np.multiply(d, e, out=out[:, :, i:2 * oh:2, j:2 * ow:2])
        parallel_chunks(deferred, n, _chunk_samples(dx), work=dx.size)
        return dx
    argmax = np.ascontiguousarray(argmax)
    base = _window_base(h, w, oh, ow, stride, pad, np)
    table = _offset_table(kh, kw, w, np)
    disjoint = sy >= kh and sx >= kw         # e.g. 2x2 stride 2: every pixel in <= 1 window

    def chunk(lo, hi):
        d, am = dout[lo:hi], argmax[lo:hi]
        dxp = np.zeros((hi - lo, c, h + pt + pb, w + pl + pr), dtype=dout.dtype)
        for k in range(kh * kw):
            # windows whose maximum sits at offset k send their gradient through that slice;
            # dout * mask is ~6x faster than where(mask, dout, 0) and equal for finite dout
            chosen = am == (base + table[k])
            target = _slice(dxp, k // kw, k % kw, sy, sx, oh, ow)
            if disjoint:
                np.multiply(d, chosen, out=target)   # plain assignment: no slice overlaps
            else:
                target += d * chosen
        out = dx[lo:hi]
        out[...] = dxp[:, :, pt:pt + h, pl:pl + w]
        if x_relu is not None:
            out *= x_relu[lo:hi] > 0
    parallel_chunks(chunk, n, _chunk_samples(dx), work=dx.size)
    return dx


@op
def maxpool2d_backward(dout, argmax, x_shape: tuple, kh: int, kw: int, stride: tuple, pad: tuple):
    """dout, argmax: (N, C, oh, ow) -> dx: (N, C, H, W)."""
    return _maxpool_backward_numpy(dout, argmax, x_shape, kh, kw, stride, pad)


@maxpool2d_backward.cuda
def _maxpool2d_backward_cuda(b, dout, argmax, x_shape, kh, kw, stride, pad):
    dout, argmax = b.xp.ascontiguousarray(dout), b.xp.ascontiguousarray(argmax)
    _, geo = _geometry(x_shape, kh, kw, stride, pad)
    dx = b.xp.empty(tuple(x_shape), dtype=dout.dtype)
    b.kernel("maxpool2d_backward", dout.dtype).launch(dx.size, dout, argmax, dx, *geo)
    return dx



# -- average pooling ----------------------------------------------------------------------------
def _avg_divisor(h, w, oh, ow, kh, kw, stride, pad, count_include_pad, dtype, xp):
    """(oh, ow) array of window sizes: in-bounds pixel counts, or kh*kw."""
    if count_include_pad:
        return xp.full((oh, ow), kh * kw, dtype=dtype)
    ys, xs = _window_origin(h, w, oh, ow, stride, pad, xp)
    rows = xp.minimum(ys + kh, h) - xp.maximum(ys, 0)
    cols = xp.minimum(xs + kw, w) - xp.maximum(xs, 0)
    return (rows[:, None] * cols[None, :]).astype(dtype)


@op
def avgpool2d_forward(x, kh: int, kw: int, stride: tuple, pad: tuple,
                      count_include_pad: bool = False):
    """x: (N, C, H, W) -> (N, C, oh, ow)."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    sy, sx = stride
    oh, ow = _out_size(h, w, kh, kw, stride, pad)
    xpad = pad_input(x, pad, 0)
    acc = _slice(xpad, 0, 0, sy, sx, oh, ow).copy()
    for k in range(1, kh * kw):
        acc += _slice(xpad, k // kw, k % kw, sy, sx, oh, ow)
    acc /= _avg_divisor(h, w, oh, ow, kh, kw, stride, pad, count_include_pad, x.dtype, xp)
    return acc


@avgpool2d_forward.cuda
def _avgpool2d_forward_cuda(b, x, kh, kw, stride, pad, count_include_pad=False):
    x = b.xp.ascontiguousarray(x)
    out_shape, geo = _geometry(x.shape, kh, kw, stride, pad)
    y = b.xp.empty(out_shape, dtype=x.dtype)
    b.kernel("avgpool2d_forward", x.dtype).launch(y.size, x, y, *geo, bool(count_include_pad))
    return y



@op
def avgpool2d_backward(dout, x_shape: tuple, kh: int, kw: int, stride: tuple, pad: tuple,
                       count_include_pad: bool = False):
    """dout: (N, C, oh, ow) -> dx: (N, C, H, W)."""
    xp = get_array_module(dout)
    n, c, h, w = x_shape
    sy, sx = stride
    pt, pb, pl, pr = pad
    oh, ow = dout.shape[2:]
    share = dout / _avg_divisor(h, w, oh, ow, kh, kw, stride, pad, count_include_pad,
                                dout.dtype, xp)
    dxp = xp.zeros((n, c, h + pt + pb, w + pl + pr), dtype=dout.dtype)
    disjoint = sy >= kh and sx >= kw
    for k in range(kh * kw):
        target = _slice(dxp, k // kw, k % kw, sy, sx, oh, ow)
        if disjoint:
            target[...] = share
        else:
            target += share
    return crop_padding(dxp, pad, h, w)


@avgpool2d_backward.cuda
def _avgpool2d_backward_cuda(b, dout, x_shape, kh, kw, stride, pad, count_include_pad=False):
    dout = b.xp.ascontiguousarray(dout)
    _, geo = _geometry(x_shape, kh, kw, stride, pad)
    dx = b.xp.empty(tuple(x_shape), dtype=dout.dtype)
    b.kernel("avgpool2d_backward", dout.dtype).launch(dx.size, dout, dx, *geo,
                                                      bool(count_include_pad))
    return dx


# -- global average pooling ---------------------------------------------------------------------
# No kernel: a mean over each contiguous (H*W) plane and a broadcast back are what CuPy's own
# reductions and copies do well, so the NumPy bodies serve both devices.
@op
def global_avgpool2d_forward(x):
    """x: (N, C, H, W) -> (N, C): the mean of each channel's plane."""
    n, c = x.shape[:2]
    return get_array_module(x).ascontiguousarray(x).reshape(n, c, -1).mean(axis=2)


@op
def global_avgpool2d_backward(dout, x_shape: tuple):
    """dout: (N, C) -> dx: (N, C, H, W), each pixel dout / (H*W)."""
    xp = get_array_module(dout)
    dx = xp.empty(tuple(x_shape), dtype=dout.dtype)
    dx[...] = (dout / dout.dtype.type(x_shape[2] * x_shape[3]))[:, :, None, None]
    return dx


# -- fused ReLU + max pooling (gpunn.fuse: a ReLU directly followed by a MaxPool2d) --------------
# The NumPy bodies apply the ReLU chunk by chunk inside the pooling loop (its pass stays in
# cache) with the same arithmetic as the two ops one after the other, so the CPU computes
# exactly what the unfused layers do; the CUDA bodies save the ReLU's pass (and its launch).
@op
def relu_maxpool2d_forward(x, kh: int, kw: int, stride: tuple, pad: tuple,
                           with_argmax: bool = True):
    """Max-pooling of relu(x): (out, argmax or None) as :func:`maxpool2d_forward` of
    ``relu_forward(x)``. x: (N, C, H, W)."""
    return _maxpool_numpy(x, kh, kw, stride, pad, with_argmax, relu=True)


@relu_maxpool2d_forward.cuda
def _relu_maxpool2d_forward_cuda(b, x, kh, kw, stride, pad, with_argmax=True):
    return _maxpool_forward_cuda(b, "relu_maxpool2d_forward", x, kh, kw, stride, pad, with_argmax)


@op
def relu_maxpool2d_backward(dout, argmax, x, kh: int, kw: int, stride: tuple, pad: tuple):
    """dx: (N, C, H, W) = relu_backward(maxpool2d_backward(dout, argmax, ...), x), x the
    forward's input (before the ReLU)."""
    return _maxpool_backward_numpy(dout, argmax, x.shape, kh, kw, stride, pad, x_relu=x)


@relu_maxpool2d_backward.cuda
def _relu_maxpool2d_backward_cuda(b, dout, argmax, x, kh, kw, stride, pad):
    dout, argmax = b.xp.ascontiguousarray(dout), b.xp.ascontiguousarray(argmax)
    x = b.xp.ascontiguousarray(x)
    _, geo = _geometry(x.shape, kh, kw, stride, pad)
    dx = b.xp.empty(x.shape, dtype=dout.dtype)
    b.kernel("relu_maxpool2d_backward", dout.dtype).launch(dx.size, dout, argmax, x, dx, *geo)
    return dx
