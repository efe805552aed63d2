"""The CIFAR-size zoo models through the emulated CUDA path: their CUDA bodies (and kernels run
on the CPU) train them like the NumPy bodies, step for step, in float64 (the coursework models'
runs are in tests/test_cuda_emulation.py)."""
import numpy as np
import pytest

from gpunn.parity import training_parity


@pytest.mark.parametrize("model,optimizer", [("vgg-cifar", "sgd"), ("resnet20", "adam")])
def test_cifar_models_train_alike(side, model, optimizer):
    # 8x8 inputs keep the emulated kernels (one C++ call per CUDA thread) to seconds
    row = training_parity(side, model, np.float64, steps=4, batch=6, size=8, optimizer=optimizer)
    assert row.forward < 1e-10 and row.backward < 1e-10, row
    assert row.launches > 4 * 20, row
