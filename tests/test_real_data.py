"""Acceptance on real Fashion-MNIST (slow: run with `bash scripts/test.sh -m slow`).

The quickstart's settings (SGD, lr 0.05, momentum 0.9, cosine schedule, batch 100, Xavier
init, 5 epochs, 5,000 validation images held out) must reach the thresholds of issue 3.
"""
import pytest

from gpunn.data import DatasetNotFound, locate_dataset
from gpunn.runs import RunConfig, run_training

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _need_fashion_mnist():
    try:
        locate_dataset("fashion-mnist")
    except DatasetNotFound:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


@pytest.mark.parametrize("model,threshold", [("model4", 0.875), ("model2", 0.84), ("model1", 0.82)])
def test_quickstart_settings_reach_the_threshold(model, threshold, tmp_path):
    cfg = RunConfig(model=model, dataset="fashion-mnist", epochs=5, optimizer="sgd", lr=0.05,
                    momentum=0.9, schedule="cosine", batch_size=100, device="cpu", seed=0,
                    progress=False)
    summary = run_training(cfg, str(tmp_path / model), log=lambda s: None)
    assert summary["test_acc"] >= threshold, summary["test_acc"]
