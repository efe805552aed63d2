"""gpunn.fuse: Conv2d+ReLU, ReLU+MaxPool2d and BatchNorm+ReLU run as one step each, and train
exactly like the unfused model, on the CPU (NumPy bodies) and down the CUDA bodies (emulated CUDA)."""
import contextlib

import numpy as np
import pytest

from gpunn import kernels
from gpunn.fuse import fuse, fused_pairs, unfuse
from gpunn.layers import BatchNorm1d, BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU
from gpunn.losses import CrossEntropyLoss
from gpunn.model import Sequential
from gpunn.optim import SGD
from gpunn.testing import emulated_cuda
from gpunn.zoo import build_model

SHAPE = (1, 16, 16)


def _train(model, steps=3, seed=0):
    rng = np.random.default_rng(seed)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    loss = CrossEntropyLoss()
    losses = []
    for _ in range(steps):
        x = rng.standard_normal((6, *SHAPE))
        y = rng.integers(0, 5, size=6)
        value = loss.forward(model.forward(x, train=True), y)
        model.backward(loss.backward())
        opt.step()
        losses.append(float(value))
    return losses, model.state_dict(), model.forward(x, train=False)


def _bn_relu_net(dtype=np.float64):
    """Batch-norm + ReLU pairs: 2-d before a convolution, 2-d before a max-pool (where the
    ReLU pairs with the pool instead), 1-d before a Linear."""
    return Sequential(Conv2d(1, 4, 3, padding=1, bias=False, rng=1, dtype=dtype),
                      BatchNorm2d(4, dtype=dtype), ReLU(),
                      Conv2d(4, 4, 3, padding=1, bias=False, rng=2, dtype=dtype),
                      BatchNorm2d(4, dtype=dtype), ReLU(), MaxPool2d(2), Flatten(),
                      Linear(4 * 8 * 8, 16, bias=False, rng=3, dtype=dtype),
                      BatchNorm1d(16, dtype=dtype), ReLU(), Linear(16, 5, rng=4, dtype=dtype))


@pytest.mark.parametrize("emulated", [False, True])
@pytest.mark.parametrize("name", ["model4", "cnn-bn", "lenet5x5", "resnet-small", "bn-relu"])
def test_fused_model_trains_bit_for_bit_like_the_unfused(name, emulated):
    ctx = emulated_cuda if emulated else contextlib.nullcontext
    runs = []
    for fused in (False, True):
        m = _bn_relu_net() if name == "bn-relu" else \
            build_model(name, SHAPE, 5, seed=2, dtype=np.float64,
                        dropout=0.3 if name == "model4" else None)
        if fused:
            fuse(m)
            assert fused_pairs(m)
        with ctx():
            kernels.reset_launch_counts()
            runs.append((_train(m), kernels.count_launches()))
    (l0, s0, e0), n0 = runs[0]
    (l1, s1, e1), n1 = runs[1]
    assert l0 == l1
    assert sorted(s0) == sorted(s1)
    for k in s0:
        assert s0[k].tobytes() == s1[k].tobytes(), k
    np.testing.assert_array_equal(e0, e1)
    if emulated:       # the fused steps launch fewer kernels: no separate ReLU passes
        assert sum(n1.values()) < sum(n0.values())
        assert n1.get("relu_forward_f64", 0) < n0.get("relu_forward_f64", 0)


def test_pairs_and_plan_follow_the_layer_list():
    m = build_model("model4", SHAPE, 5, seed=0, dtype=np.float64)
    fuse(m)
    pairs = fused_pairs(m)
    assert len(pairs) == 3 and all(p.startswith("Fused(Conv2d(") for p in pairs[:2])
    assert pairs[2] == "Fused(Linear(128, 32, bias=True), ReLU())"
    # ReLU + MaxPool2d pairs where no conv is before the ReLU
    m2 = Sequential(Conv2d(1, 2, 3, padding=1, rng=0), MaxPool2d(2), ReLU(), MaxPool2d(2),
                    Flatten(), Linear(2 * 3 * 3, 4, rng=0))
    fuse(m2)
    assert fused_pairs(m2) == ["Fused(ReLU(), MaxPool2d(kernel_size=(2, 2), stride=(2, 2)))"]
    m2.layers.append(ReLU())             # the plan no longer matches: unfused until re-fused
    assert fused_pairs(m2) == []
    fuse(m2)
    assert fused_pairs(m2)[1] == "Fused(Linear(18, 4, bias=True), ReLU())"
    unfuse(m2)
    assert fused_pairs(m2) == []


def test_batchnorm_pairs_with_a_relu_unless_a_pool_takes_that_relu():
    m = fuse(_bn_relu_net())
    assert fused_pairs(m) == [
        "Fused(BatchNorm2d(4, eps=1e-05, momentum=0.1), ReLU())",
        "Fused(ReLU(), MaxPool2d(kernel_size=(2, 2), stride=(2, 2)))",
        "Fused(BatchNorm1d(16, eps=1e-05, momentum=0.1), ReLU())"]


@pytest.mark.parametrize("emulated", [False, True])
def test_residual_blocks_get_plans_too(emulated):
    """A Residual block's own layer list is planned like a Sequential's: its BatchNorm + ReLU
    runs as one step, and so do the block and the ReLU after it (the sum of the branches and
    the ReLU in one pass); both train bit for bit like the unfused model, on the CPU and the
    emulated CUDA, and a changed block list runs unfused until fused again."""
    from gpunn.layers import Residual

    def net():
        return Sequential(
            Conv2d(1, 4, 3, padding=1, bias=False, rng=1, dtype=np.float64),
            Residual(Conv2d(4, 4, 3, padding=1, bias=False, rng=2, dtype=np.float64),
                     BatchNorm2d(4, dtype=np.float64), ReLU(),
                     Conv2d(4, 4, 3, padding=1, bias=False, rng=3, dtype=np.float64),
                     BatchNorm2d(4, dtype=np.float64)),
            ReLU(), Flatten(), Linear(4 * 16 * 16, 5, rng=4, dtype=np.float64))
    plain, fused = net(), fuse(net())
    outer = "Fused(" + repr(fused.layers[1]) + ", ReLU())"
    assert fused_pairs(fused) == [outer, "Fused(BatchNorm2d(4, eps=1e-05, momentum=0.1), ReLU())"]
    ctx = emulated_cuda if emulated else contextlib.nullcontext
    with ctx():
        kernels.reset_launch_counts()
        a = _train(plain)
        n_plain = kernels.count_launches()
        kernels.reset_launch_counts()
        b = _train(fused)
        n_fused = kernels.count_launches()
    assert a[0] == b[0]
    for k in a[1]:
        assert a[1][k].tobytes() == b[1][k].tobytes(), k
    np.testing.assert_array_equal(a[2], b[2])
    if emulated:
        assert n_fused.get("add_relu_forward_f64", 0) > 0 == n_plain.get("add_relu_forward_f64", 0)
    block = fused.layers[1]
    block.block.append(ReLU())
    assert fused_pairs(fused) == ["Fused(" + repr(block) + ", ReLU())"]   # the outer plan stands
    fuse(fused)
    assert len(fused_pairs(fused)) == 3       # the block's last BatchNorm2d pairs with it now
    unfuse(fused)
    assert fused_pairs(fused) == []


def test_a_residual_relu_before_a_pool_pairs_with_the_pool():
    from gpunn.layers import Residual
    m = fuse(Sequential(Residual(Conv2d(2, 2, 3, padding=1, rng=1)), ReLU(), MaxPool2d(2)))
    assert fused_pairs(m) == ["Fused(ReLU(), MaxPool2d(kernel_size=(2, 2), stride=(2, 2)))"]


def test_a_fused_batchnorm_relu_keeps_relus_signed_zeros_nans_and_evaluation():
    """float32 with values that round to exactly 0 after normalisation, a NaN input and
    evaluation mode (running statistics): the pair's outputs and gradients equal the two
    layers', bit for bit."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 3, 5, 5)).astype(np.float32)
    x[0, 0, :, :] = 1.5                      # a constant plane: its centred values are 0
    x[1, 2, 0, 0] = np.nan
    d = rng.standard_normal(x.shape).astype(np.float32)
    outs = []
    for fused in (False, True):
        net = Sequential(BatchNorm2d(3), ReLU())
        if fused:
            fuse(net)
            assert fused_pairs(net)
        got = []
        for train in (True, False):
            with np.errstate(invalid="ignore"):
                y = net.forward(x, train=train)
                got += [y, net.backward(d)]
        outs.append(got + [net.layers[0].grads["gamma"].copy(), net.layers[0].grads["beta"].copy()])
    for a, b in zip(*outs):
        assert a.tobytes() == b.tobytes()


def test_subclasses_are_not_fused():
    class MyReLU(ReLU):
        pass
    m = Sequential(Conv2d(1, 2, 3, rng=0), MyReLU(), Flatten())
    fuse(m)
    assert fused_pairs(m) == []


def test_backward_before_forward_is_an_error():
    m = fuse(Sequential(ReLU(), MaxPool2d(2)))
    with pytest.raises(RuntimeError, match="before forward"):
        m.backward(np.ones((1, 1, 2, 2)))
