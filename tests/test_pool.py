"""Max and average pooling: loop references, ties, gradients, dtypes, errors."""
import itertools

import numpy as np
import pytest

from gpunn.errors import DTypeError, ShapeError
from gpunn.gradcheck import check_layer
from gpunn.layers import AvgPool2d, MaxPool2d
from gpunn.ops.geometry import same_padding
from gpunn.ops.pool import maxpool2d_forward

F64 = np.float64


def _pad(h, w, k, s, p):
    if p == "same":
        return (*same_padding(h, k, s), *same_padding(w, k, s))
    return (p, p, p, p)


def pool_loop(x, k, s, pad, kind, count_include_pad=False):
    """Reference, window by window: (out, argmax); argmax is the flat index h*W + w of the first
    maximum in row-major window order (kind="max")."""
    n, c, h, w = x.shape
    pt, pb, pl, pr = pad
    oh, ow = (h + pt + pb - k) // s + 1, (w + pl + pr - k) // s + 1
    out = np.zeros((n, c, oh, ow))
    arg = np.zeros((n, c, oh, ow), np.int64)
    for ni, ci, i, j in itertools.product(range(n), range(c), range(oh), range(ow)):
        best, besti, total, count = -np.inf, -1, 0.0, 0
        for p, q in itertools.product(range(k), range(k)):
            y, xx = i * s + p - pt, j * s + q - pl
            if 0 <= y < h and 0 <= xx < w:
                v = x[ni, ci, y, xx]
                total += v
                count += 1
                if v > best:
                    best, besti = v, y * w + xx
        out[ni, ci, i, j] = best if kind == "max" else total / (k * k if count_include_pad else count)
        arg[ni, ci, i, j] = besti
    return out, arg


def op_argmax(x, k, s, p):
    """The argmax the max-pool op hands to backward (int32, flat index h*W + w)."""
    _, arg = maxpool2d_forward(x, k, k, (s, s), _pad(x.shape[2], x.shape[3], k, s, p))
    assert arg.dtype == np.int32
    return arg


def maxpool_backward_loop(dout, arg, x_shape):
    """Reference: each window's gradient goes to its argmax pixel, summed over windows."""
    n, c, h, w = x_shape
    dx = np.zeros((n, c, h * w))
    for ni, ci, i, j in itertools.product(*map(range, dout.shape)):
        dx[ni, ci, arg[ni, ci, i, j]] += dout[ni, ci, i, j]
    return dx.reshape(x_shape)


# (kernel, stride, padding): disjoint windows (2/2, 3/3, 2/3 with gaps) and overlapping ones
CONFIGS = [(2, 2, 0), (3, 2, 0), (3, 1, 1), (3, 2, "same"), (2, 2, "same"), (3, 3, 1), (2, 1, 0),
           (2, 3, 0)]


@pytest.mark.parametrize("k,s,p", CONFIGS)
def test_maxpool_forward_matches_loop(k, s, p, rng):
    x = rng.standard_normal((2, 3, 7, 9))
    layer = MaxPool2d(k, s, p)
    out, arg = pool_loop(x, k, s, _pad(7, 9, k, s, p), "max")
    np.testing.assert_array_equal(layer.forward(x), out)           # evaluation: no argmax
    np.testing.assert_array_equal(layer.forward(x, train=True), out)
    np.testing.assert_array_equal(op_argmax(x, k, s, p), arg)
    dout = rng.standard_normal(out.shape)      # the layer's backward routes through that argmax
    np.testing.assert_allclose(layer.backward(dout), maxpool_backward_loop(dout, arg, x.shape),
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("k,s,p", CONFIGS)
@pytest.mark.parametrize("include", [False, True])
def test_avgpool_forward_matches_loop(k, s, p, include, rng):
    x = rng.standard_normal((2, 3, 7, 9))
    out, _ = pool_loop(x, k, s, _pad(7, 9, k, s, p), "avg", include)
    np.testing.assert_allclose(AvgPool2d(k, s, p, count_include_pad=include).forward(x), out,
                               rtol=1e-12)


@pytest.mark.parametrize("k,s,p", CONFIGS)
def test_gradcheck(k, s, p, rng):
    x = rng.standard_normal((2, 2, 7, 6))
    for layer in (MaxPool2d(k, s, p), AvgPool2d(k, s, p)):
        res = check_layer(layer, x)
        assert res.max_rel_error < 1e-6, f"{layer!r}: {res}"


def test_maxpool_ties_go_to_first_maximum():
    x = np.zeros((1, 1, 4, 4))           # every window is a tie
    x[0, 0, 3, 3] = -1
    layer = MaxPool2d(2)
    layer.forward(x, train=True)
    dx = layer.backward(np.ones((1, 1, 2, 2)))
    expect = np.zeros((4, 4))
    expect[[0, 0, 2, 2], [0, 2, 0, 2]] = 1
    np.testing.assert_array_equal(dx[0, 0], expect)


@pytest.mark.parametrize("k,s,p", CONFIGS)
def test_maxpool_ties_match_loop(k, s, p, rng):
    """Few distinct values, so most windows tie: argmax and dx must pick the first maximum."""
    x = rng.integers(0, 3, (2, 3, 7, 9)).astype(F64)
    out, arg = pool_loop(x, k, s, _pad(7, 9, k, s, p), "max")
    layer = MaxPool2d(k, s, p)
    np.testing.assert_array_equal(layer.forward(x, train=True), out)
    np.testing.assert_array_equal(op_argmax(x, k, s, p), arg)
    dout = rng.standard_normal(out.shape)
    np.testing.assert_allclose(layer.backward(dout), maxpool_backward_loop(dout, arg, x.shape),
                               rtol=1e-12, atol=1e-15)


def test_maxpool_large_window_matches_loop(rng):
    """A 17x17 window has more offsets than uint8 holds: the int32 offset path."""
    x = rng.integers(0, 4, (1, 2, 18, 20)).astype(F64)
    out, arg = pool_loop(x, 17, 1, (0, 0, 0, 0), "max")
    layer = MaxPool2d(17, 1)
    np.testing.assert_array_equal(layer.forward(x, train=True), out)
    np.testing.assert_array_equal(op_argmax(x, 17, 1, 0), arg)
    dout = rng.standard_normal(out.shape)
    np.testing.assert_allclose(layer.backward(dout), maxpool_backward_loop(dout, arg, x.shape),
                               rtol=1e-12, atol=1e-15)


def test_overlapping_windows_accumulate():
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 5                   # the centre is the max of all four 2x2 windows
    layer = MaxPool2d(2, 1)
    layer.forward(x, train=True)
    dx = layer.backward(np.full((1, 1, 2, 2), 1.5))
    assert dx[0, 0, 1, 1] == 6.0 and dx.sum() == 6.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls", [MaxPool2d, AvgPool2d])
def test_dtype_preserved(cls, dtype, rng):
    layer = cls(3, 2, "same")
    x = rng.standard_normal((2, 3, 7, 7)).astype(dtype)
    y = layer.forward(x, train=True)
    assert y.dtype == dtype and layer.backward(np.ones_like(y)).dtype == dtype


def test_bad_inputs():
    with pytest.raises(ShapeError, match=r"MaxPool2d.*4-d input.*\(3, 8, 8\)"):
        MaxPool2d(2).forward(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(ShapeError, match="MaxPool2d.*does not fit a 1x1 input"):
        MaxPool2d(2).output_shape((8, 1, 1))
    with pytest.raises(ValueError, match="at most half the kernel"):
        MaxPool2d(2, padding=2)
    for cls in (MaxPool2d, AvgPool2d):
        with pytest.raises(DTypeError, match=cls.__name__ + r".*float32 or float64, got int64"):
            cls(2).forward(np.zeros((1, 1, 4, 4), np.int64))


def test_too_many_pools_for_the_image():
    shape = (4, 7, 7)
    for _ in range(2):
        shape = MaxPool2d(2).output_shape(shape)
    assert shape == (4, 1, 1)
    with pytest.raises(ShapeError, match=r"MaxPool2d\(kernel_size=\(2, 2\).*2x2 window does not "
                                         r"fit a 1x1 input"):
        MaxPool2d(2).output_shape(shape)
    assert AvgPool2d(3, 2, "same").output_shape((4, 1, 1)) == (4, 1, 1)   # "same" always fits
