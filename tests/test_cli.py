"""The gpunn command end to end on the synthetic set, through click's test runner."""
import json

import pytest
from click.testing import CliRunner

from gpunn.cli import main

TRAIN = ["train", "--dataset", "synthetic", "--model", "model4", "--epochs", "1", "--val-size", "0.1",
         "--eval-every", "2000", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "m4"
    r = CliRunner().invoke(main, TRAIN + ["--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "test accuracy" in r.output and "report.md" in r.output
    return out


def test_train_writes_the_run_directory(run_dir):
    for f in ("config.json", "history.json", "weights.npz", "checkpoint.npz", "report.md",
              "curves.png", "confusion.png", "filters.png", "misclassified.png", "metrics.json"):
        assert (run_dir / f).stat().st_size > 0, f
    report = (run_dir / "report.md").read_text()
    for part in ("device: cpu", "time taken", "| class | precision | recall", "![curves](curves.png)",
                 "total parameters"):
        assert part in report
    h = json.loads((run_dir / "history.json").read_text())
    assert h["samples"][-1] == 5400 and len(h["test_acc"]) == 3


def test_eval_json(run_dir):
    r = CliRunner().invoke(main, ["eval", str(run_dir), "--json", "--device", "cpu", "--no-plots"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output.strip().splitlines()[-1])
    assert set(d) == {"accuracy", "loss", "per_class", "confusion"}
    assert len(d["per_class"]) == 10 and len(d["confusion"]) == 10
    assert sum(map(sum, d["confusion"])) == 1000
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert d["accuracy"] == pytest.approx(metrics["accuracy"])
    r = CliRunner().invoke(main, ["eval", str(run_dir), "--device", "cpu"])
    assert "| class | precision |" in r.output


def test_resume_extends_a_run(run_dir, tmp_path):
    import shutil
    d = tmp_path / "again"
    shutil.copytree(run_dir, d)
    r = CliRunner().invoke(main, ["train", "--resume", str(d), "--epochs", "2", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "resuming from" in r.output
    assert json.loads((d / "history.json").read_text())["samples"][-1] == 10800


def test_sweep(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text('dataset = "synthetic"\nepochs = 1\nval_size = 0.1\neval_every = 0\n'
                   'device = "cpu"\nmodels = ["model1", "model2"]\n'
                   '[[settings]]\nname = "sgd"\noptimizer = "sgd"\nlr = 0.1\nmomentum = 0.0\n'
                   '[[settings]]\nname = "adam"\noptimizer = "adam"\n')
    r = CliRunner().invoke(main, ["sweep", str(cfg), "--out", str(tmp_path / "sw"), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "| model | sgd | adam |" in r.output
    for f in ("sweep_curves.png", "sweep_table.png", "report.md", "model2__adam/report.md"):
        assert (tmp_path / "sw" / f).stat().st_size > 0


def test_bad_sweep_config(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('models = ["model9"]\n[[settings]]\nlr = 0.1\n')
    r = CliRunner().invoke(main, ["sweep", str(cfg)])
    assert r.exit_code == 2 and "unknown model(s) model9" in r.output
    cfg.write_text('models = ["model1"]\n[[settings]]\nlearning_rate = 0.1\n')
    r = CliRunner().invoke(main, ["sweep", str(cfg)])
    assert r.exit_code == 2 and "unknown settings learning_rate" in r.output


def test_unknown_names_list_valid_ones(tmp_path):
    r = CliRunner().invoke(main, TRAIN[:3] + ["--model", "model9", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "model1, model2, model3, model4" in r.output
    r = CliRunner().invoke(main, ["train", "--dataset", "imagenet", "--out", str(tmp_path / "y")])
    assert r.exit_code == 2 and "fashion-mnist, mnist, kmnist, cifar10, synthetic" in r.output


def test_impossible_architecture_fails_before_training(tmp_path):
    import numpy as np
    p = tmp_path / "tiny.npz"
    np.savez(p, x=np.zeros((60, 1, 6, 6), np.uint8), y=np.arange(60) % 3)
    r = CliRunner().invoke(main, ["train", "--dataset", str(p), "--model", "lenet5x5", "--val-size", "5",
                                  "--out", str(tmp_path / "z"), "--no-progress"])
    assert r.exit_code == 2, r.output
    assert "lenet5x5" in r.output and "Conv2d" in r.output
    assert not (tmp_path / "z" / "checkpoint.npz").exists()


def test_cuda_without_device_says_why(tmp_path):
    from gpunn.backend import cuda_available
    if cuda_available():
        pytest.skip("a GPU is present")
    r = CliRunner().invoke(main, TRAIN[:-2] + ["--device", "cuda", "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "CUDA is not usable" in r.output


def test_info_and_datasets():
    r = CliRunner().invoke(main, ["info"])
    assert r.exit_code == 0 and "CUDA:" in r.output and "synthetic" in r.output
    r = CliRunner().invoke(main, ["datasets"])
    assert r.exit_code == 0 and "fashion-mnist" in r.output
    r = CliRunner().invoke(main, ["datasets", "--check", "synthetic"])
    assert r.exit_code == 0


@pytest.mark.parametrize("cmd", [[], ["train"], ["eval"], ["sweep"], ["datasets"], ["info"]])
def test_help_is_complete(cmd):
    r = CliRunner().invoke(main, cmd + ["--help"])
    assert r.exit_code == 0 and "Usage:" in r.output
    if cmd == ["train"]:
        for opt in ("--model", "--dataset", "--epochs", "--lr", "--batch-size", "--optimizer",
                    "--momentum", "--weight-decay", "--dropout", "--device", "--seed",
                    "--eval-every", "--out", "--resume"):
            assert opt in r.output


def test_train_option_defaults_are_run_config_defaults():
    from dataclasses import fields

    from gpunn.cli.cmd_train import train
    from gpunn.runs import RunConfig

    # every setting, except what a run records for itself (model_source, data_info)
    defaults = {f.name: f.default for f in fields(RunConfig) if not f.metadata.get("recorded")}
    params = {("model" if p.name == "model_name" else p.name): p for p in train.params}
    shared = set(defaults) & set(params)
    assert shared == set(defaults)                      # every run setting is an option
    for name in shared:
        assert params[name].default == defaults[name], name
