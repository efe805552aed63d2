"""Short float64 training runs of every zoo model whose results were recorded before the
dispatch / flat-parameter / training-loop rework (tests/fixtures/reference_runs.json), so a
refactor that changes a single bit of a trained weight shows up.

Each run uses only the public API every version since the recording keeps: ``build_model``,
``forward(x, train=True)``, the softmax cross-entropy loss, ``backward``, ``SGD`` / ``Adam``
``step()`` and ``state_dict()``; one more run goes through ``fit`` (evaluation every few
batches, checkpoints, a cosine schedule) so the loop is covered as well.

    python tests/reference_runs.py [--only cpu|emulated]   # rewrite the fixture (only on purpose)
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).parent / "fixtures" / "reference_runs.json"
INPUT_SHAPE = (1, 16, 16)
CLASSES = 5
BATCH = 12
STEPS = 3
SAMPLE_EVERY = 97          # a strided sample of each weight array, kept exactly for diagnosis
ZOO = ("model1", "model2", "model3", "model4", "mlp1000", "cnn-bn", "lenet5x5", "resnet-small")


def machine_signature() -> dict:
    """What the exact bits of a BLAS GEMM may depend on."""
    sig = {"machine": platform.machine(), "numpy": np.__version__,
           "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", "")}
    try:
        cfg = np.show_config(mode="dicts")
        sig["blas"] = cfg["Build Dependencies"]["blas"].get("openblas configuration", "")
    except Exception:  # pragma: no cover - old numpy
        sig["blas"] = ""
    return sig


def _digest(state: dict) -> dict:
    out = {}
    for k in sorted(state):
        a = np.ascontiguousarray(np.asarray(state[k]))
        flat = a.reshape(-1)
        out[k] = {"sha256": hashlib.sha256(a.tobytes()).hexdigest(), "dtype": str(a.dtype),
                  "shape": list(a.shape),
                  "sample": [float(v) for v in flat[::SAMPLE_EVERY][:64]]}
    return out


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH * STEPS, *INPUT_SHAPE))
    y = rng.integers(0, CLASSES, size=BATCH * STEPS)
    return x, y


def _optimizer(name, model):
    from gpunn.optim import SGD, Adam
    if name == "sgd":
        return SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    return Adam(model.parameters(), lr=3e-3, weight_decay=1e-3)


def _loss():
    import gpunn.losses as losses
    cls = getattr(losses, "CrossEntropyLoss", None) or losses.SoftmaxCrossEntropy
    return cls()


def step_run(model_name: str, optimizer: str) -> dict:
    """STEPS training steps; returns the losses (exact reprs) and the final state digest."""
    from gpunn.zoo import build_model
    model = build_model(model_name, INPUT_SHAPE, CLASSES, seed=3, dtype=np.float64)
    opt = _optimizer(optimizer, model)
    loss_fn = _loss()
    x, y = _data()
    losses = []
    for s in range(STEPS):
        xb, yb = x[s * BATCH:(s + 1) * BATCH], y[s * BATCH:(s + 1) * BATCH]
        logits = model.forward(xb, train=True)
        losses.append(repr(float(loss_fn.forward(logits, yb))))
        model.backward(loss_fn.backward())
        opt.step()
    return {"losses": losses, "state": _digest(model.state_dict()),
            "optimizer": _digest({k: v for k, v in opt.state_dict().items()
                                  if isinstance(v, np.ndarray) and v.ndim > 0})}


def fit_run(tmpdir) -> dict:
    """model4 through ``fit``: evaluation every 24 samples, checkpoints, cosine schedule."""
    from types import SimpleNamespace

    from gpunn.optim import CosineAnnealingLR
    from gpunn.train import TrainConfig, fit
    from gpunn.zoo import build_model

    rng = np.random.default_rng(1)
    x = rng.standard_normal((100, *INPUT_SHAPE))
    y = rng.integers(0, CLASSES, size=100)
    data = SimpleNamespace(x_train=x[:60], y_train=y[:60], x_val=x[60:80], y_val=y[60:80],
                           x_test=x[80:], y_test=y[80:])
    model = build_model("model4", INPUT_SHAPE, CLASSES, seed=5, dtype=np.float64)
    opt = _optimizer("sgd", model)
    sched = CosineAnnealingLR(opt, T_max=2)
    cfg = TrainConfig(epochs=2, batch_size=16, eval_every=24, progress=False, seed=2)
    result = fit(model, _loss(), opt, data, cfg, out_dir=str(tmpdir), device="cpu",
                 scheduler=sched, log=lambda m: None)
    hist = {k: [repr(v) for v in vals] for k, vals in result.history.items() if k != "seconds"}
    return {"history": hist, "state": _digest(model.state_dict())}


def all_runs(emulated: bool, tmpdir) -> dict:
    runs = {}
    ctx = nullcontext()
    if emulated:
        from gpunn.testing import emulated_cuda
        ctx = emulated_cuda()
    with ctx:
        for name in ZOO:
            for opt in ("sgd", "adam"):
                runs[f"{name}/{opt}"] = step_run(name, opt)
        runs["fit/model4"] = fit_run(tmpdir)
    return runs


def main():
    """``--only cpu`` (or ``emulated``) re-records that path and keeps the other as recorded:
    for a change that moves one path's bits on purpose (say what moved, and why, in the commit)."""
    import tempfile
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None
    if only not in (None, "cpu", "emulated"):
        raise SystemExit(f"--only takes cpu or emulated, got {only!r}")
    out = {"machine": machine_signature(), "python": sys.version.split()[0]}
    if only:
        old = json.loads(FIXTURE.read_text())
        if old["machine"] != out["machine"]:
            raise SystemExit("--only needs the machine kind the fixture was recorded on")
        out.update({k: v for k, v in old.items() if k in ("cpu", "emulated")})
    with tempfile.TemporaryDirectory() as d:
        if only in (None, "cpu"):
            out["cpu"] = all_runs(False, Path(d) / "cpu")
        if only in (None, "emulated"):
            out["emulated"] = all_runs(True, Path(d) / "emu")
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps(out, indent=0, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
