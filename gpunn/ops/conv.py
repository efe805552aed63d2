"""im2col / col2im for NCHW convolutions: the NumPy body and the CUDA body side by side.

Layout (shared with kernels/im2col.cu):
    col: (C*kh*kw, N*oh*ow); row (c*kh + i)*kw + j, column (n*oh + y)*ow + x
    col[row, col] = x[n, c, y*sy + i - pt, x*sx + j - pl], or 0 outside the image.
``col2im`` is its adjoint: each pixel receives the sum of every col entry that read it.

stride = (sy, sx); pad = (pt, pb, pl, pr): top, bottom, left, right (asymmetric for "same").
"""
from __future__ import annotations


from ..backend import get_array_module
from .dispatch import op
from .geometry import conv_output_size, crop_padding, pad_input

__all__ = ["im2col", "col2im", "conv_output", "conv_output_backward"]


# -- im2col -------------------------------------------------------------------------------------
def _windows(xpad, kh, kw, sy, sx, oh, ow):
    """A strided view (C, kh, kw, N, oh, ow) of the padded input: no copy, no index arrays."""
    xp = get_array_module(xpad)
    sn, sc, sh, sw = xpad.strides
    n, c = xpad.shape[:2]
    return xp.lib.stride_tricks.as_strided(
        xpad, shape=(c, kh, kw, n, oh, ow), strides=(sc, sh, sw, sn, sh * sy, sw * sx))


@op
def im2col(x, kh: int, kw: int, stride: tuple, pad: tuple):
    """x: (N, C, H, W) -> col: (C*kh*kw, N*oh*ow)."""
    n, c, h, w = x.shape
    sy, sx = stride
    oh = conv_output_size(h, kh, sy, pad[0], pad[1])
    ow = conv_output_size(w, kw, sx, pad[2], pad[3])
    xpad = pad_input(get_array_module(x).ascontiguousarray(x), pad)
    # one copy: the view's (C, kh, kw) rows and (N, oh, ow) columns flatten in col's order
    return _windows(xpad, kh, kw, sy, sx, oh, ow).reshape(c * kh * kw, n * oh * ow)


def _geometry(x_shape, kh, kw, stride, pad):
    """The kernels' geometry arguments: (n, c, h, w, kh, kw, sy, sx, pt, pl, oh, ow)."""
    n, c, h, w = x_shape
    oh = conv_output_size(h, kh, stride[0], pad[0], pad[1])
    ow = conv_output_size(w, kw, stride[1], pad[2], pad[3])
    return (n, c, h, w, kh, kw, stride[0], stride[1], pad[0], pad[2], oh, ow)


@im2col.cuda
def _im2col_cuda(b, x, kh, kw, stride, pad):
    """kernels/im2col.cu: one thread per col entry (grid-stride), a gather, no index arrays."""
    x = b.xp.ascontiguousarray(x)
    geo = _geometry(x.shape, kh, kw, stride, pad)
    n, c, oh, ow = geo[0], geo[1], geo[10], geo[11]
    col = b.xp.empty((c * kh * kw, n * oh * ow), dtype=x.dtype)
    b.kernel("im2col", x.dtype).launch(col.size, x, col, *geo)
    return col


# -- col2im -------------------------------------------------------------------------------------
@op
def col2im(col, x_shape: tuple, kh: int, kw: int, stride: tuple, pad: tuple):
    """col: (C*kh*kw, N*oh*ow) -> dx: (N, C, H, W), summing overlapping contributions."""
    xp = get_array_module(col)
    n, c, h, w = x_shape
    sy, sx = stride
    pt, pb, pl, pr = pad
    oh = conv_output_size(h, kh, sy, pt, pb)
    ow = conv_output_size(w, kw, sx, pl, pr)
    cols = col.reshape(c, kh, kw, n, oh, ow)
    # Accumulate one kernel offset at a time: each (i, j) touches a strided grid of pixels
    # with no repeats, so a plain += on a strided slice is exact (no np.add.at needed).
    dxp = xp.zeros((n, c, h + pt + pb, w + pl + pr), dtype=col.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i:i + sy * oh:sy, j:j + sx * ow:sx] += cols[:, i, j].transpose(1, 0, 2, 3)
    return crop_padding(dxp, pad, h, w)


@col2im.cuda
def _col2im_cuda(b, col, x_shape, kh, kw, stride, pad):
    """kernels/im2col.cu: one thread per input pixel summing the col entries that read it
    (no atomics)."""
    col = b.xp.ascontiguousarray(col)
    dx = b.xp.empty(tuple(x_shape), dtype=col.dtype)
    b.kernel("col2im", col.dtype).launch(dx.size, col, dx, *_geometry(x_shape, kh, kw, stride, pad))
    return dx


# -- the convolution's output: bias, fused ReLU, NCHW layout ------------------------------------
@op
def conv_output(ycol, b, n: int, oh: int, ow: int, relu: bool = False):
    """The GEMM's ycol: (O, N*oh*ow) -> y: (N, O, oh, ow), plus the bias b: (O,) (or None),
    then ReLU when ``relu`` (a Conv2d fused with the ReLU after it, gpunn.fuse). ``ycol`` may
    be overwritten."""
    o = ycol.shape[0]
    if b is not None:
        ycol += b[:, None]
    y = get_array_module(ycol).ascontiguousarray(ycol.reshape(o, n, oh, ow).transpose(1, 0, 2, 3))
    if relu:
        from .activation import relu_forward
        y = relu_forward(y)
    return y


@conv_output.cuda
def _conv_output_cuda(bk, ycol, b, n, oh, ow, relu=False):
    """kernels/conv_epilogue.cu: one pass (bias, ReLU, layout) instead of three."""
    ycol = bk.xp.ascontiguousarray(ycol)
    o = ycol.shape[0]
    y = bk.xp.empty((n, o, oh, ow), dtype=ycol.dtype)
    bias = ycol if b is None else bk.xp.ascontiguousarray(b)   # unread without a bias
    bk.kernel("conv_output_forward", ycol.dtype).launch(y.size, ycol, bias, y, n, o, oh * ow,
                                                        b is not None, bool(relu))
    return y


@op
def conv_output_backward(dout, y=None):
    """dout: (N, O, oh, ow) -> d: (O, N*oh*ow), the GEMM-side gradient; with the forward's
    output ``y`` (a fused ReLU) masked by y > 0 first."""
    if y is not None:
        from .activation import relu_backward
        dout = relu_backward(dout, y)
    return dout.transpose(1, 0, 2, 3).reshape(dout.shape[1], -1)


@conv_output_backward.cuda
def _conv_output_backward_cuda(bk, dout, y=None):
    dout = bk.xp.ascontiguousarray(dout)
    n, o, oh, ow = dout.shape
    d = bk.xp.empty((o, n * oh * ow), dtype=dout.dtype)
    mask = dout if y is None else bk.xp.ascontiguousarray(y)   # unread without a ReLU
    bk.kernel("conv_output_backward", dout.dtype).launch(d.size, dout, mask, d, n, o, oh * ow,
                                                         y is not None)
    return d
