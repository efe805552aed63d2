"""Linear, activations, dropout, batch-norm, flatten, residual: gradients, dtypes, errors."""
import numpy as np
import pytest

from gpunn.errors import DTypeError, ShapeError
from gpunn.gradcheck import check_layer
from gpunn.layers import (BatchNorm1d, BatchNorm2d, Dropout, Flatten, LeakyReLU, Linear, ReLU,
                          Residual, Sigmoid, Softmax, Tanh)

F64 = np.float64
TOL = 1e-6


def _away_from_kinks(x):
    """Nudge values off 0 so ReLU-family finite differences do not straddle the kink."""
    return np.where(np.abs(x) < 1e-3, 0.5, x)


LAYER_CASES = [
    ("linear", lambda: Linear(7, 4, rng=0, dtype=F64), (5, 7)),
    ("linear-nobias", lambda: Linear(7, 4, bias=False, rng=0, dtype=F64), (5, 7)),
    ("linear-he", lambda: Linear(3, 6, init="he_normal", rng=1, dtype=F64), (2, 3)),
    ("relu", ReLU, (4, 3, 5, 5)),
    ("leaky", lambda: LeakyReLU(0.2), (6, 9)),
    ("sigmoid", Sigmoid, (6, 9)),
    ("tanh", Tanh, (6, 9)),
    ("softmax", Softmax, (5, 7)),
    ("dropout", lambda: Dropout(0.5, seed=7), (4, 3, 5, 5)),
    ("bn1d", lambda: BatchNorm1d(6, dtype=F64), (8, 6)),
    ("bn2d", lambda: BatchNorm2d(3, dtype=F64), (4, 3, 5, 3)),
    ("bn2d-momentum", lambda: BatchNorm2d(2, momentum=0.5, eps=1e-3, dtype=F64), (3, 2, 4, 4)),
    ("flatten", Flatten, (3, 2, 4, 5)),
    ("residual", lambda: Residual(Linear(6, 6, rng=2, dtype=F64), Tanh(), Linear(6, 6, rng=3, dtype=F64)),
     (4, 6)),
]


@pytest.mark.parametrize("name,make,shape", LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
def test_gradcheck_train_mode(name, make, shape, rng):
    x = _away_from_kinks(rng.standard_normal(shape) * 2)
    res = check_layer(make(), x, train=True)
    assert res.max_rel_error < TOL, str(res)


@pytest.mark.parametrize("make,shape", [(lambda: BatchNorm1d(4, dtype=F64), (5, 4)),
                                        (lambda: BatchNorm2d(3, dtype=F64), (2, 3, 3, 3)),
                                        (lambda: Dropout(0.3, seed=1), (4, 4))])
def test_gradcheck_eval_mode(make, shape, rng):
    layer = make()
    if layer.buffers:   # make the running statistics non-trivial first
        layer.forward(rng.standard_normal(shape) * 3 + 1, train=True)
    res = check_layer(layer, rng.standard_normal(shape), train=False)
    assert res.max_rel_error < TOL, str(res)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,make,shape", LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
def test_dtype_preserved(name, make, shape, dtype, rng):
    layer = make()
    layer.to(dtype=dtype)      # parameters, gradients and buffers in the requested dtype
    x = rng.standard_normal(shape).astype(dtype)
    y = layer.forward(x, train=True)
    assert y.dtype == dtype
    dx = layer.backward(np.ones_like(y))
    assert dx.dtype == dtype
    for sub in layer.walk():
        for k, g in sub.grads.items():
            assert g.dtype == dtype, (name, k)
        for k, b in sub.buffers.items():
            assert b.dtype == dtype, (name, k)


def test_linear_matches_formula(rng):
    layer = Linear(3, 2, rng=0, dtype=F64)
    x = rng.standard_normal((4, 3))
    np.testing.assert_allclose(layer.forward(x), x @ layer.params["W"] + layer.params["b"])
    assert layer.params["W"].shape == (3, 2)


def test_params_are_read_at_each_call(rng):
    layer = Linear(3, 2, rng=0)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    layer.params["W"] = np.zeros((3, 2), np.float32)
    layer.params["b"] = np.ones(2, np.float32)
    np.testing.assert_array_equal(layer.forward(x), np.ones((4, 2), np.float32))


def test_grads_written_in_place(rng):
    layer = Linear(3, 2, rng=0)
    g = layer.grads["W"]
    x = rng.standard_normal((4, 3)).astype(np.float32)
    layer.forward(x, train=True)
    layer.backward(np.ones((4, 2), np.float32))
    assert layer.grads["W"] is g and np.abs(g).sum() > 0


def test_xavier_uniform_bounds():
    W = Linear(300, 100, rng=0).params["W"]
    a = np.sqrt(6 / 400)
    assert W.min() >= -a and W.max() <= a and W.max() > 0.9 * a
    assert abs(W.std() - a / np.sqrt(3)) < 0.01 * a
    np.testing.assert_array_equal(Linear(300, 100, rng=0).params["W"], W)  # seeded


def test_dropout_train_and_eval(rng):
    x = np.ones((200, 500), np.float32)
    d = Dropout(0.25, seed=3)
    y = d.forward(x, train=True)
    assert abs((y == 0).mean() - 0.25) < 0.01
    np.testing.assert_allclose(y[y != 0], 1 / 0.75, rtol=1e-6)
    assert abs(float(y.mean()) - 1.0) < 0.02           # inverted dropout keeps the mean
    y2 = d.forward(x, train=True)
    assert not np.array_equal(y, y2)                   # a new mask each step
    np.testing.assert_array_equal(d.forward(x, train=False), x)
    d2 = Dropout(0.25, seed=3)
    np.testing.assert_array_equal(d2.forward(x, train=True), y)   # same (seed, step) -> same mask
    with pytest.raises(ValueError, match="p must be in"):
        Dropout(1.0)


def test_batchnorm_statistics_and_running(rng):
    bn = BatchNorm2d(3, momentum=0.1, dtype=F64)
    x = rng.standard_normal((8, 3, 4, 4)) * 2 + 5
    y = bn.forward(x, train=True)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-4)
    np.testing.assert_allclose(bn.buffers["running_mean"], 0.1 * x.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(bn.buffers["running_var"],
                               0.9 + 0.1 * x.var(axis=(0, 2, 3), ddof=1))
    ye = bn.forward(x, train=False)
    rm, rv = bn.buffers["running_mean"], bn.buffers["running_var"]
    np.testing.assert_allclose(ye, (x - rm[None, :, None, None]) /
                               np.sqrt(rv[None, :, None, None] + 1e-5))


def test_residual_adds_input(rng):
    lin = Linear(4, 4, rng=0, dtype=F64)
    x = rng.standard_normal((3, 4))
    np.testing.assert_allclose(Residual(lin).forward(x), x + lin.forward(x))
    with pytest.raises(ShapeError, match="keep the shape"):
        Residual(Linear(4, 3, rng=0)).output_shape((4,))


@pytest.mark.parametrize("layer,x,match", [
    (Linear(5, 3), np.zeros((2, 4), np.float32), r"Linear\(5, 3.*5 features.*\(2, 4\)"),
    (Linear(5, 3), np.zeros((2, 5, 1), np.float32), r"Linear.*2-d input.*\(2, 5, 1\)"),
    (BatchNorm2d(3), np.zeros((2, 4, 5, 5), np.float32), r"BatchNorm2d\(3.*3 channels.*\(2, 4, 5, 5\)"),
    (BatchNorm1d(3), np.zeros((2, 3, 1, 1), np.float32), r"BatchNorm1d.*2-d input"),
    (Softmax(), np.zeros((2, 3, 4), np.float32), r"Softmax.*2-d input"),
])
def test_bad_shapes_name_the_layer(layer, x, match):
    with pytest.raises(ShapeError, match=match):
        layer.forward(x, train=True)


def test_bad_dtypes(rng):
    with pytest.raises(DTypeError, match=r"Linear.*float64 does not match.*float32"):
        Linear(3, 2).forward(np.zeros((2, 3)), train=True)
    with pytest.raises(DTypeError, match=r"ReLU.*int64"):
        ReLU().forward(np.zeros((2, 3), np.int64))
    with pytest.raises(DTypeError, match="float32 or float64"):
        Linear(3, 2, dtype=np.float16)


def test_backward_before_forward():
    with pytest.raises(RuntimeError, match="before forward"):
        Linear(3, 2).backward(np.zeros((1, 2), np.float32))


def test_batchnorm_single_value_rejected():
    with pytest.raises(ShapeError, match="more than one value"):
        BatchNorm1d(3).forward(np.zeros((1, 3), np.float32), train=True)
