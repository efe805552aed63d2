"""The training loop: exact resume, mid-epoch checkpoints, Ctrl-C, early stopping."""
import os
import signal

import numpy as np
import pytest

from gpunn.losses import CrossEntropyLoss
from gpunn.optim import SGD, CosineAnnealingLR
from gpunn.train import TrainConfig, evaluate, fit, load_checkpoint
from gpunn.zoo import build_model


def _run(data, out, epochs, resume=False, model="cnn-bn", **cfg):
    m = build_model(model, (1, 12, 12), 10, seed=0)
    opt = SGD(m.parameters(), lr=0.05, momentum=0.9)
    sched = CosineAnnealingLR(opt, T_max=3)
    conf = TrainConfig(epochs=epochs, batch_size=32, eval_every=150, progress=False, **cfg)
    res = fit(m, CrossEntropyLoss(), opt, data, conf, out_dir=str(out), scheduler=sched,
              resume=resume, log=lambda s: None)
    return m, opt, res


def _same_weights(a, b):
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=n)
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


def test_resume_is_exact(data, tmp_path):
    """Two epochs straight == one epoch, resume, one more (with dropout, batch-norm, momentum,
    a schedule, and evaluations inside epochs)."""
    a, _, ra = _run(data, tmp_path / "a", 2)
    _run(data, tmp_path / "b", 1)
    b, _, rb = _run(data, tmp_path / "b", 2, resume=True)
    _same_weights(a, b)
    for k in ra.history:
        if k != "seconds":                                 # wall-clock differs, nothing else
            assert ra.history[k] == rb.history[k], k
    assert ra.history["epoch"][-1] == 2.0 and len(ra.history["samples"]) == 8


def test_resume_mid_epoch(data, tmp_path):
    a, _, _ = _run(data, tmp_path / "a", 2)
    _run(data, tmp_path / "b", 2, max_steps=7)           # stops inside epoch 1
    ck = load_checkpoint(tmp_path / "b" / "checkpoint.npz")
    assert ck["state"]["batch"] == 7 and ck["state"]["epoch"] == 0
    b, _, _ = _run(data, tmp_path / "b", 2, resume=True)
    _same_weights(a, b)


def test_ctrl_c_writes_checkpoint_and_resumes(data, tmp_path):
    a, _, _ = _run(data, tmp_path / "a", 1)

    class InterruptingLoss(CrossEntropyLoss):
        calls = 0

        def forward(self, logits, labels):
            InterruptingLoss.calls += 1
            if InterruptingLoss.calls == 5:
                os.kill(os.getpid(), signal.SIGINT)       # a real Ctrl-C, mid-step
            return super().forward(logits, labels)

    m = build_model("cnn-bn", (1, 12, 12), 10, seed=0)
    opt = SGD(m.parameters(), lr=0.05, momentum=0.9)
    sched = CosineAnnealingLR(opt, T_max=3)
    with pytest.raises(KeyboardInterrupt):
        fit(m, InterruptingLoss(), opt, data, TrainConfig(epochs=1, batch_size=32, eval_every=150,
                                                          progress=False),
            out_dir=str(tmp_path / "b"), scheduler=sched, log=lambda s: None)
    ck = load_checkpoint(tmp_path / "b" / "checkpoint.npz")
    assert ck["state"]["step"] == 5                     # the step in flight finished first
    b, _, _ = _run(data, tmp_path / "b", 1, resume=True)
    _same_weights(a, b)


def test_ctrl_c_while_the_ranks_agree_is_not_lost(data, tmp_path, monkeypatch):
    """Data-parallel ranks agree after each step whether to stop (rank 0 waits there for the
    others, so a Ctrl-C often lands inside the agreement). The agreement of step 5 answers
    "go on" (the others saw no request) while a real SIGINT arrives during it: the request
    stays, the next step's agreement stops the run, and the checkpoint is of step 6. (It
    used to be overwritten by that answer and lost: the run trained to its end.)"""
    from gpunn.train.step import TrainStep
    calls = [0]

    def agree_stop(self, requested):
        calls[0] += 1
        if calls[0] == 5:
            os.kill(os.getpid(), signal.SIGINT)           # lands before this returns
            return False
        return bool(requested)
    monkeypatch.setattr(TrainStep, "agree_stop", agree_stop)
    with pytest.raises(KeyboardInterrupt):
        _run(data, tmp_path / "b", 3, model="model2")
    assert load_checkpoint(tmp_path / "b" / "checkpoint.npz")["state"]["step"] == 6


def test_early_stopping_restores_best(data, tmp_path):
    m = build_model("model2", (1, 12, 12), 10, seed=0)
    opt = SGD(m.parameters(), lr=3.0)                    # far too large: validation gets worse
    res = fit(m, CrossEntropyLoss(), opt, data,
              TrainConfig(epochs=30, batch_size=50, eval_every=100, patience=2, progress=False),
              log=lambda s: None)
    assert res.stopped_early
    h = res.history
    assert len(h["samples"]) < 30 * 5
    best = max(h["val_acc"])
    assert res.best["value"] == best
    _, acc, _ = evaluate(m, CrossEntropyLoss(), data.x_val, data.y_val)
    assert acc == pytest.approx(best)


def test_resume_without_checkpoint(data, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        _run(data, tmp_path / "none", 1, resume=True)


def test_training_learns(data):
    m = build_model("model4", (1, 12, 12), 10, seed=0)
    opt = SGD(m.parameters(), lr=0.05, momentum=0.9)
    res = fit(m, CrossEntropyLoss(), opt, data,
              TrainConfig(epochs=3, batch_size=20, eval_every=0, progress=False), log=lambda s: None)
    assert res.history["test_acc"][-1] > 0.6
