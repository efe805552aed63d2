"""Conv2d and im2col/col2im: loop references, adjointness, gradients, dtypes, errors."""
import itertools

import numpy as np
import pytest

from gpunn.errors import DTypeError, ShapeError
from gpunn.gradcheck import check_layer
from gpunn.layers import Conv2d
from gpunn.ops.conv import col2im, im2col
from gpunn.ops.geometry import same_padding

F64 = np.float64


def conv_loop(x, W, b, stride, pad):
    """Direct definition: y[n,o,i,j] = b[o] + sum_{c,p,q} W[o,c,p,q] * xpad[n,c,i*sy+p,j*sx+q]."""
    n, c, h, w = x.shape
    o, _, kh, kw = W.shape
    sy, sx = stride
    pt, pb, pl, pr = pad
    xp = np.zeros((n, c, h + pt + pb, w + pl + pr))
    xp[:, :, pt:pt + h, pl:pl + w] = x
    oh = (h + pt + pb - kh) // sy + 1
    ow = (w + pl + pr - kw) // sx + 1
    y = np.zeros((n, o, oh, ow))
    for ni, oi, i, j in itertools.product(range(n), range(o), range(oh), range(ow)):
        y[ni, oi, i, j] = (W[oi] * xp[ni, :, i * sy:i * sy + kh, j * sx:j * sx + kw]).sum() + \
            (b[oi] if b is not None else 0)
    return y


CONFIGS = [(k, s, p) for k in (1, 3, 5) for s in (1, 2) for p in (0, 1, "same")]


@pytest.mark.parametrize("k,s,p", CONFIGS)
def test_forward_matches_loop(k, s, p, rng):
    x = rng.standard_normal((2, 3, 7, 9))
    layer = Conv2d(3, 4, k, stride=s, padding=p, rng=1, dtype=F64)
    layer.params["b"][...] = rng.standard_normal(4)
    pad = (*same_padding(7, k, s), *same_padding(9, k, s)) if p == "same" else (p, p, p, p)
    ref = conv_loop(x, layer.params["W"], layer.params["b"], (s, s), pad)
    np.testing.assert_allclose(layer.forward(x), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("k,s,p", CONFIGS)
def test_gradcheck(k, s, p, bias, rng):
    x = rng.standard_normal((2, 2, 7, 5))
    layer = Conv2d(2, 3, k, stride=s, padding=p, bias=bias, rng=0, dtype=F64)
    res = check_layer(layer, x)
    assert res.max_rel_error < 1e-6, str(res)


def test_gradcheck_no_bias_rectangular(rng):
    layer = Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 0), bias=False, rng=0, dtype=F64)
    res = check_layer(layer, rng.standard_normal((3, 2, 8, 5)))
    assert res.max_rel_error < 1e-6, str(res)
    assert "b" not in layer.params


@pytest.mark.parametrize("in_size,k,s,expect", [
    (28, 3, 1, (1, 1)), (28, 3, 2, (0, 1)), (7, 5, 2, (2, 2)), (8, 5, 2, (1, 2)),
    (5, 1, 1, (0, 0)), (6, 2, 2, (0, 0)), (7, 2, 2, (0, 1)), (4, 7, 3, (3, 3))])
def test_same_padding_tensorflow(in_size, k, s, expect):
    assert same_padding(in_size, k, s) == expect
    pt, pb = expect
    assert (in_size + pt + pb - k) // s + 1 == -(-in_size // s)      # out = ceil(in / s)


@pytest.mark.parametrize("k,s,pad", [(3, 1, (1, 1, 1, 1)), (3, 2, (0, 1, 1, 0)), (2, 3, (0, 0, 0, 0)),
                                     (5, 2, (2, 2, 1, 2))])
def test_im2col_col2im_adjoint(k, s, pad, rng):
    x = rng.standard_normal((2, 3, 9, 8))
    col = im2col(x, k, k, (s, s), pad)
    c = rng.standard_normal(col.shape)
    lhs = (col2im(c, x.shape, k, k, (s, s), pad) * x).sum()
    np.testing.assert_allclose(lhs, (c * col).sum(), rtol=1e-12)


def test_im2col_layout(rng):
    x = rng.standard_normal((2, 3, 5, 4))
    col = im2col(x, 3, 2, (2, 1), (1, 0, 0, 1))
    oh, ow = (5 + 1 - 3) // 2 + 1, (4 + 1 - 2) + 1
    assert col.shape == (3 * 3 * 2, 2 * oh * ow)
    xpad = np.pad(x, ((0, 0), (0, 0), (1, 0), (0, 1)))
    for c, i, j, n, y, xx in [(2, 1, 1, 1, 1, 2), (0, 0, 0, 0, 0, 0), (1, 2, 0, 1, 1, 3)]:
        assert col[(c * 3 + i) * 2 + j, (n * oh + y) * ow + xx] == xpad[n, c, y * 2 + i, xx + j]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_preserved(dtype, rng):
    layer = Conv2d(3, 4, 3, padding="same", rng=0, dtype=dtype)
    x = rng.standard_normal((2, 3, 6, 6)).astype(dtype)
    y = layer.forward(x, train=True)
    dx = layer.backward(np.ones_like(y))
    assert y.dtype == dx.dtype == layer.grads["W"].dtype == layer.grads["b"].dtype == dtype
    col = im2col(x, 3, 3, (1, 1), (1, 1, 1, 1))
    assert col.dtype == dtype and col2im(col, x.shape, 3, 3, (1, 1), (1, 1, 1, 1)).dtype == dtype


def test_bad_inputs():
    layer = Conv2d(3, 8, 3)
    with pytest.raises(ShapeError, match=r"Conv2d\(3, 8.*3 channels.*\(2, 4, 9, 9\)"):
        layer.forward(np.zeros((2, 4, 9, 9), np.float32))
    with pytest.raises(ShapeError, match=r"Conv2d\(3, 8.*4-d input.*\(2, 3, 9\)"):
        layer.forward(np.zeros((2, 3, 9), np.float32))
    with pytest.raises(DTypeError, match=r"Conv2d.*float64 does not match.*float32"):
        layer.forward(np.zeros((2, 3, 9, 9)))
    with pytest.raises(DTypeError, match=r"Conv2d.*int32"):
        layer.forward(np.zeros((2, 3, 9, 9), np.int32))
    with pytest.raises(ShapeError, match="does not fit a 2x2 input"):
        layer.forward(np.zeros((2, 3, 2, 2), np.float32))
    with pytest.raises(ValueError, match="padding must be"):
        Conv2d(3, 8, 3, padding="valid")


def test_output_shape():
    assert Conv2d(3, 8, 3).output_shape((3, 28, 28)) == (8, 26, 26)
    assert Conv2d(3, 8, 3, stride=2, padding="same").output_shape((3, 7, 9)) == (8, 4, 5)
    assert Conv2d(3, 8, (5, 3), stride=(1, 2), padding=(2, 0)).output_shape((3, 7, 9)) == (8, 7, 4)
    with pytest.raises(ShapeError, match=r"Conv2d\(3, 8.*\(3, H, W\), got \(4, 28, 28\)"):
        Conv2d(3, 8, 3).output_shape((4, 28, 28))
    with pytest.raises(ShapeError, match=r"Conv2d\(3, 8.*5x5 kernel does not fit a 4x9 input"):
        Conv2d(3, 8, 5).output_shape((3, 4, 9))
