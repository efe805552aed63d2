"""gpunn: neural networks with hand-written backprop on NumPy (CPU) or CuPy (CUDA).

    import gpunn
    model = gpunn.Sequential(gpunn.Flatten(), gpunn.Linear(784, 100), gpunn.ReLU(),
                             gpunn.Linear(100, 10)).to("auto")
    opt = gpunn.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = gpunn.CrossEntropyLoss()

Everything a first model needs is here; the modules (``gpunn.layers``, ``gpunn.optim``,
``gpunn.data``, ``gpunn.train``, ``gpunn.zoo``, ``gpunn.gradcheck``...) hold the rest.
Importing gpunn imports neither CuPy (until a CUDA device is asked for) nor click (the CLI).
"""
__version__ = "0.1.0"

# first: gpunn.threads loads NumPy with OpenBLAS's idle spin shortened (it reads the
# setting only when it loads; gpunn/threads.py says why)
from . import threads as _threads  # noqa: F401,I001
from . import gradcheck
from .backend import Device, DeviceError, resolve_device, to_device, to_numpy
from .data import DataLoader, Dataset, RandomAugment, load_dataset
from .gradcheck import check_layer, check_model
from .init import he_normal, he_uniform, xavier_normal, xavier_uniform, zeros
from . import layers
from .layers import *  # noqa: F401,F403  (every public layer: gpunn.layers.__all__)
from .losses import CrossEntropyLoss, Loss, MSELoss, SoftmaxCrossEntropy, l2_penalty
from .model import Sequential
from .optim import (SGD, Adam, CosineAnnealingLR, ExponentialLR, LRScheduler, Optimizer,
                    StepLR)
from .parameter import Parameter
from .train import GraphedTrainStep, TrainConfig, Trainer, TrainStep, evaluate, fit
from .fuse import fuse, unfuse
from .zoo import build_model
from .runs import load_model
from . import interop  # imports torch only when called

__all__ = [
    "__version__",
    # layers and models
    *layers.__all__, "Sequential", "Parameter", "build_model", "load_model",
    # losses
    "Loss", "CrossEntropyLoss", "MSELoss", "SoftmaxCrossEntropy", "l2_penalty",
    # optimizers and schedules
    "Optimizer", "SGD", "Adam", "LRScheduler", "StepLR", "ExponentialLR", "CosineAnnealingLR",
    # data and training
    "Dataset", "load_dataset", "DataLoader", "RandomAugment", "fit", "evaluate", "TrainConfig", "Trainer",
    "TrainStep", "GraphedTrainStep", "fuse", "unfuse",
    # checks, devices, initialisers
    "gradcheck", "interop", "check_layer", "check_model", "Device", "DeviceError", "resolve_device",
    "to_device", "to_numpy", "xavier_uniform", "xavier_normal", "he_uniform", "he_normal",
    "zeros",
]
