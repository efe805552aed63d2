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
