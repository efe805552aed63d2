"""Zoo models: build for each data-set shape, fit the input, fail early on impossible inputs."""
import numpy as np
import pytest

from gpunn.errors import ShapeError
from gpunn.zoo import MODELS, build_model


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_builds_and_runs(name, shape, rng):
    m = build_model(name, shape, 10, seed=0)
    x = rng.random((3, *shape), dtype=np.float32)
    y = m.forward(x, train=True)
    assert y.shape == (3, 10) and y.dtype == np.float32
    dx = m.backward(np.ones_like(y))
    assert dx.shape == x.shape
    assert m.num_parameters() > 0


def test_same_seed_same_weights():
    a, b = build_model("model4", seed=3), build_model("model4", seed=3)
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    c = build_model("model4", seed=4)
    assert not np.array_equal(a.parameters()[0].data, c.parameters()[0].data)


def test_model4_parameter_count():
    # conv1 8*1*9+8, conv2 8*8*9+8, fc 392*32+32, out 32*10+10
    assert build_model("model4").num_parameters() == 80 + 584 + 12576 + 330


def test_unknown_model_lists_valid_ones():
    with pytest.raises(ValueError, match="model1, model2, model3, model4"):
        build_model("model5")


def test_impossible_architecture_names_the_layer():
    with pytest.raises(ShapeError, match=r"lenet5x5.*Conv2d"):
        build_model("lenet5x5", (1, 8, 8), 10)


def test_float64_models():
    m = build_model("cnn-bn", (1, 12, 12), 4, dtype=np.float64)
    assert all(p.dtype == np.float64 for p in m.parameters())


@pytest.mark.parametrize("name", list(MODELS))
def test_gradcheck_every_model(name):
    # float64, the loss included, on a small input (8x8 for the CIFAR nets, whose three
    # down-samplings end at 1x1). Models over 5000 weights are checked at 6 elements drawn from
    # every array (vgg-cifar has 1.3M even at 8x8). eps 1e-6, not 1e-5: a deep ReLU/max-pool
    # net has many activations within 1e-5 of a kink, which a first-layer weight step of 1e-5
    # crosses; at 1e-6 the difference quotient's rounding (~1e-16 |f| / eps) sets the 1e-5 bar.
    from gpunn.gradcheck import check_model
    from gpunn.losses import CrossEntropyLoss
    size = {"vgg-cifar": 8, "resnet20": 8, "lenet5x5": 16}.get(name, 12)
    rng = np.random.default_rng(4)
    m = build_model(name, (1, size, size), 5, seed=1, dtype=np.float64, dropout=0.25)
    x = rng.standard_normal((4, 1, size, size))
    y = rng.integers(0, 5, 4)
    res = check_model(m, x, y, CrossEntropyLoss(), eps=1e-6,
                      elements=6 if m.num_parameters() > 5000 else None)
    assert res.max_rel_error < 1e-5, f"{name}: {res}"


def test_sampled_gradcheck_finds_a_wrong_gradient(monkeypatch):
    # the sampled form must still fail on a broken backward
    from gpunn.gradcheck import check_model
    from gpunn.layers import Linear
    from gpunn.losses import CrossEntropyLoss
    m = build_model("model2", (1, 6, 6), 4, seed=0, dtype=np.float64)
    lin = m.layers[1]
    real = Linear.backward
    def broken(self, dout):
        dx = real(self, dout)
        self.grads["W"][...] *= 1.01
        return dx
    monkeypatch.setattr(Linear, "backward", broken)
    x = np.random.default_rng(0).standard_normal((3, 1, 6, 6))
    res = check_model(m, x, np.array([0, 1, 2]), CrossEntropyLoss(), elements=5)
    assert res.max_rel_error > 1e-3 and "W" in res.where
    assert lin is m.layers[1]


def test_cifar_models_shapes_and_counts():
    vgg = build_model("vgg-cifar", (3, 32, 32), 10)
    # convs 3*64*9 + 64*64*9 + 64*128*9 + 128*128*9 + 128*256*9 + 256*256*9, BN 2*(2*64 + 2*128
    # + 2*256), fc 4096*512 + 512, 512*10 + 10
    assert vgg.num_parameters() == 1_144_512 + 1_792 + 2_097_664 + 5_130
    r20 = build_model("resnet20", (3, 32, 32), 10)
    convs = [lay for lay in r20.walk() if type(lay).__name__ == "Conv2d"]
    # 19 3x3 convs (1 stem + 18 in blocks) + 2 projection shortcuts; fc 64 -> 10
    assert sum(c.kernel_size == (3, 3) for c in convs) == 19
    assert sum(c.kernel_size == (1, 1) for c in convs) == 2
    assert r20.output_shape((3, 32, 32)) == (10,)
    assert r20.layers[-2].output_shape((64, 8, 8)) == (64,)


@pytest.mark.parametrize("name", ["vgg-cifar", "resnet20"])
def test_cifar_models_train_through_the_cli(name, tmp_path):
    import json

    from click.testing import CliRunner

    from gpunn.cli import main
    rng = np.random.default_rng(0)
    p = tmp_path / "tiny.npz"
    np.savez(p, x=rng.integers(0, 256, (96, 3, 16, 16), dtype=np.uint8), y=np.arange(96) % 4)
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--dataset", str(p), "--model", name, "--val-size", "8",
                                  "--batch-size", "16", "--max-steps", "3", "--device", "cpu",
                                  "--no-progress", "--out", str(out)])
    assert r.exit_code == 0, r.output
    h = json.loads((out / "history.json").read_text())
    assert h["train_loss"] and all(np.isfinite(h["train_loss"]))
