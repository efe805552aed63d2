"""Device parity: the NumPy path against the CUDA path, layer by layer and over whole
training runs.

The reference is always the NumPy body on the CPU. The other side is either a real GPU
(CuPy arrays, the RawKernels in ``kernels/``) or, without a GPU, the *emulated* CUDA path:
NumPy arrays sent down the same CUDA bodies with the kernels compiled for the CPU
(``gpunn.testing.emulated_cuda()``). Differences are norm-relative, ``|a - b| / |a|``.

``gpunn parity`` prints the table and exits non-zero on any failure; ``pytest -m gpu`` and
the emulation tests call the same functions.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from .backend import to_device, to_numpy

TOL = {np.float64: 1e-10, np.float32: 2e-5}          # layers: forward and backward
TRAIN_TOL = {np.float64: 1e-9, np.float32: 2e-3}     # loss curves over a training run
# Over hundreds of float32 steps two devices drift apart the way float32 drifts from float64
# (a ReLU or max-pool decision flips, then the runs differ); so a float32 run passes when the
# devices differ by at most DRIFT_FACTOR times the float32-vs-float64 drift of the CPU run.
DRIFT_FACTOR = 3.0


@dataclass
class ParityRow:
    what: str
    dtype: str
    forward: float
    backward: float
    launches: int          # custom-kernel launches seen on the CUDA side (-1: not counted)
    tol: float
    needs_kernels: bool = True
    tol_backward: float | None = None     # defaults to tol

    @property
    def ok(self) -> bool:
        finite = np.isfinite(self.forward) and np.isfinite(self.backward)
        used = self.launches != 0 or not self.needs_kernels
        tb = self.tol if self.tol_backward is None else self.tol_backward
        return bool(finite and self.forward <= self.tol and self.backward <= tb and used)


def rel_diff(a, b) -> float:
    a, b = np.asarray(to_numpy(a), dtype=np.float64), np.asarray(to_numpy(b), dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    den = np.linalg.norm(a)
    num = np.linalg.norm(a - b)
    return float(num / den) if den > 0 else float(num)


class Side:
    """Where the CUDA side runs: ``"cuda"`` (a real GPU) or ``"emulated"`` (CPU-compiled kernels)."""

    def __init__(self, kind: str):
        if kind not in ("cuda", "emulated"):
            raise ValueError(f"parity side must be 'cuda' or 'emulated', got {kind!r}")
        self.kind = kind

    def put(self, x):
        return to_device(x, "cuda") if self.kind == "cuda" else np.array(x, copy=True)

    def move(self, layer):
        return layer.to("cuda") if self.kind == "cuda" else layer

    @contextlib.contextmanager
    def active(self):
        if self.kind == "emulated":
            from .testing import emulated_cuda      # test machinery, imported on purpose
            with emulated_cuda():
                yield
        else:
            yield

    def launches(self):
        from .kernels import count_launches
        return count_launches()


def layer_cases():
    """(name, factory(dtype), per-sample input shape, uses custom kernels) for every layer type."""
    from .layers import (GELU, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Flatten,
                         GlobalAvgPool2d, LeakyReLU, Linear, MaxPool2d, ReLU, Residual, Sigmoid,
                         Softmax, SyncBatchNorm, Tanh)
    return [
        ("Linear(20, 7)", lambda dt: Linear(20, 7, rng=0, dtype=dt), (20,), False),
        ("Conv2d(3, 5, 3, pad 1)", lambda dt: Conv2d(3, 5, 3, padding=1, rng=0, dtype=dt), (3, 9, 8), True),
        ("Conv2d(3, 4, 5, s2, same)", lambda dt: Conv2d(3, 4, 5, stride=2, padding="same", rng=0, dtype=dt), (3, 11, 10), True),
        ("MaxPool2d(2)", lambda dt: MaxPool2d(2), (3, 8, 10), True),
        ("MaxPool2d(3, 2, same)", lambda dt: MaxPool2d(3, 2, "same"), (3, 9, 7), True),
        ("AvgPool2d(3, 2, same)", lambda dt: AvgPool2d(3, 2, "same"), (3, 9, 7), True),
        ("AvgPool2d(2, pad 1, incl)", lambda dt: AvgPool2d(2, 1, 1, count_include_pad=True), (2, 5, 6), True),
        ("GlobalAvgPool2d", lambda dt: GlobalAvgPool2d(), (3, 5, 4), False),
        ("ReLU", lambda dt: ReLU(), (4, 6, 6), True),
        ("LeakyReLU(0.1)", lambda dt: LeakyReLU(0.1), (30,), True),
        ("Sigmoid", lambda dt: Sigmoid(), (30,), True),
        ("Tanh", lambda dt: Tanh(), (30,), True),
        ("GELU", lambda dt: GELU(), (4, 5, 6), True),
        ("Softmax", lambda dt: Softmax(), (12,), False),
        ("Dropout(0.3)", lambda dt: Dropout(0.3, seed=11), (4, 6, 6), True),
        ("BatchNorm1d(16)", lambda dt: BatchNorm1d(16, dtype=dt), (16,), False),
        ("BatchNorm2d(3)", lambda dt: BatchNorm2d(3, dtype=dt), (3, 5, 5), False),
        # a world of one here; tests/test_distributed.py checks it over two MPI ranks
        ("SyncBatchNorm(3)", lambda dt: SyncBatchNorm(3, dtype=dt), (3, 5, 5), False),
        ("Flatten", lambda dt: Flatten(), (2, 3, 4), False),
        ("Residual(Conv, ReLU)", lambda dt: Residual(Conv2d(3, 3, 3, padding="same", rng=1, dtype=dt), ReLU()),
         (3, 6, 6), True),
        ("Residual(Conv s2, BN; 1x1 s2 shortcut)", lambda dt: Residual(
            Conv2d(2, 4, 3, stride=2, padding=1, bias=False, rng=2, dtype=dt), BatchNorm2d(4, dtype=dt),
            shortcut=[Conv2d(2, 4, 1, stride=2, bias=False, rng=3, dtype=dt), BatchNorm2d(4, dtype=dt)]),
         (2, 6, 7), True),
    ]


def layer_parity(side: Side, dtype=np.float64, batch: int = 6, seed: int = 0,
                 on_row=None, cases=None) -> list:
    """Forward (train mode) and backward of every layer on both sides; ``on_row(row)`` is
    called as each row is done. ``cases``: a list shaped like :func:`layer_cases` (default:
    that list), e.g. a user's own layer."""
    rows = []
    for name, make, shape, needs in (layer_cases() if cases is None else cases):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((batch, *shape)).astype(dtype)
        ref = make(dtype)
        y_ref = ref.forward(x, train=True)
        dout = rng.standard_normal(y_ref.shape).astype(dtype)
        dx_ref = ref.backward(dout)
        other = side.move(make(dtype))
        with side.active():
            before = dict(side.launches())
            y = other.forward(side.put(x), train=True)
            dx = other.backward(side.put(dout))
            after = side.launches()
        launches = sum(after.values()) - sum(before.values())
        bwd = rel_diff(dx_ref, dx)
        for p_ref, p in zip(ref.parameters(), other.parameters()):
            bwd = max(bwd, rel_diff(p_ref.grad, p.grad))
        rows.append(ParityRow(name, np.dtype(dtype).name, rel_diff(y_ref, y), bwd, launches,
                              TOL[np.dtype(dtype).type], needs))
        if on_row is not None:
            on_row(rows[-1])
    return rows


def training_parity(side: Side, model: str, dtype=np.float64, steps: int = 40,
                    batch: int = 32, seed: int = 0, optimizer: str = "sgd",
                    size: int = 28) -> ParityRow:
    """Train a zoo model ``steps`` steps from the same seed on both sides; compare the loss
    curves (forward column) and the final weights (backward column).

    float64 must agree to TRAIN_TOL (1e-9). float32 must agree to TRAIN_TOL, or to
    DRIFT_FACTOR times the distance between float32 and float64 CPU runs, whichever is larger.
    """
    from .data import make_synthetic
    from .losses import SoftmaxCrossEntropy
    from .optim import SGD, Adam
    from .zoo import build_model

    x8, y = make_synthetic(batch * 8, seed=seed, size=size)
    curves, finals, launches = [], [], 0
    runs = [(False, dtype), (True, dtype)]
    if np.dtype(dtype) == np.float32:
        runs.append((False, np.float64))           # the float32 drift reference
    for on_side, dt in runs:
        dt = np.dtype(dt).type
        x = x8.astype(dt) / dt(255)
        m = build_model(model, (1, size, size), 10, seed=seed, dtype=dt,
                        dropout=0.3 if model not in ("model1", "cnn-bn") else None)
        if on_side:
            side.move(m)
        opt = (SGD(m.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
               if optimizer == "sgd" else Adam(m.parameters(), lr=1e-3, weight_decay=1e-4))
        loss = SoftmaxCrossEntropy()
        ctx = side.active() if on_side else contextlib.nullcontext()
        losses = []
        with ctx:
            before = sum(side.launches().values()) if on_side else 0
            for s in range(steps):
                lo = (s * batch) % len(x)
                xb, yb = x[lo:lo + batch], y[lo:lo + batch]
                if on_side:
                    xb, yb = side.put(xb), side.put(yb)
                value = loss.forward(m.forward(xb, train=True), yb)
                m.backward(loss.backward())
                opt.step()
                losses.append(value)
            if on_side:
                launches = sum(side.launches().values()) - before
        curves.append(np.array([float(to_numpy(v)) for v in losses]))
        finals.append(m.state_dict())

    def weight_diff(a, b):
        return max(rel_diff(a[k], b[k]) for k in a if a[k].dtype.kind == "f")
    tol = tol_w = TRAIN_TOL[np.dtype(dtype).type]
    if len(curves) == 3:
        tol = max(tol, DRIFT_FACTOR * rel_diff(curves[2], curves[0]))
        tol_w = max(tol_w, DRIFT_FACTOR * weight_diff(finals[2], finals[0]))
    return ParityRow(f"train {model} ({optimizer}, {steps} steps)", np.dtype(dtype).name,
                     rel_diff(curves[0], curves[1]), weight_diff(finals[0], finals[1]), launches,
                     tol, tol_backward=tol_w)


GRAPH_TOL = 1e-12        # graphed vs eager on one device, float64 (expected: bit for bit)


def graph_parity(side: Side, model: str, steps: int = 200, batch: int = 32, seed: int = 0,
                 optimizer: str = "sgd", size: int = 28) -> ParityRow:
    """Train ``model`` ``steps`` steps in float64 on the CUDA side twice from the same seed:
    with the eager TrainStep and with the GraphedTrainStep (a CUDA graph replayed per batch;
    docs/GRAPHS.md). Every 50th batch is half size, so the graphed run also takes its eager
    path for another shape. The loss curves (forward column) and the final weights (backward
    column) must agree to GRAPH_TOL; the launches column counts the graph's replays.

    Emulated side: the eager run under the plain emulated CUDA, the graphed one under the
    emulated CUDA with graphs (gpunn.testing.graph_emu), where the capture is recorded and
    replayed on the CPU.
    """
    from .data import make_synthetic
    from .losses import CrossEntropyLoss
    from .optim import SGD, Adam
    from .train import GraphedTrainStep, TrainStep
    from .zoo import build_model

    x8, y = make_synthetic(batch * 8, seed=seed, size=size)
    x = x8.astype(np.float64) / 255.0
    curves, finals, replays = [], [], 0
    for graphed in (False, True):
        m = build_model(model, (1, size, size), 10, seed=seed, dtype=np.float64,
                        dropout=0.3 if model not in ("model1", "cnn-bn") else None)
        side.move(m)
        opt = (SGD(m.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
               if optimizer == "sgd" else Adam(m.parameters(), lr=1e-3, weight_decay=1e-4))
        if side.kind == "emulated":
            from .testing import emulated_cuda, to_device_arrays
            ctx = emulated_cuda(graphs=graphed)
        else:
            ctx = contextlib.nullcontext()
        losses = []
        with ctx:
            if graphed and side.kind == "emulated":
                to_device_arrays(m, opt)
            step = (GraphedTrainStep if graphed else TrainStep)(m, CrossEntropyLoss(), opt)
            step.reset_metrics(np)
            for s in range(steps):
                bs = batch // 2 if s % 50 == 49 else batch
                lo = (s * batch) % len(x)
                xb, yb = x[lo:lo + bs], y[lo:lo + bs]
                if side.kind == "cuda":
                    xb, yb = side.put(xb), side.put(yb)
                # the graphed step returns its graph's loss array, which the next replay
                # overwrites: keep a copy (a device copy, no wait)
                losses.append(step(xb, yb).copy())
            curves.append(np.array([float(to_numpy(v)) for v in losses]))
            finals.append(m.state_dict())
            if graphed:
                replays = step.stats["replay"]
    weights = max(rel_diff(finals[0][k], finals[1][k]) for k in finals[0]
                  if finals[0][k].dtype.kind == "f")
    return ParityRow(f"graph {model} ({optimizer}, {steps} steps)", "float64",
                     rel_diff(curves[0], curves[1]), weights, replays, GRAPH_TOL)


def format_header() -> str:
    """The table's heading (two lines)."""
    head = (f"{'check':40s} {'dtype':8s} {'forward/loss':>13s} {'backward/weights':>17s} "
            f"{'launches':>9s} {'tol':>8s} {'tol bwd':>8s}  ok")
    return head + "\n" + "-" * len(head)


def format_row(r) -> str:
    tb = r.tol if r.tol_backward is None else r.tol_backward
    return (f"{r.what:40s} {r.dtype:8s} {r.forward:13.2e} {r.backward:17.2e} "
            f"{r.launches:9d} {r.tol:8.1e} {tb:8.1e}  {'yes' if r.ok else 'NO'}")


def format_footer(rows) -> str:
    bad = sum(not r.ok for r in rows)
    return f"{len(rows) - bad} passed, {bad} failed"


def format_rows(rows) -> str:
    """The whole table: heading, one line per row, the count."""
    return "\n".join([format_header(), *map(format_row, rows), format_footer(rows)])


def run_parity(side_kind: str = "cuda", models=("model4", "cnn-bn"), steps: int = 200,
               dtypes=(np.float64, np.float32), on_row=None, graphs: bool = True) -> tuple:
    """Every layer and the given zoo models on both sides; returns (rows, all_ok).
    ``on_row(row)`` is called as each row is done (``gpunn parity`` prints it then).
    ``graphs``: also the graphed step against the eager one on the CUDA side (float64; each
    model with SGD, the first one with Adam too)."""
    side = Side(side_kind)
    rows = []

    def done(row):
        rows.append(row)
        if on_row is not None:
            on_row(row)
    for dt in dtypes:
        rows += layer_parity(side, dt, on_row=on_row)
    for dt in dtypes:
        for model in models:
            done(training_parity(side, model, dt, steps=steps))
    if graphs and np.float64 in [np.dtype(d).type for d in dtypes]:
        for i, model in enumerate(models):
            for opt in (("sgd", "adam") if i == 0 else ("sgd",)):
                done(graph_parity(side, model, steps=steps, optimizer=opt))
    return rows, all(r.ok for r in rows)
