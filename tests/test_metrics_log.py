"""metrics.csv (every run, written as it trains, exact across resume) and TensorBoard events
(the tensorboard extra, ``gpunn train --tensorboard``)."""
import glob
import json
import os
import shutil
import signal
import struct
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import gpunn
from gpunn.cli import main
from gpunn.extras import MissingExtra
from gpunn.losses import CrossEntropyLoss
from gpunn.optim import SGD, CosineAnnealingLR
from gpunn.train import TrainConfig, fit
from gpunn.train.logs import MetricsCSV, TensorBoardLog, read_metrics_csv

TRAIN = ["train", "--dataset", "synthetic", "--model", "model1", "--epochs", "1",
         "--val-size", "0.1", "--eval-every", "2000", "--no-progress", "--device", "cpu"]


class _CtrlC:
    """A real Ctrl-C after optimizer step ``at`` (the loop checkpoints and raises)."""

    def __init__(self, at):
        self.at = at

    def on_step_end(self, trainer):
        if trainer.state.step == self.at:
            os.kill(os.getpid(), signal.SIGINT)


def _model():
    """Small, with the state resume must carry: batch-norm statistics, dropout masks."""
    rng = np.random.default_rng(0)
    return gpunn.Sequential(gpunn.Conv2d(1, 4, 3, padding="same", rng=rng),
                            gpunn.BatchNorm2d(4), gpunn.ReLU(), gpunn.MaxPool2d(2),
                            gpunn.Flatten(), gpunn.Dropout(0.3, seed=5),
                            gpunn.Linear(4 * 6 * 6, 10, rng=rng))


def _fit(data, out, epochs, resume=False, extra=()):
    m = _model()
    opt = SGD(m.parameters(), lr=0.05, momentum=0.9)
    sched = CosineAnnealingLR(opt, T_max=3)
    conf = TrainConfig(epochs=epochs, batch_size=32, eval_every=150, progress=False)
    return fit(m, CrossEntropyLoss(), opt, data, conf, out_dir=str(out), scheduler=sched,
               resume=resume, log=lambda s: None,
               extensions=[MetricsCSV(os.path.join(out, "metrics.csv")), *extra])


def _rows(path):
    """The CSV's data rows without the wall-clock column (the only one that may differ)."""
    table = read_metrics_csv(path)
    cols = [c for c in table if c != "seconds"]
    return [tuple(table[c][i] for c in cols) for i in range(len(table["samples"]))]


def _lines(path):
    with open(path) as f:
        return f.read().splitlines()


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """Two epochs without a break: the reference log."""
    out = tmp_path_factory.mktemp("straight")
    res = _fit(data, out, 2)
    return out / "metrics.csv", res.history


def test_one_row_per_evaluation_matching_the_history(straight):
    path, history = straight
    lines = _lines(path)
    assert lines[0] == ",".join(history)                    # the header, once
    assert sum(1 for l in lines if l.startswith("samples")) == 1
    table = read_metrics_csv(path)
    assert table == history                                 # every value, exactly (repr floats)
    assert len(table["samples"]) == 8 and table["epoch"][-1] == 2.0


def test_rows_are_on_disk_at_each_evaluation(data, tmp_path):
    """Another tool reading the file mid-run sees every evaluation so far, complete."""
    seen = []

    class Reader:
        def on_evaluate(self, trainer, row):
            seen.append(_lines(tmp_path / "metrics.csv"))
    _fit(data, tmp_path, 1, extra=[Reader()])
    assert [len(s) for s in seen] == [i + 2 for i in range(len(seen))]   # header + rows so far
    assert all(s[-1].startswith(f"{r},") for s, r in
               zip(seen, read_metrics_csv(tmp_path / "metrics.csv")["samples"]))


def test_resume_appends_the_rows_an_uninterrupted_run_writes(data, tmp_path, straight):
    out = tmp_path / "run"
    _fit(data, out, 1)
    first = _lines(out / "metrics.csv")
    _fit(data, out, 2, resume=True)
    lines = _lines(out / "metrics.csv")
    assert lines[:len(first)] == first                      # nothing rewritten
    assert _rows(out / "metrics.csv") == _rows(straight[0])


def test_ctrl_c_mid_epoch_then_resume(data, tmp_path, straight):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _fit(data, out, 2, extra=[_CtrlC(at=11)])
    assert len(_lines(out / "metrics.csv")) == 1 + 2        # evaluations at 150 and 300 samples
    _fit(data, out, 2, resume=True)
    assert _rows(out / "metrics.csv") == _rows(straight[0])


def test_a_row_lost_after_the_checkpoint_is_written_on_resume(data, tmp_path, straight):
    """Killed after a checkpoint but before its row reached the log: the row comes back."""
    out = tmp_path / "run"
    _fit(data, out, 1)
    lines = _lines(out / "metrics.csv")
    (out / "metrics.csv").write_text("\n".join(lines[:-1]) + "\n")
    _fit(data, out, 2, resume=True)
    assert _rows(out / "metrics.csv") == _rows(straight[0])


def test_rows_beyond_the_checkpoint_are_not_duplicated(data, tmp_path, straight):
    """The log is ahead of the checkpoint it resumes from: those rows are logged once."""
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _fit(data, out, 2, extra=[_CtrlC(at=11)])
    shutil.copy(out / "checkpoint.npz", tmp_path / "early.npz")
    with pytest.raises(KeyboardInterrupt):
        _fit(data, out, 2, resume=True, extra=[_CtrlC(at=24)])
    assert len(_lines(out / "metrics.csv")) > 1 + 2
    shutil.copy(tmp_path / "early.npz", out / "checkpoint.npz")
    _fit(data, out, 2, resume=True)
    assert _rows(out / "metrics.csv") == _rows(straight[0])


def test_a_fresh_run_replaces_an_old_log(data, tmp_path, straight):
    (tmp_path / "metrics.csv").write_text("something,else\n1,2\n")
    _fit(data, tmp_path, 2)
    assert _rows(tmp_path / "metrics.csv") == _rows(straight[0])


def test_every_cli_run_writes_metrics_csv_and_resume_continues_it(tmp_path):
    out = tmp_path / "m2"
    r = CliRunner().invoke(main, TRAIN + ["--out", str(out)])
    assert r.exit_code == 0, r.output
    history = json.loads((out / "history.json").read_text())
    assert read_metrics_csv(out / "metrics.csv") == history
    r = CliRunner().invoke(main, ["train", "--resume", str(out), "--epochs", "2", "--no-progress"])
    assert r.exit_code == 0, r.output
    history = json.loads((out / "history.json").read_text())
    assert read_metrics_csv(out / "metrics.csv") == history and history["epoch"][-1] == 2.0
    assert not (out / "tensorboard").exists()


def test_read_metrics_csv_names_a_bad_line(tmp_path):
    p = tmp_path / "metrics.csv"
    p.write_text("samples,val_acc\n10,0.5\n20\n")
    with pytest.raises(ValueError, match=r"metrics.csv, line 3: 1 cells, the header has 2"):
        read_metrics_csv(p)


# -- TensorBoard --------------------------------------------------------------------------------
def test_tensorboard_without_the_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)       # import fails as if absent
    with pytest.raises(MissingExtra, match=r"pip install 'gpunn\[tensorboard\]'"):
        TensorBoardLog(tmp_path)
    r = CliRunner().invoke(main, TRAIN + ["--out", str(tmp_path / "tb"), "--tensorboard"])
    assert r.exit_code == 2
    assert "tensorboardX" in r.output and "pip install 'gpunn[tensorboard]'" in r.output
    assert not (tmp_path / "tb" / "config.json").exists()         # failed before anything


def _scalars(log_dir):
    """{tag: {step: value}} from every event file, read the way TensorBoard reads them: files
    in name order, and a purge marker (SessionLog START at step s) drops earlier steps >= s."""
    from tensorboardX.proto import event_pb2
    out = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            buf = f.read()
        pos = 0
        while pos < len(buf):
            (n,) = struct.unpack("<Q", buf[pos:pos + 8])
            ev = event_pb2.Event.FromString(buf[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            if ev.HasField("session_log") and ev.session_log.status == ev.session_log.START:
                for steps in out.values():
                    for s in [s for s in steps if s >= ev.step]:
                        del steps[s]
            for v in ev.summary.value:
                out.setdefault(v.tag, {})[ev.step] = v.simple_value
    return out


def test_tensorboard_events_hold_the_history_across_a_resume(tmp_path):
    pytest.importorskip("tensorboardX", reason="the tensorboard extra is not installed "
                                               "(pip install 'gpunn[tensorboard]')")
    out = tmp_path / "tb"
    r = CliRunner().invoke(main, TRAIN + ["--out", str(out), "--tensorboard"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["tensorboard"] is True
    # a stale event from a crashed process beyond the checkpoint: the resume must hide it
    from tensorboardX import SummaryWriter
    first, = glob.glob(str(out / "tensorboard" / "events.out.tfevents.*"))
    w = SummaryWriter(str(out / "tensorboard"), filename_suffix=".stale")
    w.add_scalar("accuracy/val", 123.0, 10**6)
    w.close()
    stale, = set(glob.glob(str(out / "tensorboard" / "events.out.tfevents.*"))) - {first}
    os.replace(stale, first + ".stale")                # sorts after the first file
    r = CliRunner().invoke(main, ["train", "--resume", str(out), "--epochs", "2", "--no-progress"])
    assert r.exit_code == 0, r.output
    h = json.loads((out / "history.json").read_text())
    sc = _scalars(out / "tensorboard")
    assert sorted(sc) == ["accuracy/test", "accuracy/train", "accuracy/val", "epoch",
                          "loss/test", "loss/train", "loss/val", "lr"]
    for tag, key in (("accuracy/val", "val_acc"), ("loss/test", "test_loss"), ("lr", "lr"),
                     ("epoch", "epoch")):
        assert sorted(sc[tag]) == h["step"], tag
        np.testing.assert_allclose([sc[tag][s] for s in h["step"]], h[key], rtol=1e-6)
    assert len(glob.glob(str(out / "tensorboard" / "events.out.tfevents.*"))) == 3
