"""The loop's pieces: TrainStep, events in order, TrainState and extension state through
checkpoints, old checkpoints, and no click below the CLI."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpunn.data import DataLoader
from gpunn.losses import CrossEntropyLoss
from gpunn.optim import SGD, CosineAnnealingLR
from gpunn.serialization import load_checkpoint
from gpunn.train import (Extension, TrainConfig, Trainer, TrainState, TrainStep, fit)
from gpunn.zoo import build_model

FIXTURES = Path(__file__).parent / "fixtures"


class Recorder(Extension):
    """Records every event; counts steps as checkpointed state."""
    name = "recorder"

    def __init__(self):
        self.events, self.steps = [], 0

    def on_start(self, t):
        self.events.append("start")

    def on_step_end(self, t):
        self.steps += 1
        self.events.append(f"step{t.state.step}")

    def on_epoch_end(self, t):
        self.events.append(f"epoch_end{t.state.epoch}")

    def on_evaluate(self, t, row):
        self.events.append(f"evaluate@{row['samples']}")

    def on_finish(self, t):
        self.events.append("finish")

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


def _fit(data, out, epochs, rec, resume=False, **cfg):
    m = build_model("model2", (1, 12, 12), 10, seed=0, dropout=0.2)
    opt = SGD(m, lr=0.05, momentum=0.9)
    conf = TrainConfig(epochs=epochs, batch_size=100, eval_every=250, progress=False, **cfg)
    res = fit(m, CrossEntropyLoss(), opt, data, conf, out_dir=str(out), resume=resume,
              scheduler=CosineAnnealingLR(opt, T_max=3), log=lambda s: None, extensions=[rec])
    return m, res


def test_events_fire_in_order(data, tmp_path):
    rec = Recorder()
    _fit(data, tmp_path, 2, rec)
    # 5 steps an epoch; a periodic evaluation once 250 samples have passed (not on an
    # epoch's last step); an epoch-end evaluation after every epoch. The evaluation extension
    # comes before the recorder, so it reacts to a step (and emits evaluate) first.
    assert rec.events == (["start", "step1", "step2", "evaluate@300", "step3", "step4",
                           "step5", "evaluate@500", "epoch_end1",
                           "step6", "step7", "evaluate@800", "step8", "step9", "step10",
                           "evaluate@1000", "epoch_end2", "finish"])


def test_max_steps_on_a_periodic_evaluation_evaluates_that_step_once(data, tmp_path):
    rec = Recorder()
    _, res = _fit(data, tmp_path, 2, rec, max_steps=3)     # the periodic evaluation's step
    assert rec.events == ["start", "step1", "step2", "evaluate@300", "step3", "finish"]
    assert res.history["samples"] == [300] and res.history["step"] == [3]
    rec = Recorder()
    _fit(data, tmp_path / "b", 2, rec, max_steps=4)        # inside an epoch, off the period
    assert rec.events[-2:] == ["evaluate@400", "finish"]


def test_extension_state_and_train_state_round_trip_through_the_checkpoint(data, tmp_path):
    rec = Recorder()
    _fit(data, tmp_path, 2, rec, max_steps=7)
    ck = load_checkpoint(tmp_path / "checkpoint.npz")
    assert ck["extensions"]["recorder"] == {"steps": 7}
    state = TrainState.from_dict(ck["state"])
    assert (state.epoch, state.batch, state.step, state.samples) == (1, 2, 7, 700)
    assert TrainState.from_dict(state.to_dict()) == state
    with pytest.raises(ValueError, match="missing since_eval"):
        TrainState.from_dict({k: v for k, v in state.to_dict().items() if k != "since_eval"})
    again = Recorder()
    _fit(data, tmp_path, 2, again, resume=True)
    assert again.steps == 10 and again.events[:3] == ["start", "evaluate@800", "step8"]


def test_train_step_hook_sees_gradients_before_the_update():
    m = build_model("model1", (1, 4, 4), 3, seed=0)
    opt = SGD(m, lr=0.5)
    step = TrainStep(m, CrossEntropyLoss(), opt)
    seen = []

    def hook(s):
        p = s.model.parameters()[0]
        seen.append((p.data.copy(), np.abs(p.grad).sum()))
    step.after_backward.append(hook)
    x = np.random.default_rng(0).standard_normal((6, 1, 4, 4)).astype(np.float32)
    y = np.arange(6) % 3
    before = m.parameters()[0].data.copy()
    step(x, y)
    np.testing.assert_array_equal(seen[0][0], before)       # not yet updated
    assert seen[0][1] > 0 and not np.array_equal(m.parameters()[0].data, before)
    loss, acc = step.metrics()
    assert step.seen == 6 and 0 <= acc <= 1 and loss > 0


def test_trainer_runs_a_bare_step_without_extensions():
    m = build_model("model1", (1, 4, 4), 3, seed=0)
    x = np.random.default_rng(0).standard_normal((30, 1, 4, 4)).astype(np.float32)
    t = Trainer(TrainStep(m, CrossEntropyLoss(), SGD(m, lr=0.1)),
                DataLoader(x, np.arange(30) % 3, batch_size=8), epochs=2)
    t.run()
    assert (t.state.epoch, t.state.step, t.state.samples) == (2, 8, 60)


def test_a_checkpoint_from_the_old_loop_resumes_as_it_did(data, tmp_path):
    """checkpoint_v1.npz was written mid-epoch by the loop before extensions; the old loop
    resumed it to checkpoint_v1_resumed.json. The new loop must get the same."""
    import hashlib
    want = json.loads((FIXTURES / "checkpoint_v1_resumed.json").read_text())
    shutil.copy(FIXTURES / "checkpoint_v1.npz", tmp_path / "checkpoint.npz")
    m = build_model("model2", (1, 12, 12), 10, seed=0, dropout=0.2)
    opt = SGD(m, lr=0.05, momentum=0.9)
    res = fit(m, CrossEntropyLoss(), opt, data,
              TrainConfig(epochs=2, batch_size=32, eval_every=150, patience=50, progress=False),
              out_dir=str(tmp_path), scheduler=CosineAnnealingLR(opt, T_max=3), resume=True,
              log=lambda s: None)
    assert {k: v for k, v in res.history.items() if k != "seconds"} == want["history"]
    assert res.best == want["best"]
    got = {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()
           for k, v in m.state_dict().items()}
    assert got == want["weights"]
    assert load_checkpoint(tmp_path / "checkpoint.npz")["state"]["epoch"] == 2   # rewritten, v2


def test_no_click_below_the_cli():
    code = ("import sys, gpunn, gpunn.train, gpunn.runs, gpunn.data; "
            "print('click' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
