"""im2col / col2im for NCHW convolutions: the NumPy body and the CUDA body side by side.

Layout (shared with kernels/im2col.cu):
    col: (C*kh*kw, N*oh*ow); row (c*kh + i)*kw + j, column (n*oh + y)*ow + x
    col[row, col] = x[n, c, y*sy + i - pt, x*sx + j - pl], or 0 outside the image.
``col2im`` is its adjoint: each pixel receives the sum of every col entry that read it.

stride = (sy, sx); pad = (pt, pb, pl, pr): top, bottom, left, right (asymmetric for "same").
"""
from __future__ import annotations


from ..backend import get_array_module
from ._cuda import contiguous, i32, launch, use_cuda_body
from .geometry import conv_output_size, crop_padding, pad_input

__all__ = ["im2col", "col2im"]


# -- im2col -------------------------------------------------------------------------------------
def im2col(x, kh: int, kw: int, stride: tuple, pad: tuple):
    """x: (N, C, H, W) -> col: (C*kh*kw, N*oh*ow)."""
    if use_cuda_body(x):
        return _im2col_cuda(x, kh, kw, stride, pad)
    return _im2col_cpu(x, kh, kw, stride, pad)


def _windows(xpad, kh, kw, sy, sx, oh, ow):
    """A strided view (C, kh, kw, N, oh, ow) of the padded input: no copy, no index arrays."""
    xp = get_array_module(xpad)
    sn, sc, sh, sw = xpad.strides
    n, c = xpad.shape[:2]
    return xp.lib.stride_tricks.as_strided(
        xpad, shape=(c, kh, kw, n, oh, ow), strides=(sc, sh, sw, sn, sh * sy, sw * sx))


def _im2col_cpu(x, kh, kw, stride, pad):
    n, c, h, w = x.shape
    sy, sx = stride
    oh = conv_output_size(h, kh, sy, pad[0], pad[1])
    ow = conv_output_size(w, kw, sx, pad[2], pad[3])
    xpad = pad_input(get_array_module(x).ascontiguousarray(x), pad)
    # one copy: the view's (C, kh, kw) rows and (N, oh, ow) columns flatten in col's order
    return _windows(xpad, kh, kw, sy, sx, oh, ow).reshape(c * kh * kw, n * oh * ow)


# -- col2im -------------------------------------------------------------------------------------
def col2im(col, x_shape: tuple, kh: int, kw: int, stride: tuple, pad: tuple):
    """col: (C*kh*kw, N*oh*ow) -> dx: (N, C, H, W), summing overlapping contributions."""
    if use_cuda_body(col):
        return _col2im_cuda(col, x_shape, kh, kw, stride, pad)
    return _col2im_cpu(col, x_shape, kh, kw, stride, pad)


def _col2im_cpu(col, x_shape, kh, kw, stride, pad):
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


# -- CUDA bodies: kernels/im2col.cu -----------------------------------------------------------
def _geometry_args(x_shape, kh, kw, stride, pad):
    n, c, h, w = x_shape
    oh = conv_output_size(h, kh, stride[0], pad[0], pad[1])
    ow = conv_output_size(w, kw, stride[1], pad[2], pad[3])
    return oh, ow, tuple(i32(v) for v in (n, c, h, w, kh, kw, stride[0], stride[1], pad[0],
                                          pad[2], oh, ow))


def _im2col_cuda(x, kh, kw, stride, pad):
    """One thread per col entry (grid-stride): a gather, no index arrays."""
    x = contiguous(x)
    n, c = x.shape[:2]
    oh, ow, geo = _geometry_args(x.shape, kh, kw, stride, pad)
    col = get_array_module(x).empty((c * kh * kw, n * oh * ow), dtype=x.dtype)
    launch("im2col", x, col.size, (x, col, *geo))
    return col


def _col2im_cuda(col, x_shape, kh, kw, stride, pad):
    """One thread per input pixel summing the col entries that read it: no atomics."""
    col = contiguous(col)
    _, _, geo = _geometry_args(x_shape, kh, kw, stride, pad)
    dx = get_array_module(col).empty(tuple(x_shape), dtype=col.dtype)
    launch("col2im", col, dx.size, (col, dx, *geo))
    return dx
