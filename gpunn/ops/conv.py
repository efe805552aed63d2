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

__all__ = ["same_padding", "conv_output_size", "normalize_padding", "window_geometry", "im2col",
           "col2im"]


def same_padding(in_size: int, k: int, s: int) -> tuple:
    """TensorFlow "same": out = ceil(in / s); the odd extra pad goes after (bottom/right)."""
    out = -(-in_size // s)
    total = max((out - 1) * s + k - in_size, 0)
    return total // 2, total - total // 2


def conv_output_size(in_size: int, k: int, s: int, pad_before: int, pad_after: int) -> int:
    """Output length of a sliding window; <= 0 means the window does not fit."""
    return (in_size + pad_before + pad_after - k) // s + 1


def pair(v, name: str, where: str) -> tuple:
    """An int or a pair of ints -> (a, b); anything else is an error naming ``where``."""
    if isinstance(v, (tuple, list)) and len(v) == 2:
        a, b = v
    else:
        a = b = v
    try:
        a, b = int(a), int(b)
    except (TypeError, ValueError):
        raise TypeError(f"{where}: {name} must be an int or a pair of ints, got {v!r}") from None
    return a, b


def normalize_padding(padding, h: int, w: int, kh: int, kw: int, sy: int, sx: int,
                      where: str) -> tuple:
    """``padding`` (int, pair, or "same") -> (pt, pb, pl, pr) for an (h, w) input."""
    if isinstance(padding, str):
        if padding.lower() != "same":
            raise ValueError(f"{where}: padding must be an int, a pair or 'same', got {padding!r}")
        return (*same_padding(h, kh, sy), *same_padding(w, kw, sx))
    ph, pw = pair(padding, "padding", where)
    if ph < 0 or pw < 0:
        raise ValueError(f"{where}: padding must be >= 0, got {padding!r}")
    return ph, ph, pw, pw


def window_geometry(h: int, w: int, kernel: tuple, stride: tuple, padding, where: str,
                    what: str = "kernel") -> tuple:
    """Padding and output size of a sliding window over an (h, w) input:
    ``((pt, pb, pl, pr), oh, ow)``; a ShapeError naming ``where`` when the window cannot fit."""
    from ..errors import ShapeError
    kh, kw = kernel
    sy, sx = stride
    pad = normalize_padding(padding, h, w, kh, kw, sy, sx, where)
    oh = conv_output_size(h, kh, sy, pad[0], pad[1])
    ow = conv_output_size(w, kw, sx, pad[2], pad[3])
    if oh <= 0 or ow <= 0:
        raise ShapeError(f"{where}: a {kh}x{kw} {what} does not fit a {h}x{w} input "
                         f"with padding {pad[:2]}/{pad[2:]}")
    return pad, oh, ow


# -- im2col -------------------------------------------------------------------------------------
def im2col(x, kh: int, kw: int, stride: tuple, pad: tuple):
    """x: (N, C, H, W) -> col: (C*kh*kw, N*oh*ow)."""
    if use_cuda_body(x):
        return _im2col_cuda(x, kh, kw, stride, pad)
    return _im2col_cpu(x, kh, kw, stride, pad)


def pad_input(x, pad, value=0):
    """x: (N, C, H, W) -> (N, C, H + pt + pb, W + pl + pr) filled with ``value`` around x
    (x itself when there is no padding)."""
    xp = get_array_module(x)
    pt, pb, pl, pr = pad
    if pt == pb == pl == pr == 0:
        return x
    n, c, h, w = x.shape
    out = xp.full((n, c, h + pt + pb, w + pl + pr), value, dtype=x.dtype)
    out[:, :, pt:pt + h, pl:pl + w] = x
    return out


def crop_padding(dxp, pad, h: int, w: int):
    """The (N, C, h, w) interior of a padded gradient buffer, contiguous (dxp itself when
    there is no padding)."""
    pt, pb, pl, pr = pad
    if pt == pb == pl == pr == 0:
        return dxp
    return get_array_module(dxp).ascontiguousarray(dxp[:, :, pt:pt + h, pl:pl + w])


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
