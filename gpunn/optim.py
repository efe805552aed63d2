"""Optimizers (SGD, Adam) updating parameters in place, and per-epoch learning-rate schedules.

An optimizer takes ``params``: a list of ``(param, grad)`` array pairs (e.g.
``model.parameters()``), ``(name, param, grad)`` triples, or any object with
``.parameters()`` (a model). It keeps those arrays, so ``backward`` writing into the grads and
``step()`` writing into the params are seen by both sides without copies. Per-parameter state
(momentum buffers, Adam's m and v) is created when the optimizer is built, on each
parameter's device with its dtype; the step count ``t`` lives on the host.

Update formulas (CONVENTIONS.md, ``gpunn/ops/optim_update.py``):
    SGD:  g' = g + wd p;  v = mu v + g'  (ema: mu v + (1 - mu) g');
          step = g' + mu v (nesterov) or v (or g' when mu == 0);  p -= lr step
    Adam: g' = g + wd p;  m = b1 m + (1 - b1) g';  v = b2 v + (1 - b2) g'^2;
          p -= (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
These match ``torch.optim.SGD`` (dampening=0) and ``torch.optim.Adam`` (L2 weight decay, not
AdamW). ``ema=True`` is the coursework form v = mu v + (1 - mu) g' with v starting at zero,
which is *not* torch's ``dampening=mu`` (torch skips the damping on the first step).

Built from a model, the optimizer notices when the model's arrays were replaced (e.g. by
``model.to(device)``) and asks for ``opt.to(device)``, which re-binds to the model's current
arrays and moves the state along. Built from bare pairs it cannot follow such a move: build
it after moving the model.

``state_dict()`` is a flat dict of host values (str, int, float, bool, NumPy arrays), so it
can be stored in an .npz next to the model's. ``load_state_dict()`` restores step count,
hyperparameters (lr included, as PyTorch does) and buffers, after checking everything.
"""
from __future__ import annotations

import math

import numpy as np

from .backend import (FLOAT_DTYPES, DeviceError, device_of, get_array_module, is_cuda_array,
                      resolve_device,
                      to_device, to_numpy)
from .errors import DTypeError, ShapeError, StateDictError
from .ops.optim_update import adam_update, sgd_update

__all__ = ["Optimizer", "SGD", "Adam", "LRScheduler", "StepLR", "ExponentialLR",
           "CosineAnnealingLR"]


# -- argument checks --------------------------------------------------------------------------
def _real(where, name, value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{where}: {name} must be a number, got {type(value).__name__} "
                        f"{value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{where}: {name} must be finite, got {v}")
    return v


def _check_lr(where, lr, allow_zero):
    v = _real(where, "lr", lr)
    if v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{where}: lr must be {'>= 0' if allow_zero else '> 0'}, got {v}")
    return v


def _check_range(where, name, value, lo, hi, hi_open=True):
    v = _real(where, name, value)
    if not (lo <= v and (v < hi if hi_open else v <= hi)):
        raise ValueError(f"{where}: {name} must be in [{lo}, {hi}{')' if hi_open else ']'}, "
                         f"got {v}")
    return v


def _check_nonneg(where, name, value):
    v = _real(where, name, value)
    if v < 0:
        raise ValueError(f"{where}: {name} must be >= 0, got {v}")
    return v


def _host_scalar(x):
    """A Python scalar from a state-dict value (which may be a 0-d array read from .npz)."""
    return np.asarray(to_numpy(x)).item()


def _zeros_like(p):
    """Zeros with p's shape and dtype on p's device (CuPy allocates on the *current* device)."""
    if is_cuda_array(p):
        with p.device:
            return get_array_module(p).zeros_like(p)
    return np.zeros_like(p)


def _collect(params, where):
    """-> (pairs, names, source): validated (param, grad) pairs, names or None, the model."""
    source = None
    if hasattr(params, "parameters") and callable(params.parameters):
        source = params
        if hasattr(params, "named_parameters"):
            items = list(params.named_parameters())
        else:
            items = list(params.parameters())
    else:
        if isinstance(params, dict) or not hasattr(params, "__iter__"):
            raise TypeError(f"{where}: params must be a list of (param, grad) pairs or a model "
                            f"with .parameters(), got {type(params).__name__}")
        items = list(params)
    if not items:
        raise ValueError(f"{where}: got an empty parameter list (nothing to optimize)")
    pairs, names = [], []
    for i, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3) or (
                len(item) == 3 and not isinstance(item[0], str)):
            raise TypeError(f"{where}: parameter {i} must be a (param, grad) pair or a "
                            f"(name, param, grad) triple, got {type(item).__name__}")
        name, p, g = item if len(item) == 3 else (f"param {i}", *item)
        for what, a in (("param", p), ("grad", g)):
            if not hasattr(a, "shape") or not hasattr(a, "dtype"):
                raise TypeError(f"{where}: {name}: {what} must be an array, got "
                                f"{type(a).__name__}")
        if np.dtype(p.dtype) not in FLOAT_DTYPES:
            raise DTypeError(f"{where}: {name}: parameters must be float32 or float64, got "
                             f"{p.dtype}")
        if p.shape != g.shape or p.dtype != g.dtype:
            raise ShapeError(f"{where}: {name}: grad {tuple(g.shape)} {g.dtype} does not match "
                             f"param {tuple(p.shape)} {p.dtype}")
        if device_of(p) != device_of(g):
            raise DeviceError(f"{where}: {name}: param is on {device_of(p)}, grad on "
                              f"{device_of(g)}")
        pairs.append((p, g))
        names.append(name)
    seen = {}
    for i, (p, _) in enumerate(pairs):
        if id(p) in seen:
            raise ValueError(f"{where}: {names[i]} is the same array as {names[seen[id(p)]]}; "
                             f"each parameter may appear once")
        seen[id(p)] = i
    return pairs, names, source


# -- base class -------------------------------------------------------------------------------
class Optimizer:
    """Shared machinery: parameter list, lr, zero_grad, state_dict, to(device).

    Subclasses define ``_hyper()`` (name -> value), ``_set_hyper(values)``, ``_validate_hyper``,
    ``_buffer_names(hyper)`` (the per-parameter state arrays that hyperparameters call for)
    and ``_update(i, p, g)``.
    """

    def __init__(self, params, lr):
        where = type(self).__name__
        self.params, self.names, self._source = _collect(params, where)
        self._lr = _check_lr(where, lr, allow_zero=False)
        self.t = 0                    # completed steps (host int)
        self.state: dict = {}         # buffer name -> list of arrays, one per parameter

    # lr is read at every step, so a schedule (or anyone) may change it between steps
    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value):
        # 0 is allowed here (a cosine schedule reaches eta_min = 0), not at construction
        self._lr = _check_lr(type(self).__name__, value, allow_zero=True)

    def _make_buffers(self, names):
        self.state = {b: [_zeros_like(p) for p, _ in self.params] for b in names}

    # -- the step -------------------------------------------------------------------------
    def zero_grad(self) -> None:
        for _, g in self.params:
            g[...] = 0

    def step(self) -> None:
        self._check_source()
        self.t += 1
        for i, (p, g) in enumerate(self.params):
            self._update(i, p, g)

    def _check_source(self):
        """Catch a model whose arrays were replaced since: its updates would be lost."""
        if self._source is None:
            return
        current = list(self._source.parameters())
        if len(current) != len(self.params) or any(
                a is not p for (a, _), (p, _) in zip(current, self.params)):
            raise RuntimeError(
                f"{type(self).__name__}: the model's parameter arrays have been replaced since "
                f"this optimizer was built (model.to(device) or new arrays assigned), so step() "
                f"would update stale copies. Call opt.to(device) after moving the model "
                f"(it re-binds and moves the optimizer state), or build a new optimizer.")

    # -- devices --------------------------------------------------------------------------
    def to(self, device):
        """Move the optimizer state to ``device``; returns self.

        Built from a model: first re-bind to the model's current arrays (move the model first).
        Built from pairs: the pairs must already be on ``device``.
        """
        where = type(self).__name__
        if self._source is not None:
            pairs, names, _ = _collect(self._source, where)
            if [p.shape for p, _ in pairs] != [p.shape for p, _ in self.params]:
                raise ShapeError(f"{where}.to(): the model's parameters no longer match the "
                                 f"ones this optimizer was built for; build a new optimizer")
        else:
            pairs, names = self.params, self.names
        target = resolve_device(device)
        for (p, _), name in zip(pairs, names):
            if device_of(p) != target:
                raise DeviceError(f"{where}.to({str(target)!r}): {name} is on {device_of(p)}; "
                                  f"move the model first (model.to(device)), then the optimizer")
        self.params, self.names = pairs, names
        self.state = {b: [to_device(a, target) for a in arrs] for b, arrs in self.state.items()}
        return self

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Flat dict of host values: type, num_params, t, hyperparameters, ``<buffer>.<i>``."""
        sd = {"type": type(self).__name__, "num_params": len(self.params), "t": self.t}
        sd.update(self._hyper())
        for b, arrs in self.state.items():
            for i, a in enumerate(arrs):
                sd[f"{b}.{i}"] = to_numpy(a).copy()
        return sd

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`. Everything is checked first (type, parameter count,
        hyperparameters, buffer keys and shapes); on any problem a StateDictError lists them
        all and nothing is changed."""
        where = f"{type(self).__name__}.load_state_dict"
        problems = []
        try:
            kind = str(_host_scalar(state["type"]))
        except KeyError:
            kind = None
            problems.append("missing key 'type'")
        if kind is not None and kind != type(self).__name__:
            raise StateDictError(f"{where}: the state dict is for {kind}, not "
                                 f"{type(self).__name__} (nothing was changed)")
        hyper = {}
        for k in ["num_params", "t", *self._hyper()]:
            if k not in state:
                problems.append(f"missing key {k!r}")
            else:
                hyper[k] = _host_scalar(state[k])
        if not problems:
            n = int(hyper.pop("num_params"))
            if n != len(self.params):
                problems.append(f"it holds state for {n} parameters, this optimizer has "
                                f"{len(self.params)}")
            t = int(hyper.pop("t"))
            if t < 0:
                problems.append(f"t must be >= 0, got {t}")
            try:
                hyper = self._validate_hyper(hyper)
            except (TypeError, ValueError) as e:
                problems.append(str(e))
        if problems:
            raise StateDictError(f"{where}: " + "; ".join(problems) + " (nothing was changed)")

        expected = {f"{b}.{i}": (b, i) for b in self._buffer_names(hyper)
                    for i in range(len(self.params))}
        known = {"type", "num_params", "t", *self._hyper()}
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected and k not in known]
        bad = []
        for k, (_, i) in expected.items():
            if k in state and tuple(np.shape(state[k])) != tuple(self.params[i][0].shape):
                bad.append(f"{k} ({self.names[i]}): expected {tuple(self.params[i][0].shape)}, "
                           f"got {tuple(np.shape(state[k]))}")
        if missing:
            problems.append(f"missing keys: {', '.join(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {', '.join(unexpected)}")
        if bad:
            problems.append(f"shape mismatch: {'; '.join(bad)}")
        if problems:
            raise StateDictError(f"{where}: " + " | ".join(problems) + " (nothing was changed)")

        # all checked: apply. Existing buffers are filled in place (their identity is kept).
        self._set_hyper(hyper)
        self.t = t
        old = self.state
        self.state = {}
        for b in self._buffer_names(hyper):
            arrs = old.get(b) or [_zeros_like(p) for p, _ in self.params]
            for i, a in enumerate(arrs):
                src = np.asarray(to_numpy(state[f"{b}.{i}"]), dtype=a.dtype)
                a[...] = to_device(src, device_of(a))
            self.state[b] = arrs

    def __repr__(self):
        hyper = ", ".join(f"{k}={v!r}" for k, v in self._hyper().items())
        return f"{type(self).__name__}({len(self.params)} params, {hyper})"


# -- SGD --------------------------------------------------------------------------------------
class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov / EMA) momentum and weight decay.

    lr > 0; 0 <= momentum < 1; nesterov needs momentum > 0; weight_decay >= 0 (L2 on every
    parameter, as torch); ema: v = mu v + (1 - mu) g' (the coursework's momentum form).
    """

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0, ema=False):
        super().__init__(params, lr)
        self._set_hyper(self._validate_hyper({"lr": self._lr, "momentum": momentum,
                                              "nesterov": nesterov,
                                              "weight_decay": weight_decay, "ema": ema}))
        self._make_buffers(self._buffer_names(self._hyper()))

    @property
    def momentum(self):
        return self._momentum

    @property
    def nesterov(self):
        return self._nesterov

    @property
    def weight_decay(self):
        return self._weight_decay

    @property
    def ema(self):
        return self._ema

    def _hyper(self):
        return {"lr": self._lr, "momentum": self._momentum, "nesterov": self._nesterov,
                "weight_decay": self._weight_decay, "ema": self._ema}

    @staticmethod
    def _validate_hyper(h):
        lr = _check_lr("SGD", h["lr"], allow_zero=True)
        mu = _check_range("SGD", "momentum", h["momentum"], 0.0, 1.0)
        nesterov, ema = bool(h["nesterov"]), bool(h["ema"])
        if nesterov and mu == 0:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        wd = _check_nonneg("SGD", "weight_decay", h["weight_decay"])
        return {"lr": lr, "momentum": mu, "nesterov": nesterov, "weight_decay": wd, "ema": ema}

    def _set_hyper(self, h):
        self._lr, self._momentum, self._nesterov = h["lr"], h["momentum"], h["nesterov"]
        self._weight_decay, self._ema = h["weight_decay"], h["ema"]

    @staticmethod
    def _buffer_names(h):
        return ["velocity"] if h["momentum"] > 0 else []

    def _update(self, i, p, g):
        v = self.state["velocity"][i] if self._momentum > 0 else None
        sgd_update(p, g, v, self._lr, self._momentum, self._nesterov, self._weight_decay,
                   self._ema)


# -- Adam -------------------------------------------------------------------------------------
class Adam(Optimizer):
    """Adam with bias correction (torch.optim.Adam; weight_decay is L2 added to the gradient).

    lr > 0; betas in [0, 1); eps > 0; weight_decay >= 0.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"Adam: betas must be a pair (beta1, beta2), got {betas!r}") from None
        self._set_hyper(self._validate_hyper({"lr": self._lr, "beta1": b1, "beta2": b2,
                                              "eps": eps, "weight_decay": weight_decay}))
        self._make_buffers(self._buffer_names(self._hyper()))

    @property
    def betas(self):
        return (self._b1, self._b2)

    @property
    def eps(self):
        return self._eps

    @property
    def weight_decay(self):
        return self._weight_decay

    def _hyper(self):
        return {"lr": self._lr, "beta1": self._b1, "beta2": self._b2, "eps": self._eps,
                "weight_decay": self._weight_decay}

    @staticmethod
    def _validate_hyper(h):
        lr = _check_lr("Adam", h["lr"], allow_zero=True)
        b1 = _check_range("Adam", "beta1 (betas[0])", h["beta1"], 0.0, 1.0)
        b2 = _check_range("Adam", "beta2 (betas[1])", h["beta2"], 0.0, 1.0)
        eps = _real("Adam", "eps", h["eps"])
        if eps <= 0:
            raise ValueError(f"Adam: eps must be > 0, got {eps}")
        wd = _check_nonneg("Adam", "weight_decay", h["weight_decay"])
        return {"lr": lr, "beta1": b1, "beta2": b2, "eps": eps, "weight_decay": wd}

    def _set_hyper(self, h):
        self._lr, self._b1, self._b2 = h["lr"], h["beta1"], h["beta2"]
        self._eps, self._weight_decay = h["eps"], h["weight_decay"]

    @staticmethod
    def _buffer_names(h):
        return ["m", "v"]

    def step(self) -> None:
        # bias corrections once per step, on the host in float64
        self._check_source()
        self.t += 1
        bc1 = 1.0 - self._b1 ** self.t
        bc2 = 1.0 - self._b2 ** self.t
        m, v = self.state["m"], self.state["v"]
        for i, (p, g) in enumerate(self.params):
            adam_update(p, g, m[i], v[i], self._lr, self._b1, self._b2, self._eps,
                        self._weight_decay, bc1, bc2)


# -- learning-rate schedules --------------------------------------------------------------------
class LRScheduler:
    """Sets ``optimizer.lr`` from a closed form of the epoch count; call ``step()`` once per
    epoch, after that epoch's optimizer steps (as in PyTorch).

    Built at epoch 0 with ``base_lr = optimizer.lr``; ``get_last_lr()`` is the lr now in force
    (a float: gpunn optimizers have one lr, where PyTorch returns a list per param group).
    """

    def __init__(self, optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: expected a gpunn optimizer, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr)
        self.last_epoch = 0
        self._apply()

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

    def _hyper(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {"type": type(self).__name__, "base_lr": self.base_lr,
                "last_epoch": self.last_epoch, **self._hyper()}

    def load_state_dict(self, state: dict) -> None:
        """Restore base_lr, epoch and settings, and set the optimizer's lr to match."""
        where = f"{type(self).__name__}.load_state_dict"
        if "type" in state and str(_host_scalar(state["type"])) != type(self).__name__:
            raise StateDictError(f"{where}: the state dict is for {_host_scalar(state['type'])}, "
                                 f"not {type(self).__name__} (nothing was changed)")
        missing = [k for k in ("type", "base_lr", "last_epoch", *self._hyper()) if k not in state]
        if missing:
            raise StateDictError(f"{where}: missing keys: {', '.join(missing)} "
                                 f"(nothing was changed)")
        values = {k: _host_scalar(state[k]) for k in self._hyper()}
        try:
            probe = type(self).__new__(type(self))
            probe._set_hyper(values)
            base = _check_lr(where, _host_scalar(state["base_lr"]), allow_zero=True)
            epoch = int(_host_scalar(state["last_epoch"]))
            if epoch < 0:
                raise ValueError(f"{where}: last_epoch must be >= 0, got {epoch}")
        except (TypeError, ValueError) as e:
            raise StateDictError(f"{where}: {e} (nothing was changed)") from None
        self._set_hyper(values)
        self.base_lr, self.last_epoch = base, epoch
        self._apply()

    def __repr__(self):
        hyper = ", ".join(f"{k}={v!r}" for k, v in self._hyper().items())
        return f"{type(self).__name__}({hyper}, last_epoch={self.last_epoch})"


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (epoch // step_size)."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1):
        self._set_hyper({"step_size": step_size, "gamma": gamma})
        super().__init__(optimizer)

    def _set_hyper(self, h):
        step_size = h["step_size"]
        if isinstance(step_size, bool) or int(step_size) != step_size or step_size < 1:
            raise ValueError(f"StepLR: step_size must be a positive integer, got {step_size!r}")
        gamma = _real("StepLR", "gamma", h["gamma"])
        if gamma <= 0:
            raise ValueError(f"StepLR: gamma must be > 0, got {gamma}")
        self.step_size, self.gamma = int(step_size), gamma

    def _hyper(self):
        return {"step_size": self.step_size, "gamma": self.gamma}

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class ExponentialLR(LRScheduler):
    """lr = base_lr * gamma ** epoch."""

    def __init__(self, optimizer, gamma: float):
        self._set_hyper({"gamma": gamma})
        super().__init__(optimizer)

    def _set_hyper(self, h):
        gamma = _real("ExponentialLR", "gamma", h["gamma"])
        if gamma <= 0:
            raise ValueError(f"ExponentialLR: gamma must be > 0, got {gamma}")
        self.gamma = gamma

    def _hyper(self):
        return {"gamma": self.gamma}

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** epoch


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2.

    Reaches eta_min at epoch T_max; past it the cosine carries on (back up), as PyTorch's.
    """

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0):
        self._set_hyper({"T_max": T_max, "eta_min": eta_min})
        super().__init__(optimizer)

    def _set_hyper(self, h):
        T_max = h["T_max"]
        if isinstance(T_max, bool) or int(T_max) != T_max or T_max < 1:
            raise ValueError(f"CosineAnnealingLR: T_max must be a positive integer, got {T_max!r}")
        self.T_max = int(T_max)
        self.eta_min = _check_nonneg("CosineAnnealingLR", "eta_min", h["eta_min"])

    def _hyper(self):
        return {"T_max": self.T_max, "eta_min": self.eta_min}

    def lr_at(self, epoch):
        return self.eta_min + (self.base_lr - self.eta_min) * (
            1 + math.cos(math.pi * epoch / self.T_max)) / 2
