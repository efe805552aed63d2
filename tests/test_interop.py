"""PyTorch interop (where torch is importable: pip install torch==2.13.0, the CPU build): the
equivalent torch.nn.Sequential gives the same logits, its state dict maps both ways, and one
training step (two, so momentum counts) in each gives the same loss and weights in float64."""
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import gpunn
from gpunn.cli import main
from gpunn.errors import StateDictError
from gpunn.extras import MissingExtra
from gpunn.interop import from_torch_state_dict, to_torch, to_torch_state_dict, torch_names

from export_cases import LAYERS, ZOO, layer_model, zoo_input_shape, zoo_model

REASON = "PyTorch is not installed (pip install torch==2.13.0, the CPU build)"


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason=REASON)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = np.linalg.norm(a)
    return np.linalg.norm(a - b) / d if d else np.linalg.norm(b)


def _logits(torch, tm, x):
    with torch.no_grad():
        return tm(torch.from_numpy(x)).numpy()


def _same_state(torch, model, tm, tol):
    sd, tsd = to_torch_state_dict(model), tm.state_dict()
    assert set(sd) == set(tsd)
    for k in sd:
        if not k.endswith("num_batches_tracked"):
            assert _rel(sd[k].numpy(), tsd[k].numpy()) <= tol, k


# -- same logits --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("name", ZOO)
def test_zoo_models_give_the_same_logits(name, dtype, tol, torch):
    model = zoo_model(name, dtype=dtype).eval()
    tm = to_torch(model)
    assert not tm.training and isinstance(tm, torch.nn.Sequential)
    x = np.random.default_rng(1).standard_normal((3, *zoo_input_shape(name))).astype(dtype)
    assert _rel(model.forward(x, train=False), _logits(torch, tm, x)) <= tol


@pytest.mark.parametrize("name, make, shape", LAYERS, ids=[c[0] for c in LAYERS])
def test_every_layer_type_gives_the_same_output(name, make, shape, torch):
    model = layer_model(make, np.float64).eval()
    x = np.random.default_rng(1).standard_normal((4, *shape))
    assert _rel(model.forward(x, train=False), _logits(torch, to_torch(model), x)) <= 1e-12


# -- the state dict both ways -------------------------------------------------------------------
def test_state_dict_names_and_layouts(torch):
    model = gpunn.build_model("resnet20", (3, 32, 32), 10, seed=0)
    names = dict((g, (t, tr)) for g, t, tr in torch_names(model))
    assert names["0.W"] == ("0.weight", False)                        # conv: (O, I, kh, kw)
    assert names["1.gamma"] == ("1.weight", False) and names["1.beta"] == ("1.bias", False)
    assert names["1.running_var"] == ("1.running_var", False)
    lin = len(model) - 1
    assert names[f"{lin}.W"] == (f"{lin}.weight", True)                 # (in, out) -> (out, in)
    # the first downsampling block: body 0..4, projection shortcut 5..6
    down = next(i for i, l in enumerate(model) if getattr(l, "shortcut", None))
    assert names[f"{down}.0.W"] == (f"{down}.block.0.weight", False)
    assert names[f"{down}.5.W"] == (f"{down}.shortcut.0.weight", False)
    assert names[f"{down}.6.running_mean"] == (f"{down}.shortcut.1.running_mean", False)
    sd = to_torch_state_dict(model)
    assert tuple(sd[f"{lin}.weight"].shape) == (10, 64)
    assert model[lin].params["W"].shape == (64, 10)
    tm = to_torch(model)
    assert set(tm.state_dict()) == set(sd)                 # the module has exactly these names


@pytest.mark.parametrize("name", ZOO)
def test_state_dict_round_trip(name, torch):
    a = zoo_model(name, dtype=np.float64, seed=0)
    b = zoo_model(name, dtype=np.float64, seed=1)
    from_torch_state_dict(b, to_torch(a).state_dict())
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        if sa[k].dtype.kind == "f":
            np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


def test_from_torch_state_dict_checks_everything_first(torch):
    model = zoo_model("model4", dtype=np.float64)
    before = model.state_dict()
    good = to_torch(model).state_dict()
    bad = dict(good)
    del bad["0.bias"]
    bad["extra.weight"] = torch.zeros(3)
    with pytest.raises(StateDictError, match=r"missing keys: 0.bias \| unexpected keys: extra"):
        from_torch_state_dict(model, bad)
    wrong = dict(good)
    wrong["7.weight"] = torch.zeros(5, 5, dtype=torch.float64)
    with pytest.raises(StateDictError, match=r"7.W: expected"):
        from_torch_state_dict(model, wrong)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)       # unchanged


# -- training steps -----------------------------------------------------------------------------
def _gpunn_steps(model, x, y, loss_fn, steps, lr=0.05):
    opt = gpunn.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3)
    model.train()
    losses = []
    for _ in range(steps):
        out = model(x)
        losses.append(float(loss_fn(out, y)))
        model.backward(loss_fn.backward())
        opt.step()
    return losses


def _torch_steps(torch, tm, x, y, loss_fn, steps, lr=0.05):
    opt = torch.optim.SGD(tm.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3)
    tm.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(tm(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", ZOO)
def test_zoo_training_steps_agree(name, torch):
    shape = zoo_input_shape(name)
    model = zoo_model(name, dtype=np.float64, dropout=0.0)       # torch draws its own masks
    assert not any(isinstance(l, gpunn.Dropout) for l in model.walk())
    tm = to_torch(model)
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((6, *shape)), rng.integers(0, 10, 6)
    ours = _gpunn_steps(model, x, y, gpunn.CrossEntropyLoss(), 2)
    theirs = _torch_steps(torch, tm, x, y, torch.nn.functional.cross_entropy, 2)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    _same_state(torch, model, tm, 1e-10)        # weights, and batch-norm running statistics


class _Dot:
    """L = sum(out * R) / N for a fixed random R: a loss for any output shape."""

    def __init__(self, r, torch=None):
        self.r = r if torch is None else torch.from_numpy(r)

    def __call__(self, out, y=None):
        self.n = out.shape[0]
        return (out * self.r).sum() / self.n

    def backward(self):
        return self.r / self.n


TRAINABLE = [c for c in LAYERS if not c[0].startswith("Dropout")]      # torch draws its own masks


@pytest.mark.parametrize("name, make, shape", TRAINABLE, ids=[c[0] for c in TRAINABLE])
def test_every_layer_type_trains_the_same(name, make, shape, torch):
    """Training-mode output, dL/dx and every parameter gradient, then two SGD steps."""
    model = layer_model(make, np.float64)
    tm = to_torch(model)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, *shape))
    r = rng.standard_normal(model.forward(x, train=False).shape)
    out = model.forward(x, train=True)
    dx = model.backward(r / len(x))
    xt = torch.from_numpy(x).requires_grad_()
    ot = tm.train()(xt)
    ((ot * torch.from_numpy(r)).sum() / len(x)).backward()
    assert _rel(out, ot.detach().numpy()) <= 1e-12
    assert _rel(dx, xt.grad.numpy()) <= 1e-12
    tparams = dict(tm.named_parameters())
    grads = {n: p.grad for n, p in model.named_parameters()}
    for g, t, transpose in torch_names(model):
        if g in grads:
            tg = tparams[t].grad.numpy()
            assert _rel(grads[g], tg.T if transpose else tg) <= 1e-12, g
    if model.parameters():
        ours = _gpunn_steps(model, x, None, _Dot(r), 2)
        theirs = _torch_steps(torch, tm, x, np.zeros(1), lambda o, y: _Dot(r, torch)(o), 2)
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)
    _same_state(torch, model, tm, 1e-10)


def test_dropout_is_the_identity_in_evaluation_in_both(torch):
    model = gpunn.Sequential(gpunn.Dropout(0.5, seed=1)).eval()
    x = np.random.default_rng(0).standard_normal((4, 6))
    np.testing.assert_array_equal(_logits(torch, to_torch(model), x), x)


# -- without torch; gpunn export --torch --------------------------------------------------------
def test_without_torch_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingExtra, match="pip install torch"):
        to_torch(zoo_model("model1"))
    assert len(torch_names(zoo_model("model1"))) == 2       # the mapping itself needs no torch


def test_gpunn_export_torch(torch, tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--dataset", "synthetic", "--model", "model4",
                                  "--epochs", "1", "--max-steps", "3", "--eval-every", "0",
                                  "--no-progress", "--device", "cpu", "--out", str(out)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["export", str(out), "--torch", str(tmp_path / "m.pt")])
    assert r.exit_code == 0, r.output
    from gpunn.runs import load_model
    model = load_model(out)
    tm = to_torch(gpunn.build_model("model4", (1, 28, 28), 10, seed=5)).eval()
    tm.load_state_dict(torch.load(tmp_path / "m.pt"))
    x = np.random.default_rng(4).standard_normal((3, 1, 28, 28)).astype(np.float32)
    assert _rel(model.forward(x, train=False), _logits(torch, tm, x)) <= 1e-5
