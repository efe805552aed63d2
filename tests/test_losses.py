"""Softmax cross-entropy (fused op and loss class), MSE, L2 penalty: values, gradients, errors."""
import numpy as np
import pytest

from gpunn.errors import DTypeError, ShapeError
from gpunn.gradcheck import check_model
from gpunn.layers import BatchNorm1d, Linear, ReLU, Softmax
from gpunn.losses import CrossEntropyLoss, MSELoss, SoftmaxCrossEntropy, l2_penalty
from gpunn.model import Sequential
from gpunn.ops.softmax_xent import softmax_cross_entropy, softmax_cross_entropy_soft

DTYPES = [np.float32, np.float64]


def _direct_xent(z, y):
    """Unfused float64 reference: mean_i -log(exp(z_iy) / sum_k exp(z_ik))."""
    z = np.asarray(z, dtype=np.float64)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return float(np.mean(-np.log(p[np.arange(len(y)), y])))


def _numeric_grad(f, z, h=1e-6):
    g = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        old = z[idx]
        z[idx] = old + h
        fp = f(z)
        z[idx] = old - h
        fm = f(z)
        z[idx] = old
        g[idx] = (fp - fm) / (2 * h)
    return g


@pytest.fixture
def batch(rng):
    z = rng.standard_normal((6, 5)) * 3
    y = rng.integers(0, 5, size=6)
    return z, y


# -- values and gradients ---------------------------------------------------------------------
def test_value_matches_direct_formula(batch):
    z, y = batch
    loss = CrossEntropyLoss()
    assert float(loss(z, y)) == pytest.approx(_direct_xent(z, y), rel=1e-13)
    out32 = loss(z.astype(np.float32), y)
    assert float(out32) == pytest.approx(_direct_xent(z, y), rel=1e-6)


def test_returns_0d_array_in_logits_dtype(batch):
    z, y = batch
    for dt in DTYPES:
        loss = CrossEntropyLoss()
        out = loss(z.astype(dt), y)
        assert isinstance(out, np.ndarray) and out.shape == () and out.dtype == dt
        assert loss.backward().dtype == dt and loss.backward().shape == z.shape


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradient_central_differences(batch, reduction):
    z, y = batch
    loss = CrossEntropyLoss(reduction)
    loss(z, y)
    analytic = loss.backward().copy()
    numeric = _numeric_grad(lambda a: float(CrossEntropyLoss(reduction)(a, y)), z.copy())
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


def test_gradient_soft_targets(batch, rng):
    z, _ = batch
    t = rng.random(z.shape)
    t /= t.sum(axis=1, keepdims=True)
    loss = CrossEntropyLoss()
    value = float(loss(z, t))
    ref = float(np.mean(-(t * np.log(np.exp(z) / np.exp(z).sum(1, keepdims=True))).sum(1)))
    assert value == pytest.approx(ref, rel=1e-13)
    numeric = _numeric_grad(lambda a: float(CrossEntropyLoss()(a, t)), z.copy())
    np.testing.assert_allclose(loss.backward(), numeric, rtol=1e-6, atol=1e-9)


def test_gradcheck_through_a_model(rng):
    model = Sequential(Linear(4, 6, rng=0, dtype=np.float64), ReLU(),
                       Linear(6, 3, rng=1, dtype=np.float64))
    x = rng.standard_normal((5, 4))
    y = rng.integers(0, 3, size=5)
    res = check_model(model, x, y, CrossEntropyLoss())
    assert res.max_rel_error < 1e-6, str(res)


def test_invariant_to_a_constant_per_row(batch, rng):
    z, y = batch
    shift = rng.uniform(-1000, 1000, size=(z.shape[0], 1))
    a, b = CrossEntropyLoss(), CrossEntropyLoss()
    la, lb = float(a(z, y)), float(b(z + shift, y))
    assert lb == pytest.approx(la, abs=1e-10)
    np.testing.assert_allclose(b.backward(), a.backward(), atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_magnitude_logits_are_finite_and_exact(dtype):
    z = np.array([[1e4, -1e4, 0.0],
                  [-1e4, -1e4, -1e4],
                  [1e4, 1e4, -1e4],
                  [3e4, -5e4, 1e4]], dtype=dtype)
    y = np.array([1, 2, 0, 0])
    loss = CrossEntropyLoss("sum")
    value = float(loss(z, y))
    g = loss.backward()
    assert np.isfinite(value) and np.all(np.isfinite(g))
    # rows: 2e4 (label at -1e4 vs max 1e4), log 3 (all equal), log 2 (two tied maxima), 0
    expected = 2e4 + np.log(3) + np.log(2) + 0.0
    assert value == pytest.approx(expected, rel=1e-6 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(g.sum(axis=1), 0, atol=1e-6)
    np.testing.assert_allclose(g[0], [1, -1, 0], atol=1e-6)
    np.testing.assert_allclose(g[2], [-0.5, 0.5, 0], atol=1e-6)


def test_one_hot_and_index_labels_agree_exactly(batch):
    z, y = batch
    for dt in DTYPES:
        a, b = CrossEntropyLoss(), CrossEntropyLoss()
        la = a(z.astype(dt), y)
        lb = b(z.astype(dt), np.eye(5, dtype=np.float32)[y])
        assert la == lb
        np.testing.assert_array_equal(a.backward(), b.backward())


def test_mean_is_sum_over_n(batch):
    z, y = batch
    m, s = CrossEntropyLoss("mean"), CrossEntropyLoss("sum")
    assert float(s(z, y)) == pytest.approx(len(y) * float(m(z, y)), rel=1e-13)
    np.testing.assert_allclose(s.backward(), len(y) * m.backward(), rtol=1e-13)


@pytest.mark.parametrize("label_dtype", [np.uint8, np.int8, np.int32, np.int64, np.uint64])
def test_any_integer_label_dtype(batch, label_dtype):
    z, y = batch
    ref = float(CrossEntropyLoss()(z, y))
    assert float(CrossEntropyLoss()(z, y.astype(label_dtype))) == ref
    assert float(CrossEntropyLoss()(z, list(y))) == ref


def test_op_poisons_rows_with_out_of_range_labels(batch):
    z, y = batch
    y = y.copy()
    y[2] = 5
    loss, g = softmax_cross_entropy(z, y, "mean")
    assert np.isnan(float(loss))
    assert np.all(np.isnan(g[2])) and np.all(np.isfinite(np.delete(g, 2, axis=0)))
    unchecked = CrossEntropyLoss(check_labels=False)
    assert np.isnan(float(unchecked(z, y)))


def test_soft_op_matches_index_op_on_one_hot(batch):
    z, y = batch
    la, ga = softmax_cross_entropy(z, y, "sum")
    lb, gb = softmax_cross_entropy_soft(z, np.eye(5)[y], "sum")
    assert la == lb
    np.testing.assert_array_equal(ga, gb)


def test_softmax_layer_is_stable():
    z = np.array([[1e4, 0.0, -1e4], [1.0, 2.0, 3.0]], dtype=np.float32)
    p = Softmax().forward(z, train=False)
    assert p.dtype == np.float32 and np.all(np.isfinite(p))
    np.testing.assert_array_equal(p[0], [1, 0, 0])
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-6)
    e = np.exp(np.float64(z[1]) - 3)
    np.testing.assert_allclose(p[1], e / e.sum(), rtol=1e-6)


# -- bad input ----------------------------------------------------------------------------------
def test_errors_name_the_loss_and_shapes(batch):
    z, y = batch
    loss = CrossEntropyLoss()
    with pytest.raises(ShapeError, match=r"CrossEntropyLoss.*\(6,\).*\(5,\)"):
        loss(z, y[:5])
    with pytest.raises(ShapeError, match=r"\(6, 5\).*\(6, 4\)"):
        loss(z, np.zeros((6, 4)))
    with pytest.raises(ShapeError, match="2-d logits"):
        loss(z[0], y[:1])
    with pytest.raises(ShapeError, match="non-empty"):
        loss(z[:0], y[:0])
    with pytest.raises(ShapeError, match="class indices or"):
        loss(z, y.reshape(6, 1, 1))


def test_label_range_errors(batch):
    z, y = batch
    loss = CrossEntropyLoss()
    bad = y.copy()
    bad[3] = 5
    with pytest.raises(ValueError, match=r"\[0, 5\).*got 5.*index 3"):
        loss(z, bad)
    bad[3] = -1
    with pytest.raises(ValueError, match=r"\[0, 5\).*got -1"):
        loss(z, bad)


def test_dtype_errors(batch):
    z, y = batch
    loss = CrossEntropyLoss()
    with pytest.raises(DTypeError, match="integer dtype.*astype"):
        loss(z, y.astype(np.float64))
    with pytest.raises(DTypeError, match="float32 or float64"):
        loss(z.astype(np.int64), y)
    with pytest.raises(DTypeError, match="float32 or float64"):
        loss(z.astype(np.float16), y)


def test_misuse_errors(batch):
    with pytest.raises(RuntimeError, match="before forward"):
        CrossEntropyLoss().backward()
    with pytest.raises(ValueError, match="reduction"):
        CrossEntropyLoss("avg")
    with pytest.raises(ValueError, match="check_labels"):
        CrossEntropyLoss(check_labels="yes")


# -- MSE --------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_value_and_gradient(rng, reduction):
    y, t = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    loss = MSELoss(reduction)
    value = float(loss(y, t))
    ref = np.sum((y - t) ** 2) / (y.size if reduction == "mean" else 1)
    assert value == pytest.approx(ref, rel=1e-13)
    numeric = _numeric_grad(lambda a: float(MSELoss(reduction)(a, t)), y.copy())
    np.testing.assert_allclose(loss.backward(), numeric, rtol=1e-6, atol=1e-9)


def test_mse_dtype_and_errors(rng):
    y = rng.standard_normal((4, 1)).astype(np.float32)
    loss = MSELoss()
    out = loss(y, np.zeros((4, 1)))
    assert out.shape == () and out.dtype == np.float32 and loss.backward().dtype == np.float32
    with pytest.raises(ShapeError, match=r"MSELoss.*\(4, 1\).*\(4,\)"):
        loss(y, np.zeros(4))
    with pytest.raises(RuntimeError, match="before forward"):
        MSELoss().backward()


# -- L2 penalty -------------------------------------------------------------------------------
def test_l2_penalty_weights_only_and_all():
    model = Sequential(Linear(3, 2, rng=0, dtype=np.float64), BatchNorm1d(2, dtype=np.float64),
                       Linear(2, 2, rng=1, dtype=np.float64))
    for p in model.parameters():                  # non-zero biases so they would count
        p.data[...] += 0.5
    named = {n: p.data for n, p in model.named_parameters()}
    w2 = np.sum(named["0.W"] ** 2) + np.sum(named["2.W"] ** 2)
    all2 = sum(np.sum(p ** 2) for p in named.values())
    assert float(l2_penalty(model, 0.1)) == pytest.approx(0.05 * w2, rel=1e-13)
    every = l2_penalty(model, 0.1, weights_only=False)
    assert float(every) == pytest.approx(0.05 * all2, rel=1e-13)
    assert float(l2_penalty(model.named_parameters(), 0.1)) == pytest.approx(0.05 * w2, rel=1e-13)
    # unnamed Parameters, pairs or arrays: every array counts
    assert float(l2_penalty(model.parameters(), 0.1)) == pytest.approx(0.05 * all2, rel=1e-13)
    pairs = [(p.data, p.grad) for p in model.parameters()]
    assert float(l2_penalty(pairs, 0.1)) == pytest.approx(0.05 * all2, rel=1e-13)
    out = l2_penalty(Sequential(Linear(3, 2, rng=0)), 1.0)
    assert out.shape == () and out.dtype == np.float32
    with pytest.raises(ValueError, match="lam"):
        l2_penalty(model, -1.0)


# -- GPU parity (skipped without a usable CUDA device) -------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_numpy(rng, dtype):
    import cupy
    z = (rng.standard_normal((64, 10)) * 4).astype(dtype)
    y = rng.integers(0, 10, size=64).astype(np.int32)
    for labels in (y, np.eye(10, dtype=dtype)[y]):
        a, b = CrossEntropyLoss(), CrossEntropyLoss()
        la, lb = a(z, labels), b(cupy.asarray(z), cupy.asarray(labels))
        assert isinstance(lb, cupy.ndarray) and lb.shape == () and lb.dtype == dtype
        tol = dict(rtol=1e-12, atol=1e-15) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(float(lb), float(la), **tol)
        np.testing.assert_allclose(b.backward().get(), a.backward(), **tol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_forward_tally_counts_as_numpy(rng, dtype):
    """The fused loss with the running sums on a GPU: the same count as NumPy's argmax, the
    loss sum within rounding, int64 and int32 labels alike."""
    import cupy
    z = (rng.standard_normal((300, 10)) * 2).astype(dtype)
    z[:5] = z[:5, :1]                                   # rows of ties
    y = rng.integers(0, 10, size=300)
    want_sum, want_correct = np.zeros(()), np.zeros((), np.int64)
    CrossEntropyLoss().forward_tally(z, y, want_sum, want_correct)
    for labels in (y, y.astype(np.int32)):
        loss_sum, correct = cupy.zeros(()), cupy.zeros((), np.int64)
        for _ in range(2):                              # sums accumulate
            CrossEntropyLoss().forward_tally(cupy.asarray(z), cupy.asarray(labels),
                                             loss_sum, correct)
        assert int(correct) == 2 * int(want_correct)
        np.testing.assert_allclose(float(loss_sum), 2 * float(want_sum),
                                   rtol=1e-12 if dtype == np.float64 else 1e-5)


def test_old_name_is_an_alias():
    assert SoftmaxCrossEntropy is CrossEntropyLoss
    z = np.array([[1.0, 2.0, 0.5]])
    assert float(SoftmaxCrossEntropy()(z, np.array([1]))) == float(CrossEntropyLoss()(z, np.array([1])))


# -- the running metrics folded into the loss (forward_tally) -----------------------------------
class _PlainCrossEntropy:
    """The same loss without forward_tally: TrainStep then adds to its sums itself."""

    def __init__(self):
        self.inner, self.reduction = CrossEntropyLoss(), "mean"

    def forward(self, logits, labels):
        return self.inner.forward(logits, labels)

    def backward(self):
        return self.inner.backward()


def _metrics_after_steps(loss_fn, emulated, dtype):
    from gpunn.optim import SGD
    from gpunn.testing import emulated_cuda
    from gpunn.train.step import TrainStep
    import contextlib
    rng = np.random.default_rng(3)
    net = Sequential(Linear(6, 16, rng=np.random.default_rng(1), dtype=dtype), ReLU(),
                     Linear(16, 5, rng=np.random.default_rng(2), dtype=dtype))
    ctx = emulated_cuda() if emulated else contextlib.nullcontext()
    from gpunn import kernels
    kernels.reset_launch_counts()
    with ctx:
        step = TrainStep(net, loss_fn, SGD(net.parameters(), lr=0.5, momentum=0.9))
        for _ in range(4):
            x = rng.standard_normal((37, 6)).astype(dtype)
            y = rng.integers(0, 5, size=37)
            step(x, y)
        finishes = kernels.count_launches().get(kernels.kernel_name("softmax_xent_finish", dtype), 0)
        assert finishes == (4 if emulated else 0)
        return float(step.loss_sum), int(step.correct), step.seen


@pytest.mark.parametrize("dtype", DTYPES)
def test_train_step_metrics_come_from_the_loss_as_they_came_from_the_step(dtype):
    """TrainStep lets CrossEntropyLoss add to its running loss and correct count
    (forward_tally; on a GPU part of the loss's two launches): the same sums as the step's
    own generic addition, bit for bit on the CPU; under emulated CUDA the same count and the
    loss sum within rounding (the kernel adds the rows in another order)."""
    fused, plain = (_metrics_after_steps(f, False, dtype)
                    for f in (CrossEntropyLoss(), _PlainCrossEntropy()))
    assert fused == plain and 0 < plain[1] < plain[2] == 4 * 37
    emu = _metrics_after_steps(CrossEntropyLoss(), True, dtype)
    assert emu[1:] == plain[1:]
    assert emu[0] == pytest.approx(plain[0], rel=1e-6 if dtype == np.float32 else 1e-14)


def test_forward_tally_counts_soft_targets_by_their_largest_entry():
    z = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0], [1.0, 0.0, 0.0]])
    t = np.array([[0.8, 0.2, 0.0], [0.0, 1.0, 0.0], [0.1, 0.2, 0.7]])
    loss_sum, correct = np.zeros(()), np.zeros((), np.int64)
    loss = CrossEntropyLoss().forward_tally(z, t, loss_sum, correct)
    assert int(correct) == 1 and float(loss_sum) == float(loss * 3)


@pytest.mark.parametrize("emulated", [False, True])
def test_tally_arrays_are_checked(emulated):
    from gpunn.testing import emulated_cuda
    import contextlib
    z, y = np.zeros((2, 3)), np.array([0, 1])
    bad = [((np.zeros(()),), TypeError, "tally must be"),
           ((np.zeros(1), np.zeros((), np.int64)), ShapeError, "loss_sum must be a 0-d array"),
           ((np.zeros((), np.float32), np.zeros((), np.int64)), DTypeError, "loss_sum must be float64"),
           ((np.zeros(()), np.zeros((), np.int32)), DTypeError, "correct must be int64")]
    with emulated_cuda() if emulated else contextlib.nullcontext():
        for tally, err, msg in bad:
            with pytest.raises(err, match=msg):
                softmax_cross_entropy(z, y, tally=tally)


@pytest.mark.parametrize("loss_fn", [CrossEntropyLoss, _PlainCrossEntropy])
def test_train_step_counts_a_batch_with_its_sums_even_when_the_step_then_fails(loss_fn):
    """The running loss, the correct count and `seen` take a batch together, as soon as its
    loss is known: a hook that raises later in the step leaves them consistent."""
    from gpunn.optim import SGD
    from gpunn.train.step import TrainStep
    net = Sequential(Linear(4, 3, rng=np.random.default_rng(1), dtype=np.float64))
    step = TrainStep(net, loss_fn(), SGD(net.parameters(), lr=0.1))
    x, y = np.random.default_rng(2).standard_normal((8, 4)), np.arange(8) % 3
    first = float(step(x, y))

    def fail(_):
        raise RuntimeError("a hook failed")
    step.after_backward.append(fail)
    with pytest.raises(RuntimeError, match="a hook failed"):
        step(x, y)
    second = float(CrossEntropyLoss().forward(net.forward(x), y))  # (no update happened)
    assert step.seen == 16
    loss, acc = step.metrics()
    assert loss == pytest.approx((first + second) / 2, rel=1e-12) and 0 <= acc <= 1
