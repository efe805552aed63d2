"""Where a gpunn training step's time goes: per-layer forward and backward medians.

``profile_step(model, batch, device)`` times each step of the model as ``gpunn train`` runs it
(fused by gpunn.fuse; a Residual block as one row; the first step's backward without the
input gradient, as a training step skips it), the loss and the optimizer, over many steps, the
device synchronised around each timed piece (so on a GPU the figures include launch latency). ``gpunn bench --profile`` prints it; docs/benchmarks/README.md quotes it.
"""
from __future__ import annotations

import statistics
import time

__all__ = ["profile_step", "format_profile"]


def profile_step(model: str, batch: int, device: str = "cpu", steps: int = 30,
                 warmup: int = 3) -> dict:
    """{"rows": [(label, forward ms, backward ms)], "loss_ms", "update_ms", "step_ms"}."""
    from ..backend import resolve_device, synchronize, to_device
    from ..fuse import fuse
    from ..losses import CrossEntropyLoss
    from ..model import _first_with_parameters, _without_input_grad
    from ..optim import SGD
    from ..zoo import build_model
    from .steps import LR, MOMENTUM, _batch, input_shape

    dev = resolve_device(device, quiet=True)
    m = fuse(build_model(model, input_shape(model), 10, seed=0).to(dev))   # as gpunn train
    opt = SGD(m.parameters(), lr=LR, momentum=MOMENTUM)
    loss = CrossEntropyLoss()
    x, y = _batch(model, batch)
    x, y = to_device(x, dev), to_device(y, dev)
    layers = list(m._steps())               # the fused plan's steps
    first = _first_with_parameters(layers)  # its backward skips dL/dx; the ones before: none
    fwd = [[] for _ in layers]
    bwd = [[] for _ in layers]
    other = {"loss": [], "update": [], "step": []}
    sync = lambda: synchronize(dev)          # noqa: E731

    def timed(f, into):
        sync()
        t0 = time.perf_counter()
        r = f()
        sync()
        into.append(time.perf_counter() - t0)
        return r

    for s in range(warmup + steps):
        if s == warmup:
            for lst in fwd + bwd + list(other.values()):
                lst.clear()
        t_start = time.perf_counter()
        h = x
        for i, layer in enumerate(layers):
            h = timed(lambda: layer.forward(h, train=True), fwd[i])
        d = timed(lambda: (loss.forward(h, y), loss.backward())[1], other["loss"])
        for i in reversed(range(len(layers))):
            if i == first:                      # a training step skips the data's gradient
                timed(lambda: _without_input_grad(layers[i], d), bwd[i])
                break
            d = timed(lambda: layers[i].backward(d), bwd[i])
        timed(opt.step, other["update"])
        other["step"].append(time.perf_counter() - t_start)
    med = lambda v: 1e3 * statistics.median(v)      # noqa: E731
    rows = [(f"{i} {layer!r}", med(fwd[i]), med(bwd[i]) if bwd[i] else 0.0)
            for i, layer in enumerate(layers)]
    return {"model": model, "batch": batch, "device": str(dev), "rows": rows,
            "loss_ms": med(other["loss"]), "update_ms": med(other["update"]),
            "step_ms": med(other["step"])}


def format_profile(p: dict) -> str:
    lines = [f"{p['model']} batch {p['batch']} on {p['device']}: median step "
             f"{p['step_ms']:.2f} ms (timed pieces synchronised)",
             f"{'layer':60s} {'fwd ms':>8s} {'bwd ms':>8s}"]
    for label, f, b in p["rows"]:
        label = label if len(label) <= 60 else label[:57] + "..."
        lines.append(f"{label:60s} {f:8.3f} {b:8.3f}")
    lines.append(f"{'loss (forward + backward)':60s} {p['loss_ms']:8.3f}")
    lines.append(f"{'optimizer update':60s} {p['update_ms']:8.3f}")
    total = sum(f + b for _, f, b in p["rows"]) + p["loss_ms"] + p["update_ms"]
    lines.append(f"{'sum of the pieces':60s} {total:8.3f}")
    return "\n".join(lines) + "\n"
