"""Optimizers (``optimizers.py``: SGD, Adam, updating flat parameter buffers in one fused call)
and per-epoch learning-rate schedules (``schedules.py``)."""
from .optimizers import SGD, Adam, Optimizer
from .schedules import CosineAnnealingLR, ExponentialLR, LRScheduler, StepLR

__all__ = ["Optimizer", "SGD", "Adam", "LRScheduler", "StepLR", "ExponentialLR",
           "CosineAnnealingLR"]
