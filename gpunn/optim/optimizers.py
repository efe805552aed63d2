"""Optimizers (SGD, Adam) that update whole flat parameter buffers in place.

An optimizer takes a model (anything with ``.parameters()``), a list of its
:class:`~gpunn.parameter.Parameter` objects, or bare ``(param, grad)`` array pairs /
``(name, param, grad)`` triples. A model's parameters live in flat buffers
(gpunn/parameter.py), and the optimizer updates each buffer with ONE fused call — one kernel
launch on a GPU, one vectorised pass on the CPU — with its state (momentum, Adam's m and v)
in flat buffers of the same layout. Bare arrays are updated one by one, in place.

The optimizer holds the Parameter objects, not their arrays: ``model.to(device)`` re-points
them, and the next ``step()`` moves the optimizer state to the parameters' device, so an
optimizer built before ``.to()`` keeps working.

Update formulas (CONVENTIONS.md, ``gpunn/ops/optim_update.py``):
    SGD:  g' = g + wd p;  v = mu v + g'  (ema: mu v + (1 - mu) g');
          step = g' + mu v (nesterov) or v (or g' when mu == 0);  p -= lr step
    Adam: g' = g + wd p;  m = b1 m + (1 - b1) g';  v = b2 v + (1 - b2) g'^2;
          p -= (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
These match ``torch.optim.SGD`` (dampening=0) and ``torch.optim.Adam`` (L2 weight decay, not
AdamW). ``ema=True`` is the coursework form v = mu v + (1 - mu) g' with v starting at zero,
which is *not* torch's ``dampening=mu`` (torch skips the damping on the first step). Every
update is element-wise, so one call over a flat buffer gives the same bits as one call per
array.

``state_dict()`` is a flat dict of host values keyed per parameter as always (``velocity.0``,
``m.3``, ...), so checkpoints do not depend on the buffer layout. ``load_state_dict()``
restores step count, hyper-parameters (lr included, as PyTorch does) and state, after
checking everything.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import FLOAT_DTYPES, DeviceError, device_of, is_cuda_array, to_device, to_numpy
from ..errors import DTypeError, ShapeError, StateDictError
from ..graphs import HostValue
from ..ops.optim_update import adam_update, sgd_update
from ..parameter import Parameter, buffers_of, pack_parameters

__all__ = ["Optimizer", "SGD", "Adam"]


# -- argument checks (shared with the schedules) ----------------------------------------------
def real(where, name, value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{where}: {name} must be a number, got {type(value).__name__} "
                        f"{value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{where}: {name} must be finite, got {v}")
    return v


def check_lr(where, lr, allow_zero):
    v = real(where, "lr", lr)
    if v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{where}: lr must be {'>= 0' if allow_zero else '> 0'}, got {v}")
    return v


def check_range(where, name, value, lo, hi):
    v = real(where, name, value)
    if not lo <= v < hi:
        raise ValueError(f"{where}: {name} must be in [{lo}, {hi}), got {v}")
    return v


def check_nonneg(where, name, value):
    v = real(where, name, value)
    if v < 0:
        raise ValueError(f"{where}: {name} must be >= 0, got {v}")
    return v


def host_scalar(x):
    """A Python scalar from a state-dict value (which may be a 0-d array read from .npz)."""
    return np.asarray(to_numpy(x)).item()


# -- what an optimizer updates ------------------------------------------------------------------
class _Loose:
    """One parameter updated on its own (bare arrays, or part of a model's buffer)."""

    def __init__(self, p: Parameter):
        self.params = [p]

    @property
    def values(self):
        return self.params[0].data

    @property
    def grads(self):
        return self.params[0].grad

    def slice_of(self, i):
        return slice(None)


def _collect(params, where):
    """-> (Parameters, names): validated, each parameter once."""
    if hasattr(params, "parameters") and callable(params.parameters):
        items = list(params.named_parameters()) if hasattr(params, "named_parameters") \
            else list(params.parameters())
    else:
        if isinstance(params, dict) or not hasattr(params, "__iter__"):
            raise TypeError(f"{where}: params must be a model, a list of Parameters or of "
                            f"(param, grad) pairs, got {type(params).__name__}")
        items = list(params)
    if not items:
        raise ValueError(f"{where}: got an empty parameter list (nothing to optimize)")
    out, names = [], []
    for i, item in enumerate(items):
        name = f"param {i}"
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Parameter):
            name, item = item                               # from named_parameters()
        if isinstance(item, Parameter):
            out.append(item)
            names.append(name)
            continue
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3) or (
                len(item) == 3 and not isinstance(item[0], str)):
            raise TypeError(f"{where}: parameter {i} must be a Parameter, a (param, grad) pair "
                            f"or a (name, param, grad) triple, got {type(item).__name__}")
        name, p, g = item if len(item) == 3 else (name, *item)
        for what, a in (("param", p), ("grad", g)):
            if not hasattr(a, "shape") or not hasattr(a, "dtype"):
                raise TypeError(f"{where}: {name}: {what} must be an array, got "
                                f"{type(a).__name__}")
        if p.shape != g.shape or p.dtype != g.dtype:
            raise ShapeError(f"{where}: {name}: grad {tuple(g.shape)} {g.dtype} does not match "
                             f"param {tuple(p.shape)} {p.dtype}")
        if device_of(p) != device_of(g):
            raise DeviceError(f"{where}: {name}: param is on {device_of(p)}, grad on "
                              f"{device_of(g)}")
        out.append(Parameter(p, name, grad=g))
        names.append(name)
    seen = {}
    for i, p in enumerate(out):
        if np.dtype(p.dtype) not in FLOAT_DTYPES:
            raise DTypeError(f"{where}: {names[i]}: parameters must be float32 or float64, got "
                             f"{p.dtype}")
        key = id(p.data) if p._layer is None else id(p)
        if key in seen:
            raise ValueError(f"{where}: {names[i]} is the same array as {names[seen[key]]}; "
                             f"each parameter may appear once")
        seen[key] = i
    return out, names


def _slots(params):
    """Flat buffers when ``params`` fill them exactly (packing a model's loose parameters
    first); else one slot per parameter."""
    if all(p._layer is not None and p.flat is None for p in params):
        pack_parameters(params)
    flats = buffers_of(params)
    return flats if flats is not None else [_Loose(p) for p in params]


def _same_place(a, b) -> bool:
    if type(a) is not type(b):
        return False
    return not is_cuda_array(a) or a.device.id == b.device.id


def _zeros_like(a):
    if is_cuda_array(a):
        with a.device:
            import cupy
            return cupy.zeros_like(a)
    return np.zeros_like(a)


# -- base class -------------------------------------------------------------------------------
class Optimizer:
    """Parameters, one validated hyper-parameter dict, state per slot, state_dict.

    A subclass defines ``validate(where, hyper) -> hyper`` (a static method that checks every
    value and returns them cleaned), ``buffers(hyper)`` (the state each slot needs) and
    ``_update(values, grads, state)``.
    """

    def __init__(self, params, **hyper):
        where = type(self).__name__
        self.params, self.names = _collect(params, where)
        check_lr(where, hyper["lr"], allow_zero=False)
        self.hyper = self.validate(where, hyper)
        self.t = 0                               # completed steps (host int)
        self.slots = _slots(self.params)
        self._where = []                         # parameter i -> (slot index, slice)
        for j, slot in enumerate(self.slots):
            self._where += [(j, slot.slice_of(k)) for k in range(len(slot.params))]
        self.state: dict = {b: [_zeros_like(s.values) for s in self.slots]
                            for b in self.buffers(self.hyper)}

    # every hyper-parameter reads as an attribute (opt.momentum, opt.eps, ...); lr is also
    # settable, since a schedule (or anyone) may change it between steps
    def __getattr__(self, name):
        hyper = self.__dict__.get("hyper")
        if hyper is not None and name in hyper:
            return hyper[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def lr(self) -> float:
        return self.hyper["lr"]

    @lr.setter
    def lr(self, value):
        # 0 is allowed here (a cosine schedule reaches eta_min = 0), not at construction
        self.hyper["lr"] = check_lr(type(self).__name__, value, allow_zero=True)

    # -- the step -------------------------------------------------------------------------
    def zero_grad(self) -> None:
        for slot in self.slots:
            slot.grads[...] = 0

    def step(self) -> None:
        self.t += 1
        for j, slot in enumerate(self.slots):
            self._update(slot.values, slot.grads, self._state_of(j))

    def _state_of(self, j) -> dict:
        """Slot j's state, moved (or converted) first if its parameters changed device (or
        dtype) since: ``model.to(...)`` after building the optimizer."""
        state = {b: arrs[j] for b, arrs in self.state.items()}
        values = self.slots[j].values
        for b, a in state.items():
            if not _same_place(a, values) or a.dtype != values.dtype:
                a = to_device(a, device_of(values)).astype(values.dtype, copy=False)
                state[b] = self.state[b][j] = a
        return state

    def to(self, device):
        """Move the optimizer state to ``device`` now (``step()`` also does it when needed)."""
        self.state = {b: [to_device(a, device) for a in arrs] for b, arrs in self.state.items()}
        return self

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Flat dict of host values: type, num_params, t, hyper-parameters, ``<buffer>.<i>``."""
        sd = {"type": type(self).__name__, "num_params": len(self.params), "t": self.t}
        sd.update(self.hyper)
        for b, arrs in self.state.items():
            for i, (j, s) in enumerate(self._where):
                sd[f"{b}.{i}"] = to_numpy(arrs[j][s]).reshape(self.params[i].shape).copy()
        return sd

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`. Everything is checked first (type, parameter count,
        hyper-parameters, buffer keys and shapes); on any problem a StateDictError lists them
        all and nothing is changed."""
        where = f"{type(self).__name__}.load_state_dict"
        problems = []
        try:
            kind = str(host_scalar(state["type"]))
        except KeyError:
            kind = None
            problems.append("missing key 'type'")
        if kind is not None and kind != type(self).__name__:
            raise StateDictError(f"{where}: the state dict is for {kind}, not "
                                 f"{type(self).__name__} (nothing was changed)")
        hyper = {}
        for k in ["num_params", "t", *self.hyper]:
            if k not in state:
                problems.append(f"missing key {k!r}")
            else:
                hyper[k] = host_scalar(state[k])
        if not problems:
            n = int(hyper.pop("num_params"))
            if n != len(self.params):
                problems.append(f"it holds state for {n} parameters, this optimizer has "
                                f"{len(self.params)}")
            t = int(hyper.pop("t"))
            if t < 0:
                problems.append(f"t must be >= 0, got {t}")
            try:
                hyper = self.validate(type(self).__name__, hyper)
            except (TypeError, ValueError) as e:
                problems.append(str(e))
        if problems:
            raise StateDictError(f"{where}: " + "; ".join(problems) + " (nothing was changed)")

        expected = {f"{b}.{i}": i for b in self.buffers(hyper) for i in range(len(self.params))}
        known = {"type", "num_params", "t", *self.hyper}
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected and k not in known]
        bad = []
        for k, i in expected.items():
            if k in state and tuple(np.shape(state[k])) != tuple(self.params[i].shape):
                bad.append(f"{k} ({self.names[i]}): expected {tuple(self.params[i].shape)}, "
                           f"got {tuple(np.shape(state[k]))}")
        if missing:
            problems.append(f"missing keys: {', '.join(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {', '.join(unexpected)}")
        if bad:
            problems.append(f"shape mismatch: {'; '.join(bad)}")
        if problems:
            raise StateDictError(f"{where}: " + " | ".join(problems) + " (nothing was changed)")

        # all checked: apply. Existing state buffers are filled in place (their identity kept).
        self.hyper, self.t = hyper, t
        old, self.state = self.state, {}
        for b in self.buffers(hyper):
            arrs = old.get(b) or [_zeros_like(s.values) for s in self.slots]
            for i, (j, s) in enumerate(self._where):
                dst = arrs[j][s]
                src = np.asarray(to_numpy(state[f"{b}.{i}"]), dtype=dst.dtype).reshape(dst.shape)
                dst[...] = to_device(src, device_of(dst))
            self.state[b] = arrs

    def __repr__(self):
        hyper = ", ".join(f"{k}={v!r}" for k, v in self.hyper.items())
        return f"{type(self).__name__}({len(self.params)} params, {hyper})"


# -- SGD --------------------------------------------------------------------------------------
class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov / EMA) momentum and weight decay.

    lr > 0; 0 <= momentum < 1; nesterov needs momentum > 0; weight_decay >= 0 (L2 on every
    parameter, as torch); ema: v = mu v + (1 - mu) g' (the coursework's momentum form).
    """

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0, ema=False):
        super().__init__(params, lr=lr, momentum=momentum, nesterov=nesterov,
                         weight_decay=weight_decay, ema=ema)

    @staticmethod
    def validate(where, h):
        mu = check_range(where, "momentum", h["momentum"], 0.0, 1.0)
        nesterov = bool(h["nesterov"])
        if nesterov and mu == 0:
            raise ValueError(f"{where}: nesterov=True needs momentum > 0")
        return {"lr": check_lr(where, h["lr"], allow_zero=True), "momentum": mu,
                "nesterov": nesterov,
                "weight_decay": check_nonneg(where, "weight_decay", h["weight_decay"]),
                "ema": bool(h["ema"])}

    @staticmethod
    def buffers(h):
        return ["velocity"] if h["momentum"] > 0 else []

    def _update(self, values, grads, state):
        h = self.hyper
        # lr as a HostValue: its number now, and the number of a later step for a CUDA graph
        # that replays this update (gpunn/graphs.py); the NumPy body just takes float() of it
        lr = HostValue(lambda: self.hyper["lr"])
        sgd_update(values, grads, state.get("velocity"), lr, h["momentum"], h["nesterov"],
                   h["weight_decay"], h["ema"])


# -- Adam -------------------------------------------------------------------------------------
class Adam(Optimizer):
    """Adam with bias correction (torch.optim.Adam; weight_decay is L2 added to the gradient).

    lr > 0; betas in [0, 1); eps > 0; weight_decay >= 0.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"Adam: betas must be a pair (beta1, beta2), got {betas!r}") from None
        super().__init__(params, lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=weight_decay)

    @property
    def betas(self):
        return (self.hyper["beta1"], self.hyper["beta2"])

    @staticmethod
    def validate(where, h):
        eps = real(where, "eps", h["eps"])
        if eps <= 0:
            raise ValueError(f"{where}: eps must be > 0, got {eps}")
        return {"lr": check_lr(where, h["lr"], allow_zero=True),
                "beta1": check_range(where, "beta1 (betas[0])", h["beta1"], 0.0, 1.0),
                "beta2": check_range(where, "beta2 (betas[1])", h["beta2"], 0.0, 1.0),
                "eps": eps, "weight_decay": check_nonneg(where, "weight_decay", h["weight_decay"])}

    @staticmethod
    def buffers(h):
        return ["m", "v"]

    def _update(self, values, grads, state):
        # bias corrections on the host in float64, for the step count t this step completes
        # (HostValues, read when the update runs and again for each CUDA-graph replay of it)
        h = self.hyper
        t = HostValue(lambda: self.t)
        bc1 = t.derive(lambda t: 1.0 - self.hyper["beta1"] ** t)
        bc2 = t.derive(lambda t: 1.0 - self.hyper["beta2"] ** t)
        adam_update(values, grads, state["m"], state["v"], HostValue(lambda: self.hyper["lr"]),
                    h["beta1"], h["beta2"], h["eps"], h["weight_decay"], bc1, bc2)
