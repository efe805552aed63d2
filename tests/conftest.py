from types import SimpleNamespace

import numpy as np
import pytest

from gpunn.backend import cuda_available
from gpunn.data import make_synthetic


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="no usable CUDA device (gpunn.backend.cuda_status())")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip_gpu)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(scope="module")
def data():
    """A small synthetic image set (12x12, 10 classes) split 500 / 100 / 100, as ``fit`` takes
    it (train, validation, test)."""
    x, y = make_synthetic(700, seed=1, size=12)
    x = x.astype(np.float32) / 255
    return SimpleNamespace(x_train=x[:500], y_train=y[:500], x_val=x[500:600], y_val=y[500:600],
                           x_test=x[600:], y_test=y[600:])


@pytest.fixture(scope="module")
def side():
    """The emulated-CUDA side of gpunn.parity (CUDA bodies, kernels compiled for the CPU);
    skips where the emulator cannot build (no g++)."""
    from gpunn.parity import Side
    from gpunn.testing import emulated_kernel
    try:
        emulated_kernel("relu_forward", np.float32)
    except Exception as e:          # pragma: no cover - g++ missing
        pytest.skip(f"kernel emulation unavailable: {e}")
    return Side("emulated")


@pytest.fixture
def numpy_blas(monkeypatch):
    """GPUNN_BLAS=openblas for one test: every product on NumPy's own BLAS, for the tests that
    hold gpunn's CPU results to exact bits (with MKL installed, gpunn sends the one-thread
    products to MKL, which rounds differently: tests/test_mkl.py covers that route)."""
    from gpunn.ops import mkl
    monkeypatch.setenv("GPUNN_BLAS", "openblas")
    mkl._reset()
    yield
    monkeypatch.undo()
    mkl._reset()
