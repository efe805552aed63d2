"""Runs are never lost or silently wrong: the CLI end to end (click's runner, and subprocesses
where a second process or a full disk is the point)."""
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from gpunn import backend
from gpunn.cli import main
from gpunn.serialization import load_checkpoint

TRAIN = ["train", "--dataset", "synthetic", "--model", "model1", "--val-size", "0.1",
         "--eval-every", "2000", "--no-progress", "--device", "cpu"]


def _train(*args):
    return CliRunner().invoke(main, TRAIN + list(args))


def _digest(d):
    return {f: hashlib.sha256((d / f).read_bytes()).hexdigest() for f in sorted(os.listdir(d))
            if (d / f).is_file()}


@pytest.fixture(scope="module")
def cosine_run(tmp_path_factory):
    """A finished 2-epoch run with a cosine schedule (its lr reached 0 at the end)."""
    out = tmp_path_factory.mktemp("runs") / "cos"
    r = _train("--epochs", "2", "--schedule", "cosine", "--save-best", "--out", str(out))
    assert r.exit_code == 0, r.output
    return out


def _copy(run, tmp_path, name="copy"):
    d = tmp_path / name
    shutil.copytree(run, d)
    return d


# -- 2. nothing lost ----------------------------------------------------------------------------
def test_an_existing_run_is_refused_without_overwrite(cosine_run, tmp_path):
    d = _copy(cosine_run, tmp_path)
    before = _digest(d)
    r = _train("--epochs", "1", "--out", str(d))
    assert r.exit_code == 2
    assert f"error: {d} holds a run (" in r.output and f"--resume {d}" in r.output
    assert "--overwrite" in r.output
    assert _digest(d) == before                           # not a byte changed
    r = _train("--epochs", "1", "--out", str(d), "--overwrite")
    assert r.exit_code == 0, r.output
    assert "removed the earlier run's files" in r.output
    assert not (d / "best.npz").exists()                  # the old run's best is gone with it
    assert json.loads((d / "config.json").read_text())["epochs"] == 1


def test_a_folder_of_other_files_is_refused_too(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    r = _train("--epochs", "1", "--out", str(tmp_path))
    assert r.exit_code == 2 and "is not empty (notes.txt)" in r.output


def test_a_run_that_fails_before_its_first_step_leaves_no_folder(tmp_path):
    out = tmp_path / "never"
    r = _train("--model", "model9", "--out", str(out))
    assert r.exit_code == 2 and not out.exists()
    r = _train("--epochs", "1", "--model", "model2", "--lr", "1e12", "--out", str(out))
    assert r.exit_code == 1 and not out.exists(), r.output


HOLD = ("import sys, time; from gpunn.train import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(120)")


def test_a_second_writer_is_refused_and_a_killed_ones_lock_is_taken_over(cosine_run, tmp_path):
    d = _copy(cosine_run, tmp_path)
    before = _digest(d)
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(d)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        for args in (["--resume", str(d), "--epochs", "3"], ["--out", str(d), "--overwrite"]):
            r = CliRunner().invoke(main, ["train", "--no-progress"] + args) if args[0] == \
                "--resume" else _train("--epochs", "1", *args)
            assert r.exit_code == 1, r.output
            assert f"is being written by another gpunn process (pid {p.pid} on " in r.output
            assert "Traceback" not in r.output
        assert {k: v for k, v in _digest(d).items() if k != ".gpunn.lock"} == \
            {k: v for k, v in before.items() if k != ".gpunn.lock"}
    finally:
        p.kill()
        p.wait()
    r = CliRunner().invoke(main, ["train", "--resume", str(d), "--epochs", "3", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert f"took over a stale lock on {d} left by pid {p.pid}" in r.output
    assert not (d / ".gpunn.lock").exists()


def test_run_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        r = _train("--epochs", "1", "--save-best", "--out", str(tmp_path / "p"))
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    modes = {f.name: oct(f.stat().st_mode & 0o777) for f in (tmp_path / "p").iterdir()}
    assert set(modes.values()) == {"0o644"}, modes


def test_os_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, monkeypatch):
    import gpunn.runs as runs

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x" / "report.md"))
    monkeypatch.setattr(runs, "_evaluate_and_report", full)
    r = _train("--epochs", "1", "--out", str(tmp_path / "x"))
    assert r.exit_code == 1
    line = r.output.strip().splitlines()[-1]
    assert line == (f"error: could not write {tmp_path / 'x' / 'report.md'}: no space left on "
                    f"the device; the last checkpoint, {tmp_path / 'x' / 'checkpoint.npz'} "
                    f"(step 54), is intact and loadable")
    r = _train("--epochs", "1", "--out", str(tmp_path / "y"), "--debug")
    from gpunn.errors import RunWriteError
    assert isinstance(r.exception, RunWriteError) and r.exit_code == 1      # raised, not a line
    assert isinstance(r.exception.__cause__, OSError)


def _tmpfs(path, size):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a disk that fills up) needs root")
    path.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")


def test_a_full_disk_stops_with_one_line_and_the_last_checkpoint_intact(tmp_path):
    """A tmpfs with room for one checkpoint: the second one (written beside the first, then
    renamed over it) does not fit."""
    probe = tmp_path / "probe"
    args = TRAIN + ["--model", "mlp1000", "--epochs", "1", "--eval-every", "1000"]
    r = CliRunner().invoke(main, args + ["--max-steps", "10", "--out", str(probe)])
    assert r.exit_code == 0, r.output
    size = (probe / "checkpoint.npz").stat().st_size
    disk = tmp_path / "disk"
    _tmpfs(disk, f"{int(size * 1.5) // 4096 * 4096}")
    try:
        out = disk / "run"
        res = subprocess.run([sys.executable, "-m", "gpunn.cli", *args, "--out", str(out)],
                             capture_output=True, text=True)
        assert res.returncode == 1, res.stderr
        last = res.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: could not write {out / 'checkpoint.npz'}: no space left "
                               f"on the device; the previous checkpoint, ")
        assert "(step 10, epoch 0.19), is intact and loadable" in last
        assert "Traceback" not in res.stderr
        assert load_checkpoint(out / "checkpoint.npz")["state"]["step"] == 10
        assert not [f for f in os.listdir(out) if f.startswith(".tmp")]   # no half file left
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# -- 3. nothing silently wrong ------------------------------------------------------------------
def test_nan_stops_the_cli_with_the_step_and_a_non_zero_exit(tmp_path):
    r = _train("--epochs", "2", "--model", "model2", "--lr", "1e12", "--out", str(tmp_path / "nan"))
    assert r.exit_code == 1
    assert "error: non-finite values at step " in r.output and "smaller learning rate" in r.output
    assert "Traceback" not in r.output


def test_resume_with_more_epochs_trains_them_and_records_it(cosine_run, tmp_path):
    d = _copy(cosine_run, tmp_path)
    w0 = np.load(d / "weights.npz")
    r = CliRunner().invoke(main, ["train", "--resume", str(d), "--epochs", "3", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "the run's total goes from 2 to 3 epochs" in r.output
    assert "re-planned for 3 epochs: CosineAnnealingLR T_max 2 -> 3; epoch 3 trains at lr 0.0125 " \
           "(the old plan had 0)" in r.output
    w1 = np.load(d / "weights.npz")
    assert any(not np.array_equal(w0[k], w1[k]) for k in w0.files)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["epochs"] == 3
    assert cfg["resumes"][0]["changed"] == {"epochs": [2, 3]}
    assert cfg["resumes"][0]["from"]["epoch"] == 2
    r = CliRunner().invoke(main, ["eval", str(d), "--json", "--no-plots", "--device", "cpu"])
    assert r.exit_code == 0, r.output                    # the recorded config still loads


def test_resuming_a_finished_run_says_so_and_changes_nothing(cosine_run, tmp_path):
    d = _copy(cosine_run, tmp_path)
    before = _digest(d)
    r = CliRunner().invoke(main, ["train", "--resume", str(d), "--no-progress"])
    assert r.exit_code == 0
    assert f"{d} has finished all 2 epochs; nothing to do" in r.output
    assert "resuming from" not in r.output and _digest(d) == before
    r = CliRunner().invoke(main, ["train", "--resume", str(d), "--epochs", "1"])
    assert r.exit_code == 2 and "it has already trained 2 epoch(s)" in r.output


def test_resume_refuses_options_that_contradict_the_run(cosine_run, tmp_path):
    d = _copy(cosine_run, tmp_path)
    r = CliRunner().invoke(main, ["train", "--resume", str(d), "--epochs", "3", "--model",
                                  "model2", "--lr", "0.1"])
    assert r.exit_code == 2
    assert (f"cannot resume {d} with --model model2, --lr 0.1: the run was trained with "
            f"model = model1, lr = 0.05") in r.output
    r = CliRunner().invoke(main, ["train", "--resume", str(d), "--epochs", "3", "--model",
                                  "model1", "--no-progress"])
    assert r.exit_code == 0, r.output                    # agreeing with the run is fine


def test_an_explicit_data_dir_is_the_only_place_looked(tmp_path):
    missing = tmp_path / "nope"
    r = CliRunner().invoke(main, ["train", "--dataset", "fashion-mnist", "--data-dir",
                                  str(missing), "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and f"--data-dir {missing} does not exist" in r.output
    empty = tmp_path / "empty"
    empty.mkdir()
    r = CliRunner().invoke(main, ["train", "--dataset", "fashion-mnist", "--data-dir", str(empty),
                                  "--out", str(tmp_path / "r")])
    assert r.exit_code == 2
    assert f"(looked in: {empty}, {empty / 'fashion-mnist'}; --data-dir makes" in r.output
    assert not (tmp_path / "r").exists()


# -- 4. validation picks winners ----------------------------------------------------------------
def test_save_best_and_the_report_says_which_weights_are_which(cosine_run):
    report = (cosine_run / "report.md").read_text()
    assert (cosine_run / "best.npz").exists() and (cosine_run / "weights.npz").exists()
    assert "- weights.npz: the weights at the end of training (step 108)" in report
    assert "- best.npz: the weights with the best val_acc (" in report
    assert "the test split is never used to choose" in report
    metrics = json.loads((cosine_run / "metrics.json").read_text())
    assert 0 < metrics["val_accuracy"] <= 1


def test_the_sweep_picks_cells_on_validation_not_test(tmp_path, monkeypatch):
    import gpunn.runs as runs
    # (val, test) per cell: test would pick the other setting in each row
    fake = {("model1", "a"): (0.90, 0.70), ("model1", "b"): (0.80, 0.95),
            ("model2", "a"): (0.60, 0.99), ("model2", "b"): (0.91, 0.50)}

    def run_training(cfg, run_dir, **kw):
        v, t = fake[(cfg.model, os.path.basename(run_dir).split("__")[1])]
        os.makedirs(run_dir, exist_ok=True)
        return {"val_acc": v, "test_acc": t, "seconds": 0.0,
                "history": {k: [0.0] for k in ("samples", "epoch", "train_loss", "train_acc",
                                                "val_loss", "val_acc", "test_loss", "test_acc")}}
    monkeypatch.setattr(runs, "run_training", run_training)
    cfg = tmp_path / "s.toml"
    cfg.write_text('dataset = "synthetic"\nmodels = ["model1", "model2"]\n'
                   '[[settings]]\nname = "a"\n[[settings]]\nname = "b"\n')
    res = runs.run_sweep(str(cfg), out=str(tmp_path / "sw"), log=lambda s: None)
    assert "| model1 | **0.7000** | 0.9500 |" in res["table"]
    assert "| model2 | 0.9900 | **0.5000** |" in res["table"]
    assert res["best"] == ("model2", "b")
    assert "chosen on validation accuracy: model2 / b (validation 0.9100, test 0.5000)" in \
        (tmp_path / "sw" / "report.md").read_text()


# -- 5. feedback --------------------------------------------------------------------------------
SWEEP = ('dataset = "synthetic"\nepochs = 1\nval_size = 0.1\neval_every = 0\ndevice = "cpu"\n'
         'max_steps = 20\nmodels = ["model1"]\n[[settings]]\nname = "sgd"\nlr = 0.1\n'
         '[[settings]]\nname = "adam"\noptimizer = "adam"\n[[settings]]\nname = "slow"\nlr = 0.01\n')


def test_sweep_says_run_k_of_n_and_resumes_skipping_finished_runs(tmp_path, monkeypatch):
    import gpunn.runs as runs
    cfg = tmp_path / "s.toml"
    cfg.write_text(SWEEP)
    out = tmp_path / "sw"
    real, calls = runs.run_training, []

    def stop_at_third(c, run_dir, **kw):
        calls.append(run_dir)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(c, run_dir, **kw)
    monkeypatch.setattr(runs, "run_training", stop_at_third)
    r = CliRunner().invoke(main, ["sweep", str(cfg), "--out", str(out), "--no-progress"])
    assert r.exit_code == 130 and "gpunn sweep CONFIG --resume" in r.output
    lines = [s for s in r.output.splitlines() if s.startswith("run ")]
    assert lines[0] == f"run 1/3: model1 / sgd -> {out / 'model1__sgd'}"
    assert lines[1].startswith("run 1/3: model1 / sgd done: val acc ")
    assert lines[3].startswith("run 2/3: model1 / adam done: ") and len(lines) == 5
    monkeypatch.setattr(runs, "run_training", real)
    r = CliRunner().invoke(main, ["sweep", str(cfg), "--out", str(out), "--no-progress"])
    assert r.exit_code == 2 and "holds an earlier sweep (2 of 3 runs); finish it with " \
                                "--resume" in r.output
    r = CliRunner().invoke(main, ["sweep", str(cfg), "--out", str(out), "--no-progress",
                                  "--resume"])
    assert r.exit_code == 0, r.output
    assert "run 1/3: model1 / sgd: already done (val acc " in r.output
    assert "run 2/3: model1 / adam: already done" in r.output
    assert "run 3/3: model1 / slow done: " in r.output
    assert "| model | sgd | adam | slow |" in r.output and "Best cell, chosen on validation" in \
        r.output


def test_parity_prints_each_row_as_it_finishes(monkeypatch):
    import gpunn.parity as parity
    seen = []

    def training(side, model, dtype, steps=200):
        sys.stdout.flush()
        seen.append(sys.stdout.buffer.getvalue().decode())
        return parity.ParityRow(f"train {model}", "float64", 0.0, 0.0, 1, 1e-9)
    monkeypatch.setattr(parity, "training_parity", training)
    r = CliRunner().invoke(main, ["parity", "--emulate", "--models", "model1,model2",
                                  "--dtype", "float64"])
    assert r.exit_code == 0, r.output
    assert "check" in seen[0] and "Linear(20, 7)" in seen[0] and "ReLU" in seen[0]
    assert "train model1" in seen[1] and "passed" not in seen[1]       # rows, then the count
    assert r.output.rstrip().endswith("passed, 0 failed")
    rows, ok = parity.run_parity("emulated", models=(), dtypes=(np.float64,),
                                 on_row=lambda row: seen.append(row))
    assert ok and seen[2:] == rows


def test_the_no_gpu_notice_comes_once_after_argument_errors(tmp_path, monkeypatch):
    if backend.cuda_available():
        pytest.skip("a GPU is present")
    monkeypatch.delenv("GPUNN_DEVICE", raising=False)
    backend._reset_for_tests()
    r = CliRunner().invoke(main, ["train", "--dataset", "synthetic", "--model", "model9",
                                  "--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and "no GPU" not in r.output
    r = CliRunner().invoke(main, ["train", "--epochs", "1", "--dataset", "synthetic",
                                  "--model", "model1", "--no-progress", "--max-steps", "3",
                                  "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    notice = [s for s in r.output.splitlines() if "no GPU" in s]
    assert len(notice) == 1 and notice[0].startswith("gpunn: no GPU (") and \
        notice[0].endswith("); using the CPU") and "insufficient" not in notice[0]
    r = CliRunner().invoke(main, TRAIN + ["--epochs", "1", "--max-steps", "3",
                                          "--out", str(tmp_path / "c")])
    assert "no GPU" not in r.output                       # --device cpu asked for no GPU


def test_report_values_are_plain(cosine_run):
    report = (cosine_run / "report.md").read_text()
    settings = report[report.index("## Settings"):report.index("## Model")]
    for raw in ("| False |", "| True |", "| None |", ".0 |"):
        assert raw not in settings, raw
    assert "| standardize | no |" in settings and "| save_best | yes |" in settings
    assert "| dropout | - |" in settings and "stopped early: no;" in report


def test_a_new_run_whose_folder_is_being_written_names_the_writer(tmp_path):
    d = tmp_path / "busy"
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(d)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"       # the folder holds only its lock
        r = _train("--epochs", "1", "--out", str(d))
        assert r.exit_code == 1 and f"(pid {p.pid} on " in r.output, r.output
    finally:
        p.kill()
        p.wait()
