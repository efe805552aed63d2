"""Sequential: live parameters, state dicts, saving, summary, architecture checks."""
import os

import numpy as np
import pytest

from gpunn.errors import ShapeError, StateDictError
from gpunn.gradcheck import check_model
from gpunn.layers import BatchNorm1d, Dropout, Linear, ReLU, Residual, Tanh
from gpunn.model import Sequential

F64 = np.float64


def _mlp(dtype=np.float32, seed=0):
    return Sequential(Linear(6, 8, bias=False, rng=seed, dtype=dtype), BatchNorm1d(8, dtype=dtype),
                      ReLU(), Dropout(0.3, seed=seed),
                      Residual(Linear(8, 8, rng=seed + 1, dtype=dtype), Tanh()),
                      Linear(8, 3, rng=seed + 2, dtype=dtype))


def test_whole_model_gradcheck(rng):
    res = check_model(_mlp(F64), rng.standard_normal((7, 6)))
    assert res.max_rel_error < 1e-6, str(res)


def test_named_parameters_and_live_parameters(rng):
    m = _mlp()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["0.W", "1.gamma", "1.beta", "4.0.W", "4.0.b", "5.W", "5.b"]
    params = m.parameters()
    x = rng.standard_normal((5, 6)).astype(np.float32)
    m.backward(np.ones_like(m.forward(x, train=True)))
    for p, (name, p2) in zip(params, m.named_parameters()):
        assert p is p2 and name.endswith(p.name)
        layer = m.layers[int(name.split(".")[0])]
        layer = layer.block[int(name.split(".")[1])] if name.count(".") == 2 else layer
        assert layer.params[p.name] is p.data and layer.grads[p.name] is p.grad
    assert all(np.abs(p.grad).sum() > 0 for p in params)
    m.zero_grad()
    assert all(np.abs(p.grad).sum() == 0 for p in params)


def test_state_dict_round_trip_reproduces_outputs(rng, tmp_path):
    a, b = _mlp(seed=0), _mlp(seed=10)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    a.forward(x, train=True)          # move running stats and the dropout step
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a.forward(x, train=False), b.forward(x, train=False))
    np.testing.assert_array_equal(a.forward(x, train=True), b.forward(x, train=True))
    path = tmp_path / "w.npz"
    a.save(path)
    c = _mlp(seed=20).load(path)
    np.testing.assert_array_equal(a.forward(x, train=True), c.forward(x, train=True))
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_load_state_dict_keeps_arrays_in_place():
    m = _mlp()
    p0 = m.parameters()[0].data
    m.load_state_dict(_mlp(seed=5).state_dict())
    assert m.parameters()[0].data is p0          # an optimizer holding p0 stays valid
    np.testing.assert_array_equal(p0, _mlp(seed=5).parameters()[0].data)


def test_load_state_dict_errors_change_nothing():
    m = _mlp()
    before = m.state_dict()
    sd = _mlp(seed=3).state_dict()
    del sd["5.b"]
    sd["4.0.W"] = np.zeros((8, 9), np.float32)
    sd["9.W"] = np.zeros(1, np.float32)
    with pytest.raises(StateDictError) as e:
        m.load_state_dict(sd)
    msg = str(e.value)
    assert "missing keys: 5.b" in msg and "unexpected keys: 9.W" in msg
    assert "4.0.W: expected (8, 8), got (8, 9)" in msg
    after = m.state_dict()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_load_bad_files(tmp_path):
    m = _mlp()
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        m.load(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz"):
        m.load(bad)


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    m = _mlp()
    path = tmp_path / "w.npz"
    m.save(path)
    good = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        _mlp(seed=4).save(path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["w.npz"]


def test_summary_and_output_shape():
    m = _mlp()
    s = m.summary((6,))
    assert m.num_parameters() == 6 * 8 + 16 + 8 * 8 + 8 + 8 * 3 + 3 == 163
    rows = [line.split("  ") for line in s.splitlines()]
    rows = [[c.strip() for c in r if c.strip()] for r in rows]
    assert rows[0] == ["#", "layer", "output shape", "params"]
    assert rows[2:] == [
        ["input", "(6,)"],
        ["0", "Linear(6, 8, bias=False)", "(8,)", "48"],
        ["1", "BatchNorm1d(8, eps=1e-05, momentum=0.1)", "(8,)", "16"],
        ["2", "ReLU()", "(8,)", "-"],
        ["3", "Dropout(p=0.3)", "(8,)", "-"],
        ["4", "Residual(Linear(8, 8, bias=True), Tanh())", "(8,)", "-"],
        ["4.0", "Linear(8, 8, bias=True)", "72"],        # children: no output shape of their own
        ["4.1", "Tanh()", "-"],
        ["5", "Linear(8, 3, bias=True)", "(3,)", "27"],
        ["total parameters: 163"],
    ]
    assert m.output_shape((6,)) == (3,)
    with pytest.raises(ShapeError, match=r"layer 0 \(Linear\(6, 8"):
        m.output_shape((5,))


def test_train_eval_mode(rng):
    m = Sequential(Dropout(0.5, seed=0))
    x = np.ones((10, 10), np.float32)
    assert not np.array_equal(m(x), x)
    m.eval()
    np.testing.assert_array_equal(m(x), x)
    assert not np.array_equal(m(x, train=True), x)


def test_rejects_non_layers():
    with pytest.raises(TypeError, match="argument 1 is int"):
        Sequential(ReLU(), 3)


def _holders(model):
    """(step, attribute) for every layer or fused step of ``model`` holding saved arrays."""
    steps = []
    for layer in model.walk():
        steps.append(layer)
        for attr in ("_steps", "_block_steps"):
            if hasattr(layer, attr):
                steps += list(getattr(layer, attr)())
    return [(s, a) for s in steps for a in ("_cache", "_x", "_y", "_mask")
            if getattr(s, a, None) is not None]


def test_backward_frees_what_forward_saved():
    """A model's backward drops each layer's saved arrays once its gradient is through (fused
    steps and residual blocks included), so their memory is back before the next forward; a
    second backward for one forward is refused, saying why; a plain layer's own backward
    keeps its cache (a test may call it twice)."""
    import pytest
    from gpunn.fuse import fuse
    from gpunn.layers import Conv2d
    from gpunn.losses import CrossEntropyLoss
    from gpunn.optim import SGD
    from gpunn.train import TrainStep
    from gpunn.zoo import build_model

    rng = np.random.default_rng(0)
    for name in ("model4", "cnn-bn", "resnet-small"):
        m = fuse(build_model(name, (1, 12, 12), 5, seed=0, dtype=np.float64,
                             dropout=0.3 if name == "model4" else None))
        x, y = rng.standard_normal((4, 1, 12, 12)), rng.integers(0, 5, 4)
        m.forward(x, train=True)
        assert _holders(m)
        m.backward(np.ones((4, 5)))
        assert _holders(m) == [], name
        with pytest.raises(RuntimeError, match="again after"):
            m.backward(np.ones((4, 5)))
        step = TrainStep(m, CrossEntropyLoss(), SGD(m.parameters(), lr=0.1))
        step(x, y)
        assert _holders(m) == [], name
    # layers before the first with parameters, which a training step's backward skips
    from gpunn.layers import Dropout, Flatten, Linear
    m = Sequential(Dropout(0.5, seed=1), Flatten(), Linear(12, 3, rng=0, dtype=np.float64))
    step = TrainStep(m, CrossEntropyLoss(), SGD(m.parameters(), lr=0.1))
    step(rng.standard_normal((4, 12)), rng.integers(0, 3, 4))
    assert _holders(m) == []
    conv = Conv2d(1, 2, 3, rng=0, dtype=np.float64)
    conv.forward(np.ones((1, 1, 5, 5)), train=True)
    conv.backward(np.ones((1, 2, 3, 3)))
    conv.backward(np.ones((1, 2, 3, 3)))


def test_evaluation_leaves_no_activations_behind():
    """evaluate() frees each batch's saved arrays after its forward (no backward follows)."""
    from gpunn.fuse import fuse
    from gpunn.losses import CrossEntropyLoss
    from gpunn.train.loop import evaluate
    from gpunn.zoo import build_model
    m = fuse(build_model("cnn-bn", (1, 12, 12), 5, seed=0, dtype=np.float64))
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((9, 1, 12, 12)), rng.integers(0, 5, 9)
    m.forward(x[:2], train=False)
    assert _holders(m)
    evaluate(m, CrossEntropyLoss(), x, y, batch_size=4)
    assert _holders(m) == []
