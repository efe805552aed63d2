"""Sliding-window geometry shared by convolution and pooling: padding, output sizes, and the
padded buffers both build.

pad = (pt, pb, pl, pr): top, bottom, left, right (asymmetric for TensorFlow's "same").
"""
from __future__ import annotations

from ..backend import get_array_module
from ..errors import ShapeError

__all__ = ["pair", "same_padding", "conv_output_size", "normalize_padding", "window_geometry",
           "pad_input", "crop_padding"]


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
    kh, kw = kernel
    sy, sx = stride
    pad = normalize_padding(padding, h, w, kh, kw, sy, sx, where)
    oh = conv_output_size(h, kh, sy, pad[0], pad[1])
    ow = conv_output_size(w, kw, sx, pad[2], pad[3])
    if oh <= 0 or ow <= 0:
        raise ShapeError(f"{where}: a {kh}x{kw} {what} does not fit a {h}x{w} input "
                         f"with padding {pad[:2]}/{pad[2:]}")
    return pad, oh, ow


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
