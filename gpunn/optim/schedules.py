"""Per-epoch learning-rate schedules: each sets ``optimizer.lr`` from a closed form of the epoch.

Call ``step()`` once per epoch, after that epoch's optimizer steps (as in PyTorch). A schedule
is built at epoch 0 with ``base_lr = optimizer.lr``; ``get_last_lr()`` is the lr now in force
(a float: gpunn optimizers have one lr, where PyTorch returns a list per param group).
"""
from __future__ import annotations

import math

from ..errors import StateDictError
from .optimizers import Optimizer, check_lr, check_nonneg, host_scalar, real

__all__ = ["LRScheduler", "StepLR", "ExponentialLR", "CosineAnnealingLR"]


class LRScheduler:
    """A subclass defines ``validate(hyper) -> hyper`` (checks and cleans its settings, a
    static method) and ``lr_at(epoch)``; the settings live in one dict, ``self.hyper``."""

    def __init__(self, optimizer, **hyper):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: expected a gpunn optimizer, got "
                            f"{type(optimizer).__name__}")
        self.hyper = self.validate(hyper)
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr)
        self.last_epoch = 0
        self._apply()

    def __getattr__(self, name):
        hyper = self.__dict__.get("hyper")
        if hyper is not None and name in hyper:
            return hyper[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def lr_at(self, epoch: int) -> float:
        raise NotImplementedError

    def _apply(self):
        self._last_lr = self.lr_at(self.last_epoch)
        self.optimizer.lr = self._last_lr

    def step(self) -> None:
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self) -> float:
        return self._last_lr

    def state_dict(self) -> dict:
        return {"type": type(self).__name__, "base_lr": self.base_lr,
                "last_epoch": self.last_epoch, **self.hyper}

    def load_state_dict(self, state: dict) -> None:
        """Restore base_lr, epoch and settings, and set the optimizer's lr to match."""
        where = f"{type(self).__name__}.load_state_dict"
        if "type" in state and str(host_scalar(state["type"])) != type(self).__name__:
            raise StateDictError(f"{where}: the state dict is for {host_scalar(state['type'])}, "
                                 f"not {type(self).__name__} (nothing was changed)")
        missing = [k for k in ("type", "base_lr", "last_epoch", *self.hyper) if k not in state]
        if missing:
            raise StateDictError(f"{where}: missing keys: {', '.join(missing)} "
                                 f"(nothing was changed)")
        try:
            hyper = self.validate({k: host_scalar(state[k]) for k in self.hyper})
            base = check_lr(where, host_scalar(state["base_lr"]), allow_zero=True)
            epoch = int(host_scalar(state["last_epoch"]))
            if epoch < 0:
                raise ValueError(f"{where}: last_epoch must be >= 0, got {epoch}")
        except (TypeError, ValueError) as e:
            raise StateDictError(f"{where}: {e} (nothing was changed)") from None
        self.hyper, self.base_lr, self.last_epoch = hyper, base, epoch
        self._apply()

    def __repr__(self):
        hyper = ", ".join(f"{k}={v!r}" for k, v in self.hyper.items())
        return f"{type(self).__name__}({hyper}, last_epoch={self.last_epoch})"


def _positive_int(where, name, value):
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _positive(where, name, value):
    v = real(where, name, value)
    if v <= 0:
        raise ValueError(f"{where}: {name} must be > 0, got {v}")
    return v


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (epoch // step_size)."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1):
        super().__init__(optimizer, step_size=step_size, gamma=gamma)

    @staticmethod
    def validate(h):
        return {"step_size": _positive_int("StepLR", "step_size", h["step_size"]),
                "gamma": _positive("StepLR", "gamma", h["gamma"])}

    def lr_at(self, epoch):
        return self.base_lr * self.hyper["gamma"] ** (epoch // self.hyper["step_size"])


class ExponentialLR(LRScheduler):
    """lr = base_lr * gamma ** epoch."""

    def __init__(self, optimizer, gamma: float):
        super().__init__(optimizer, gamma=gamma)

    @staticmethod
    def validate(h):
        return {"gamma": _positive("ExponentialLR", "gamma", h["gamma"])}

    def lr_at(self, epoch):
        return self.base_lr * self.hyper["gamma"] ** epoch


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2.

    Reaches eta_min at epoch T_max; past it the cosine carries on (back up), as PyTorch's.
    """

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0):
        super().__init__(optimizer, T_max=T_max, eta_min=eta_min)

    @staticmethod
    def validate(h):
        return {"T_max": _positive_int("CosineAnnealingLR", "T_max", h["T_max"]),
                "eta_min": check_nonneg("CosineAnnealingLR", "eta_min", h["eta_min"])}

    def lr_at(self, epoch):
        h = self.hyper
        return h["eta_min"] + (self.base_lr - h["eta_min"]) * (
            1 + math.cos(math.pi * epoch / h["T_max"])) / 2
