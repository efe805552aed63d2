"""The flat public API: ``import gpunn`` gives what a first model needs, and the README's
Python examples run as written."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpunn

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_public_name_resolves():
    missing = [n for n in gpunn.__all__ if not hasattr(gpunn, n)]
    assert not missing
    for name in ("Linear", "Conv2d", "Sequential", "CrossEntropyLoss", "SGD", "Adam",
                 "CosineAnnealingLR", "load_dataset", "DataLoader", "fit", "check_model"):
        assert name in gpunn.__all__


def test_old_loss_name_is_an_alias():
    assert gpunn.SoftmaxCrossEntropy is gpunn.CrossEntropyLoss or issubclass(
        gpunn.SoftmaxCrossEntropy, gpunn.CrossEntropyLoss)


@pytest.mark.parametrize("layer", [gpunn.Linear(4, 3), gpunn.ReLU(), gpunn.Dropout(0.5),
                                   gpunn.BatchNorm1d(4)])
def test_layer_and_sequential_default_to_the_same_mode(layer):
    """Both start in training mode and follow train()/eval() the same way."""
    model = gpunn.Sequential(gpunn.Linear(4, 4))
    assert layer.training is True and model.training is True
    layer.eval()
    model.eval()
    assert layer.training is False and model.training is False
    assert layer._mode(None) is False and model._mode(None) is False
    layer.train()
    assert layer._mode(None) is True and layer._mode(False) is False


def test_dropout_called_directly_follows_its_mode():
    d = gpunn.Dropout(0.5, seed=1)
    x = np.ones((50, 20))
    assert np.any(d(x) == 0)                 # training by default, like PyTorch
    d.eval()
    np.testing.assert_array_equal(d(x), x)


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert len(_python_blocks()) >= 2


@pytest.mark.parametrize("i", range(len(_python_blocks())))
def test_readme_python_example_runs(i, tmp_path):
    code = _python_blocks()[i]
    needs = re.match(r"# needs: (.*)\n", code)      # an example for an optional package
    for module in (needs.group(1).split(",") if needs else []):
        pytest.importorskip(module.strip(), reason=f"the README example needs {module.strip()}")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=600, env={"GPUNN_DEVICE": "cpu",
                                                     **__import__("os").environ})
    assert r.returncode == 0, r.stderr[-3000:]


def test_a_model_reports_its_device_and_dtype():
    """Sequential holds no arrays itself: device and dtype come from its layers."""
    model = gpunn.Sequential(gpunn.Flatten(), gpunn.Linear(4, 3, dtype=np.float64), gpunn.ReLU())
    assert model.device == gpunn.resolve_device("cpu") and model.dtype == np.float64
    assert gpunn.Sequential(gpunn.ReLU()).device is None
    loader = gpunn.DataLoader(np.zeros((4, 4)), np.zeros(4, np.int64), 2, device=model.device)
    assert loader.device == model.device
