"""Training: a :class:`TrainStep` (forward, loss, backward, update), a :class:`Trainer` loop
that emits events, extensions for evaluation, checkpoints, early stopping, the LR schedule
and progress, and :func:`fit`, which puts the usual run together."""
from ..serialization import load_checkpoint, save_checkpoint
from .extensions import (BEST, CHECKPOINT, BestWeights, Checkpoint, EarlyStopping, EvalLog,
                         Evaluation, Extension, LRSchedule, NonFiniteGuard, ProgressBar, RunLock)
from .loop import TrainConfig, Trainer, TrainResult, TrainState, evaluate, fit
from .graph import GraphedTrainStep
from .step import TrainStep

__all__ = ["TrainConfig", "TrainState", "TrainResult", "TrainStep", "GraphedTrainStep", "Trainer", "fit", "evaluate",
           "Extension", "LRSchedule", "Evaluation", "EarlyStopping", "Checkpoint", "EvalLog",
           "ProgressBar", "RunLock", "NonFiniteGuard", "BestWeights", "CHECKPOINT", "BEST",
           "load_checkpoint", "save_checkpoint"]
