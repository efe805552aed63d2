"""gpunn compare: the settings that differ, the final metrics, one figure of the runs' curves."""
import json

import matplotlib.image
import pytest
from click.testing import CliRunner

from gpunn.cli import main
from gpunn.compare import compare_runs, format_comparison
from gpunn.runs import RunConfig
from gpunn.train.logs import format_value

TRAIN = ["train", "--dataset", "synthetic", "--model", "model1", "--epochs", "1",
         "--val-size", "0.1", "--eval-every", "2700", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    a, b = root / "sgd", root / "adam"
    for out, extra in ((a, []), (b, ["--optimizer", "adam", "--lr", "0.001"])):
        r = CliRunner().invoke(main, TRAIN + extra + ["--out", str(out)])
        assert r.exit_code == 0, r.output
    return a, b


def _fake_run(path, history, *, done=True, drop=(), **settings):
    """A run directory by hand: config.json (without the settings in ``drop``, as an older
    gpunn wrote it) and metrics.csv."""
    path.mkdir(parents=True)
    d = {**vars(RunConfig(dataset="synthetic", **settings)), "gpunn_version": "0.1.0"}
    for k in drop:
        d.pop(k)
    (path / "config.json").write_text(json.dumps(d))
    cols = list(history)
    lines = [",".join(cols)] + [",".join(format_value(history[c][i]) for c in cols)
                                for i in range(len(history[cols[0]]))]
    (path / "metrics.csv").write_text("\n".join(lines) + "\n")
    if done:
        (path / "weights.npz").write_bytes(b"")
    return path


def _history(val_acc, test_acc=None, seconds=1.0):
    n = len(val_acc)
    return {"samples": [100 * (i + 1) for i in range(n)], "epoch": [float(i + 1) for i in range(n)],
            "step": [10 * (i + 1) for i in range(n)],
            "seconds": [seconds * (i + 1) for i in range(n)], "lr": [0.05] * n,
            "train_loss": [1.0 / (i + 1) for i in range(n)], "train_acc": [0.5] * n,
            "val_loss": [None if v is None else 2.0 - v for v in val_acc], "val_acc": list(val_acc),
            "test_loss": [1.5] * n, "test_acc": list(test_acc or [0.6] * n)}


def test_compare_two_trained_runs(two_runs, tmp_path):
    a, b = two_runs
    fig = tmp_path / "figs" / "cmp.png"
    r = CliRunner().invoke(main, ["compare", str(a), str(b), "--out", str(fig)])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    head = lines[0].split()
    assert head[:3] == ["run", "lr", "optimizer"]            # exactly the settings that differ
    assert "model" not in head and "dataset" not in head and "seed" not in head
    for run, name, opt in ((a, "sgd", "sgd"), (b, "adam", "adam")):
        h = json.loads((run / "history.json").read_text())
        row = next(l.split() for l in lines if l.startswith(name + " "))
        assert row[1:3] == [{"sgd": "0.05", "adam": "0.001"}[name], opt]
        assert row[3:7] == [f"{h[k][-1]:.4f}" for k in ("val_acc", "val_loss", "test_acc",
                                                        "test_loss")]
        assert row[-1] == "done"
    assert f"figure: {fig}" in r.output
    img = matplotlib.image.imread(fig)
    assert img.shape[0] > 200 and img.shape[1] > 400


def test_compare_json(two_runs, tmp_path):
    a, b = two_runs
    r = CliRunner().invoke(main, ["compare", str(a), str(b), "--json", "--out",
                                  str(tmp_path / "c.png")])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["differ"] == ["lr", "optimizer"] and d["figure"] == str(tmp_path / "c.png")
    h = json.loads((b / "history.json").read_text())
    row = d["rows"][1]
    assert (row["run"], row["optimizer"], row["lr"]) == ("adam", "adam", 0.001)
    assert row["test_acc"] == h["test_acc"][-1] and row["seconds"] == h["seconds"][-1]
    i = max(range(len(h["val_acc"])), key=lambda i: (h["val_acc"][i], -i))
    assert row["best_epoch"] == h["epoch"][i] and row["best_value"] == h["val_acc"][i]


def test_the_figure_goes_to_the_current_folder_by_default(tmp_path, monkeypatch):
    run = _fake_run(tmp_path / "r", _history([0.5, 0.7]))
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["compare", str(run)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "compare.png").stat().st_size > 0


def test_best_epoch_final_metrics_and_an_unfinished_run(tmp_path):
    a = _fake_run(tmp_path / "a", _history([0.5, 0.8, 0.8, 0.7], seconds=2.0), lr=0.1)
    b = _fake_run(tmp_path / "b", _history([0.6, 0.65]), done=False, lr=0.2, epochs=9)
    cmp = compare_runs([a, b])
    assert cmp["differ"] == ["epochs", "lr"]
    ra, rb = cmp["rows"]
    assert ra["best_epoch"] == 2.0 and ra["best_value"] == 0.8       # the first of equal bests
    assert ra["val_acc"] == 0.7 and ra["seconds"] == 8.0 and ra["epoch"] == 4.0
    assert (rb["status"], rb["best_epoch"], rb["evaluations"]) == ("unfinished", 2.0, 2)
    text = format_comparison(cmp)
    assert "unfinished" in text and "best epoch" in text


def test_without_validation_the_best_is_judged_on_test(tmp_path):
    h = _history([None, None, None], test_acc=[0.3, 0.9, 0.4])
    row, = compare_runs([_fake_run(tmp_path / "r", h)])["rows"]
    assert (row["best_metric"], row["best_epoch"], row["val_acc"]) == ("test_acc", 2.0, None)


def test_settings_an_older_config_lacks_count_as_their_defaults(tmp_path):
    old = _fake_run(tmp_path / "old", _history([0.5]), drop=("tensorboard",))
    new = _fake_run(tmp_path / "new", _history([0.5]), tensorboard=False)
    on = _fake_run(tmp_path / "on", _history([0.5]), tensorboard=True)
    assert compare_runs([old, new])["differ"] == []
    assert compare_runs([old, on])["differ"] == ["tensorboard"]
    assert "the runs' settings are the same" in format_comparison(compare_runs([old, new]))


def test_runs_with_the_same_name_are_told_apart_by_path(tmp_path):
    a = _fake_run(tmp_path / "x" / "run", _history([0.5]))
    b = _fake_run(tmp_path / "y" / "run", _history([0.6]), seed=3)
    assert [r["run"] for r in compare_runs([a, b])["rows"]] == [str(a), str(b)]


def test_an_old_run_without_metrics_csv_uses_history_json(two_runs, tmp_path):
    import shutil
    run = tmp_path / "old"
    shutil.copytree(two_runs[0], run)
    (run / "metrics.csv").unlink()
    row, = compare_runs([run])["rows"]
    h = json.loads((run / "history.json").read_text())
    assert row["val_acc"] == h["val_acc"][-1]


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no such run directory"),
    (lambda p: p.mkdir(), "no config.json"),
    (lambda p: (p.mkdir(), (p / "config.json").write_text("{}")), "has not evaluated yet"),
])
def test_bad_run_directories_are_named(tmp_path, make, message):
    bad = tmp_path / "bad"
    make(bad)
    r = CliRunner().invoke(main, ["compare", str(bad), "--out", str(tmp_path / "c.png")])
    assert r.exit_code == 2
    assert message in r.output and str(bad) in r.output
    assert not (tmp_path / "c.png").exists()


def test_the_fake_runs_have_the_columns_a_run_writes():
    from gpunn.train.extensions import _new_history
    assert list(_history([0.5])) == list(_new_history())
