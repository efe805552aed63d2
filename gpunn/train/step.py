"""One training step as an object: forward, loss, backward, gradient hooks, update.

:class:`TrainStep` is the unit the rest of a training run builds on: the loop calls it once per
batch, a CUDA-graph version would capture and replay exactly this, and a data-parallel wrapper
adds a gradient all-reduce as a hook between backward and update. It keeps the running loss
and accuracy of the current epoch *on the device*, so a step never waits for the GPU; reading
them (:meth:`metrics`) is the one host synchronisation, done only when a number is shown.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..model import Sequential

__all__ = ["TrainStep"]


class TrainStep:
    """``step(xb, yb)``: one optimisation step on a batch already on the model's device.

    xb: (N, ...) inputs, yb: (N,) integer labels. ``after_backward`` holds callables
    ``hook(step)`` run between backward and the update (gradients are in the model's grads,
    the batch's loss, a device scalar, in ``step.loss``: the place for an all-reduce or a
    non-finite check). ``after_layer``, None or ``hook(layer, layers)``, runs after each
    top-level layer's backward of a Sequential model (a data-parallel step starts all-reducing
    the gradients that are final there).
    """

    def __init__(self, model, loss_fn, optimizer):
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.after_backward: list = []
        self.after_layer = None      # Sequential.backward's after_step (a data-parallel step's)
        self.loss_sum = self.correct = self.loss = None
        self.seen = 0

    def reset_metrics(self, xp=np) -> None:
        """Zero the running sums (at the start of each epoch), on ``xp``'s device."""
        self.loss_sum = xp.zeros((), dtype=np.float64)
        self.correct = xp.zeros((), dtype=np.int64)
        self.seen = 0

    def __call__(self, xb, yb):
        logits = self.model.forward(xb, train=True)
        if self.loss_sum is None:
            self.reset_metrics(get_array_module(logits))
        # the running sums take the batch as soon as its loss is known, and `seen` with them,
        # so the three stay consistent even when a later part of the step raises
        n = len(xb)
        tally = getattr(self.loss_fn, "forward_tally", None)
        if tally is not None:       # the loss adds to the running sums itself (fewer launches)
            loss = tally(logits, yb, self.loss_sum, self.correct)
        else:
            loss = self.loss_fn.forward(logits, yb)
            self.loss_sum += loss * n
            self.correct += (logits.argmax(axis=1) == yb).sum()
        self.seen += n
        self.loss = loss
        if isinstance(self.model, Sequential):       # the data needs no gradient
            self.model.backward(self.loss_fn.backward(), input_grad=False,
                                after_step=self.after_layer)
        else:
            self.model.backward(self.loss_fn.backward())
            if hasattr(self.model, "release_caches"):      # (a Sequential releases as it goes)
                self.model.release_caches()
        for hook in self.after_backward:
            hook(self)
        self.update()
        return loss

    def update(self) -> None:
        """The optimizer's step (a data-parallel step may split it between ranks)."""
        self.optimizer.step()

    def metrics(self) -> tuple:
        """(mean loss, accuracy) over the batches since :meth:`reset_metrics`, as floats."""
        seen = max(self.seen, 1)
        return float(self.loss_sum) / seen, float(self.correct) / seen

    def samples_in(self, xb) -> int:
        """Training samples the step just taken on ``xb`` consumed (a data-parallel step
        counts every rank's)."""
        return len(xb)

    def agree_stop(self, requested: bool) -> bool:
        """Whether to stop after this step, given this process was ``requested`` to (Ctrl-C);
        a data-parallel step makes every rank agree."""
        return bool(requested)
