"""On a real GPU (`pytest -m gpu`; skipped without one): device handling and parity with the
NumPy path for every layer and for whole training runs."""
import numpy as np
import pytest

from gpunn.backend import resolve_device, to_device, to_numpy
from gpunn.parity import Side, layer_parity, training_parity

pytestmark = pytest.mark.gpu


def test_device_round_trip():
    import cupy
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    g = to_device(x, "cuda")
    assert isinstance(g, cupy.ndarray) and str(resolve_device("auto")) == "cuda:0"
    np.testing.assert_array_equal(to_numpy(g), x)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_layer_matches(dtype):
    rows = layer_parity(Side("cuda"), dtype)
    bad = [r for r in rows if not r.ok]
    assert not bad, "\n".join(f"{r.what}: fwd {r.forward:.2e} bwd {r.backward:.2e} "
                              f"launches {r.launches}" for r in bad)


@pytest.mark.parametrize("model", ["model1", "model2", "model3", "model4", "mlp1000", "cnn-bn",
                                   "lenet5x5", "resnet-small"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_zoo_training_matches(model, dtype):
    row = training_parity(Side("cuda"), model, dtype, steps=200)
    assert row.ok, row


def test_custom_kernels_are_used():
    from gpunn.kernels import count_launches as launch_counts
    from gpunn.zoo import build_model
    m = build_model("cnn-bn").to("cuda")
    before = launch_counts()
    x = to_device(np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32), "cuda")
    m.backward(m.forward(x, train=True))
    after = launch_counts()
    used = {k.rsplit("_", 1)[0] for k in after if after[k] > before.get(k, 0)}   # drop _f32
    assert {"im2col", "col2im", "relu_forward", "maxpool2d_forward", "dropout_forward"} <= used, used
