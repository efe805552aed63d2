"""Max and average pooling over NCHW: the NumPy bodies (CUDA bodies beside them).

Semantics shared with kernels/pool.cu:
- stride = (sy, sx), pad = (pt, pb, pl, pr); oh = (H + pt + pb - kh) // sy + 1, same for ow.
- max: padding acts as -inf; ``argmax`` (int32, (N, C, oh, ow)) is the flat index h*W + w of
  the chosen pixel in the unpadded plane; ties go to the first maximum in row-major window
  order (as PyTorch). Backward sends each window's gradient to its argmax pixel, summing where
  overlapping windows chose the same pixel. (The CPU body multiplies dout by a 0/1 mask, so a
  non-finite dout also reaches the window's other pixels as NaN; finite values are exact.)
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
@op
def maxpool2d_forward(x, kh: int, kw: int, stride: tuple, pad: tuple, with_argmax: bool = True):
    """x: (N, C, H, W) -> (out (N, C, oh, ow), argmax int32 (N, C, oh, ow) or None).

    Evaluation needs no argmax: ``with_argmax=False`` skips it (on the CPU that is ~2.5x faster
    for a 2x2 pool, the plain maximum of four slices).
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    sy, sx = stride
    oh, ow = _out_size(h, w, kh, kw, stride, pad)
    xpad = pad_input(x, pad, -np.inf)
    out = _slice(xpad, 0, 0, sy, sx, oh, ow).copy()
    if not with_argmax:
        for k in range(1, kh * kw):
            xp.maximum(out, _slice(xpad, k // kw, k % kw, sy, sx, oh, ow), out=out)
        return out, None
    # offset: the window offset k = i*kw + j of the running maximum. A strict `>` moves it only
    # on a larger value, so ties keep the first maximum. k only grows, so "set offset to k where
    # better" is maximum(offset, better * k): plain uint8 arithmetic, which makes this forward
    # ~3x faster than with the masked assignment offset[better] = k.
    offset = xp.zeros(out.shape, dtype=np.uint8 if kh * kw <= 256 else np.int32)
    for k in range(1, kh * kw):
        s = _slice(xpad, k // kw, k % kw, sy, sx, oh, ow)
        better = (s > out).astype(offset.dtype)
        xp.maximum(out, s, out=out)
        better *= offset.dtype.type(k)
        xp.maximum(offset, better, out=offset)
    # flat index = window origin + the offset's (i*W + j): a lookup and one add, in int32
    argmax = xp.take(_offset_table(kh, kw, w, xp), offset)
    argmax += _window_base(h, w, oh, ow, stride, pad, xp)
    return out, argmax


@maxpool2d_forward.cuda
def _maxpool2d_forward_cuda(b, x, kh, kw, stride, pad, with_argmax=True):
    x = b.xp.ascontiguousarray(x)
    out_shape, geo = _geometry(x.shape, kh, kw, stride, pad)
    y = b.xp.empty(out_shape, dtype=x.dtype)
    if not with_argmax:
        b.kernel("maxpool2d_forward_noargmax", x.dtype).launch(y.size, x, y, *geo)
        return y, None
    argmax = b.xp.empty(out_shape, dtype=np.int32)
    b.kernel("maxpool2d_forward", x.dtype).launch(y.size, x, y, argmax, *geo)
    return y, argmax



@op
def maxpool2d_backward(dout, argmax, x_shape: tuple, kh: int, kw: int, stride: tuple, pad: tuple):
    """dout, argmax: (N, C, oh, ow) -> dx: (N, C, H, W)."""
    xp = get_array_module(dout)
    n, c, h, w = x_shape
    sy, sx = stride
    pt, pb, pl, pr = pad
    oh, ow = dout.shape[2:]
    base = _window_base(h, w, oh, ow, stride, pad, xp)
    table = _offset_table(kh, kw, w, xp)
    dxp = xp.zeros((n, c, h + pt + pb, w + pl + pr), dtype=dout.dtype)
    disjoint = sy >= kh and sx >= kw         # e.g. 2x2 stride 2: every pixel in <= 1 window
    for k in range(kh * kw):
        # windows whose maximum sits at offset k send their gradient through that slice;
        # dout * mask is ~6x faster than where(mask, dout, 0) and equal for finite dout
        chosen = argmax == (base + table[k])
        target = _slice(dxp, k // kw, k % kw, sy, sx, oh, ow)
        if disjoint:
            xp.multiply(dout, chosen, out=target)    # plain assignment: no slice overlaps
        else:
            target += dout * chosen
    return crop_padding(dxp, pad, h, w)


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
# The NumPy bodies are the two ops one after the other, so the CPU computes exactly what the
# unfused layers do; the CUDA bodies save the ReLU's pass (and its launch) each way.
@op
def relu_maxpool2d_forward(x, kh: int, kw: int, stride: tuple, pad: tuple,
                           with_argmax: bool = True):
    """Max-pooling of relu(x): (out, argmax or None) as :func:`maxpool2d_forward` of
    ``relu_forward(x)``. x: (N, C, H, W)."""
    from .activation import relu_forward
    return maxpool2d_forward(relu_forward(x), kh, kw, stride, pad, with_argmax)


@relu_maxpool2d_forward.cuda
def _relu_maxpool2d_forward_cuda(b, x, kh, kw, stride, pad, with_argmax=True):
    x = b.xp.ascontiguousarray(x)
    out_shape, geo = _geometry(x.shape, kh, kw, stride, pad)
    y = b.xp.empty(out_shape, dtype=x.dtype)
    if not with_argmax:
        b.kernel("relu_maxpool2d_forward_noargmax", x.dtype).launch(y.size, x, y, *geo)
        return y, None
    argmax = b.xp.empty(out_shape, dtype=np.int32)
    b.kernel("relu_maxpool2d_forward", x.dtype).launch(y.size, x, y, argmax, *geo)
    return y, argmax


@op
def relu_maxpool2d_backward(dout, argmax, x, kh: int, kw: int, stride: tuple, pad: tuple):
    """dx: (N, C, H, W) = relu_backward(maxpool2d_backward(dout, argmax, ...), x), x the
    forward's input (before the ReLU)."""
    from .activation import relu_backward
    return relu_backward(maxpool2d_backward(dout, argmax, x.shape, kh, kw, stride, pad), x)


@relu_maxpool2d_backward.cuda
def _relu_maxpool2d_backward_cuda(b, dout, argmax, x, kh, kw, stride, pad):
    dout, argmax = b.xp.ascontiguousarray(dout), b.xp.ascontiguousarray(argmax)
    x = b.xp.ascontiguousarray(x)
    _, geo = _geometry(x.shape, kh, kw, stride, pad)
    dx = b.xp.empty(x.shape, dtype=dout.dtype)
    b.kernel("relu_maxpool2d_backward", dout.dtype).launch(dx.size, dout, argmax, x, dx, *geo)
    return dx
