"""Numerical gradient checks by central differences, for a layer or a whole model + loss.

The analytic gradients from ``backward`` are compared with ``(f(x + h) - f(x - h)) / 2h`` for
every element of the input and of every parameter. Run in float64: in float32 the difference
quotient itself is only good to ~1e-3. Works on any device (the arrays' own).

Relative error per element is ``|a - n| / max(|a| + |n|, floor, 1e-3 * max|a|)``: the floors
keep elements whose gradient is tiny next to the rest of the array (a pixel that one window of
a strided conv touches, a bias ahead of a batch-norm) from being judged on the rounding noise
of the difference quotient, about 1e-16 * |f| / eps.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .backend import get_array_module, to_numpy

__all__ = ["GradcheckResult", "check_layer", "check_model"]


@dataclass
class GradcheckResult:
    max_rel_error: float
    where: str                     # e.g. "param W[3, 1]" or "input[0, 2, 4, 4]"
    errors: dict = field(default_factory=dict)   # name -> worst relative error for that array

    def __str__(self):
        per = ", ".join(f"{k}: {v:.2e}" for k, v in self.errors.items())
        return f"max relative error {self.max_rel_error:.3e} at {self.where} ({per})"


def _snapshot(layers):
    return [({k: v.copy() for k, v in layer.buffers.items()}, dict(layer.host_state))
            for layer in layers]


def _restore(layers, snap):
    for layer, (buffers, host_state) in zip(layers, snap):
        for k, v in buffers.items():
            layer.buffers[k][...] = v
        layer.host_state.update(host_state)


def _compare(name, analytic, numeric, floor, result):
    a, n = to_numpy(analytic).astype(np.float64), to_numpy(numeric).astype(np.float64)
    scale = 1e-3 * float(np.abs(a).max()) if a.size else 0.0
    rel = np.abs(a - n) / np.maximum(np.abs(a) + np.abs(n), max(floor, scale))
    rel = np.where(np.isnan(n), 0.0, rel)          # elements a sampled check did not visit
    if rel.size == 0:
        return
    idx = np.unravel_index(int(np.argmax(rel)), rel.shape)
    worst = float(rel[idx])
    result.errors[name] = worst
    if worst >= result.max_rel_error:
        result.max_rel_error = worst
        result.where = f"{name}[{', '.join(map(str, idx))}]"


def _numeric_grad(f, arr, eps, elements=None, rng=None):
    """Central differences of scalar f() w.r.t. every element of arr (perturbed in place), or
    only at ``elements`` indices drawn from ``rng`` (the rest: NaN, skipped by _compare)."""
    xp = get_array_module(arr)
    grad = xp.zeros(arr.shape, dtype=np.float64)
    flat, gflat = arr.reshape(-1), grad.reshape(-1)
    if flat.base is None and arr.size > 1 and not arr.flags.c_contiguous:
        raise ValueError("gradcheck needs C-contiguous arrays")
    where = range(arr.size)
    if elements is not None and elements < arr.size:
        gflat[...] = np.nan
        where = sorted(int(i) for i in rng.choice(arr.size, size=elements, replace=False))
    for i in where:
        old = flat[i].item()
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return grad


def check_layer(layer, x, *, train: bool = True, eps: float = 1e-5, floor: float = 1e-8,
                seed: int = 0, check_input: bool = True) -> GradcheckResult:
    """Check ``layer``'s backward against central differences of ``sum(forward(x) * R)``.

    x: any shape the layer accepts, float64 recommended. R is a fixed random array of the
    output's shape. Layer state (running statistics, dropout step counters) is restored
    before every forward so each evaluation sees the same state.
    """
    return check_model(layer, x, None, train=train, eps=eps, floor=floor, seed=seed,
                       check_input=check_input)


def check_model(model, x, labels=None, loss=None, *, train: bool = True, eps: float = 1e-5,
                floor: float = 1e-8, seed: int = 0, check_input: bool = True,
                elements: int | None = None) -> GradcheckResult:
    """Check a layer or model (e.g. Sequential) end to end.

    With ``loss`` (e.g. ``SoftmaxCrossEntropy()``) and ``labels``, the objective is
    ``loss.forward(model.forward(x), labels)``; otherwise ``sum(model.forward(x) * R)``.
    ``elements``: check only that many elements of each array (input and every parameter),
    drawn from ``seed``, where checking all would take too many forwards (a VGG's 3M weights).
    """
    xp = get_array_module(x)
    x = xp.ascontiguousarray(x)
    layers = list(model.walk())
    snap = _snapshot(layers)

    def run_forward():
        _restore(layers, snap)
        return model.forward(x, train=train)

    y = run_forward()
    if loss is None:
        rng = np.random.default_rng(seed)
        R = xp.asarray(rng.standard_normal(y.shape)).astype(y.dtype)

        def objective():
            return float((run_forward() * R).sum())
        dout = R
    else:
        def objective():
            return float(loss.forward(run_forward(), labels))
        loss.forward(y, labels)
        dout = loss.backward()

    # analytic gradients from one forward/backward in the reference state
    _restore(layers, snap)
    model.forward(x, train=train)
    dx = model.backward(dout)
    analytic = {name: p.grad.copy() for name, p in model.named_parameters()}

    result = GradcheckResult(0.0, "")
    pick = np.random.default_rng(seed + 1)
    if check_input:
        _compare("input", dx, _numeric_grad(objective, x, eps, elements, pick), floor, result)
    for name, p in model.named_parameters():
        _compare(f"param {name}", analytic[name],
                 _numeric_grad(objective, p.data, eps, elements, pick), floor, result)
    _restore(layers, snap)
    return result

