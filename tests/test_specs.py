"""Own models: TOML layer specs and Python build files (gpunn/specs.py), what a run records
about them, rebuilding a run's model (gpunn.runs.load_model), and `gpunn models`."""
import inspect
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

import gpunn
from gpunn.cli import main
from gpunn.init import make_rng
from gpunn.specs import (ModelSpecError, build_from_spec, build_from_toml, model_kind,
                         model_label, model_source)

TOML = """
name = "small"
[[layers]]
type = "Conv2d"
out_channels = 4
kernel_size = 3
padding = "same"
[[layers]]
type = "ReLU"
[[layers]]
type = "Residual"
  [[layers.layers]]
  type = "Conv2d"
  out_channels = 4
  kernel_size = [3, 3]
  padding = "same"
  bias = false
  [[layers.layers]]
  type = "BatchNorm2d"
[[layers]]
type = "MaxPool2d"
kernel_size = 2
[[layers]]
type = "Flatten"
[[layers]]
type = "Linear"
out_features = 16
[[layers]]
type = "Dropout"
p = 0.25
[[layers]]
type = "Linear"
out_features = "num_classes"
"""

PY = """
import gpunn


def build(input_shape, num_classes, rng, dtype):
    c, h, w = input_shape
    return gpunn.Sequential(gpunn.Flatten(), gpunn.Linear(c * h * w, 12, rng=rng, dtype=dtype),
                            gpunn.Tanh(), gpunn.Linear(12, num_classes, rng=rng, dtype=dtype))


def wide(input_shape, num_classes, *, rng, dtype):      # keyword-only rng/dtype work too
    c, h, w = input_shape
    return [gpunn.Flatten(), gpunn.Linear(c * h * w, num_classes, rng=rng, dtype=dtype)]


def broken(input_shape, num_classes, rng, dtype):
    return gpunn.Sequential(gpunn.Flatten(),
                            gpunn.Linear(5, num_classes, rng=rng, dtype=dtype))


def raises(input_shape, num_classes, rng, dtype):
    x = {}
    return x["missing"]


def not_a_model(input_shape, num_classes, rng, dtype):
    return 42
"""


def _hand_built(seed, dtype=np.float32):
    """TOML above, by hand, drawing from the same generator in the same order."""
    rng = make_rng(seed)
    return gpunn.Sequential(
        gpunn.Conv2d(1, 4, 3, padding="same", rng=rng, dtype=dtype), gpunn.ReLU(),
        gpunn.Residual(gpunn.Conv2d(4, 4, 3, padding="same", bias=False, rng=rng, dtype=dtype),
                       gpunn.BatchNorm2d(4, dtype=dtype)),
        gpunn.MaxPool2d(2), gpunn.Flatten(), gpunn.Linear(4 * 6 * 6, 16, rng=rng, dtype=dtype),
        gpunn.Dropout(0.25, rng=rng), gpunn.Linear(16, 3, rng=rng, dtype=dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_toml_spec_is_the_hand_built_model(dtype):
    model = build_from_toml(TOML, (1, 12, 12), 3, seed=7, dtype=dtype)
    ref = _hand_built(7, dtype)
    assert model.name == "small" and len(model) == len(ref)
    sd, rsd = model.state_dict(), ref.state_dict()
    assert sd.keys() == rsd.keys()
    for k in sd:
        np.testing.assert_array_equal(sd[k], rsd[k], err_msg=k)
        assert sd[k].dtype == rsd[k].dtype
    x = np.random.default_rng(0).random((5, 1, 12, 12)).astype(dtype)
    np.testing.assert_array_equal(model.forward(x, train=False), ref.forward(x, train=False))
    assert "in_channels" not in TOML and "in_features" not in TOML      # all inferred


def test_toml_sizes_follow_the_input():
    m = build_from_toml(TOML, (3, 20, 16), 5)
    assert m.layers[0].params["W"].shape == (4, 3, 3, 3)
    assert m.layers[5].params["W"].shape == (4 * 10 * 8, 16)
    assert m.output_shape((3, 20, 16)) == (5,)


def _err(text, shape=(1, 12, 12), k=3, path="spec.toml"):
    with pytest.raises(ModelSpecError) as e:
        build_from_toml(text, shape, k, where=path)
    return str(e.value)


def test_toml_errors_name_file_layer_and_key():
    msg = _err('[[layers]]\ntype = "Conv2d"\nout_channels = 4\nkernal_size = 3\n')
    assert msg.startswith("spec.toml: layers[0] (Conv2d): unknown key 'kernal_size'")
    assert "kernel_size" in msg and "rng" not in msg.split("takes:")[1]
    msg = _err('[[layers]]\ntype = "Flatten"\n[[layers]]\ntype = "Lineer"\nout_features = 3\n')
    assert "layers[1]: unknown layer type 'Lineer'" in msg and "Linear" in msg
    msg = _err('[[layers]]\ntype = "Conv2d"\nkernel_size = 3\n')
    assert "layers[0] (Conv2d): missing out_channels" in msg
    msg = _err('[[layers]]\ntype = "Linear"\nout_features = 3\n')
    assert "layers[0] (Linear): gets per-sample input (1, 12, 12)" in msg and "Flatten" in msg
    msg = _err('[[layers]]\ntype = "Conv2d"\nin_channels = 3\nout_channels = 4\nkernel_size = 3\n')
    assert "in_channels = 3 but the previous layer gives 1" in msg
    msg = _err('[[layers]]\ntype = "Conv2d"\nout_channels = 4\nkernel_size = 3\npadding = "half"\n')
    assert "layers[0] (Conv2d)" in msg and "'half'" in msg
    msg = _err('[[layers]]\ntype = "Conv2d"\nout_channels = 4\nkernel_size = 30\n')
    assert "layers[0] (Conv2d): cannot take per-sample input (1, 12, 12)" in msg
    msg = _err('[[layers]]\ntype = "Linear"\nrng = 3\n', shape=(4,))
    assert "'rng' comes from the run" in msg
    msg = _err('[[layers]]\ntype = "Flatten"\n[[layers]]\ntype = "Linear"\nout_features = 7\n')
    assert "maps input (1, 12, 12) to (7,), expected (3,)" in msg and "num_classes" in msg
    msg = _err('[[layers]]\ntype = "Flatten"\n[[layers]]\ntype = "Residual"\n'
               '  [[layers.layers]]\n  type = "Linear"\n  out_features = 5\n')
    assert "layers[1] (Residual)" in msg and "keep the shape" in msg
    msg = _err('[[layers]]\ntype = "Residual"\n  [[layers.layers]]\n  type = "ReLU"\n'
               '  [[layers.layers]]\n  type = "Conv2d"\n  out_channels = 1\n')
    assert "layers[0].layers[1] (Conv2d): missing kernel_size" in msg
    assert "not valid TOML" in _err("[[layers]\n")
    assert "needs at least one [[layers]]" in _err('name = "x"\n')
    assert "unknown top-level key(s) layer" in _err('[[layer]]\ntype = "ReLU"\n')
    assert "no type" in _err('[[layers]]\nout_features = 3\n')
    msg = _err('input_shape = [3, 32, 32]\n[[layers]]\ntype = "Flatten"\n')
    assert "declares input_shape = [3, 32, 32] but the data's input is [1, 12, 12]" in msg


@pytest.mark.skipif("shortcut" not in inspect.signature(gpunn.Residual.__init__).parameters,
                    reason="this Residual takes no shortcut")
def test_toml_residual_with_projection_shortcut():
    text = ('[[layers]]\ntype = "Residual"\n'
            '  [[layers.layers]]\n  type = "Conv2d"\n  out_channels = 6\n  kernel_size = 3\n'
            '  stride = 2\n  padding = 1\n'
            '  [[layers.shortcut]]\n  type = "Conv2d"\n  out_channels = 6\n  kernel_size = 1\n'
            '  stride = 2\n'
            '[[layers]]\ntype = "Flatten"\n[[layers]]\ntype = "Linear"\n'
            'out_features = "num_classes"\n')
    m = build_from_toml(text, (2, 8, 8), 3)
    assert m.output_shape((2, 8, 8)) == (3,)
    assert m.layers[0].shortcut[0].params["W"].shape == (6, 2, 1, 1)


def test_python_file_models(tmp_path):
    f = tmp_path / "nets.py"
    f.write_text(PY)
    m = build_from_spec(f"{f}:build", (1, 6, 6), 4, seed=3)
    assert isinstance(m, gpunn.Sequential) and m.output_shape((1, 6, 6)) == (4,)
    again = build_from_spec(str(f), (1, 6, 6), 4, seed=3)         # ":build" is the default
    np.testing.assert_array_equal(m.layers[1].params["W"], again.layers[1].params["W"])
    assert build_from_spec(f"{f}:wide", (1, 6, 6), 4, dtype=np.float64).layers[1].params["W"].dtype == np.float64

    def err(func):
        with pytest.raises(ModelSpecError) as e:
            build_from_spec(f"{f}:{func}", (1, 6, 6), 4)
        return str(e.value)
    assert "has no function 'nope'" in err("nope") and "broken, build, not_a_model" in err("nope")
    assert "cannot take input (1, 6, 6)" in err("broken") and str(f) in err("broken")
    msg = err("raises")
    assert "raised KeyError: 'missing'" in msg and "line 23" in msg
    assert "returned int; it must return a gpunn.Sequential" in err("not_a_model")
    bad = tmp_path / "bad.py"
    bad.write_text("import gpunn\n\nraise RuntimeError('boom')\n")
    with pytest.raises(ModelSpecError, match=r"bad.py: importing it raised RuntimeError: boom \(line 3"):
        build_from_spec(str(bad), (1, 6, 6), 4)
    with pytest.raises(ModelSpecError, match="model file .*missing.py not found"):
        build_from_spec(str(tmp_path / "missing.py"), (1, 6, 6), 4)


def test_spec_kinds_and_labels():
    assert model_kind("model4") == "zoo" and model_kind("a/b.toml") == "toml"
    assert model_kind("a/b.py") == model_kind("a/b.py:make") == "python"
    with pytest.raises(ModelSpecError, match="unknown model 'model9'.*model1, model2"):
        model_kind("model9")
    assert model_label("nets/small.py:build") == "small" and model_label("x/y.py:deep") == "y-deep"
    assert model_label("specs/cnn.toml") == "cnn" and model_label("resnet-small") == "resnet-small"
    assert model_source("model4") is None


# -- runs: what config.json records, and rebuilding ---------------------------------------------
@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    """A small three-class image set as an npz: data set (fast to train on)."""
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)

    def make(n):
        y = np.arange(n) % 3
        x = rng.integers(0, 60, (n, 12, 12)).astype(np.uint8)
        for k in range(3):                                  # a bright band per class
            x[y == k, 4 * k:4 * k + 4, :] += 150
        return x, y
    (xtr, ytr), (xte, yte) = make(240), make(60)
    p = d / "tiny.npz"
    np.savez(p, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte,
             class_names=np.array(["top", "middle", "bottom"]))
    return p


def _train(model, data, out, *extra):
    args = ["train", "--model", str(model), "--dataset", f"npz:{data}", "--epochs", "1",
            "--val-size", "0.1", "--eval-every", "0", "--batch-size", "20", "--lr", "0.1",
            "--no-progress", "--device", "cpu", "--out", str(out), *extra]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    return json.loads((out / "config.json").read_text())


def _logits_match_metrics(run, data):
    """load_model's forward reproduces the run's saved test accuracy."""
    model = gpunn.runs.load_model(run)
    z = np.load(data)
    x = (z["x_test"][:, None] / np.float32(255)).astype(np.float32)
    pred = model.forward(x, train=False).argmax(axis=1)
    acc = float((pred == z["y_test"]).mean())
    assert acc == pytest.approx(json.loads((run / "metrics.json").read_text())["accuracy"])
    assert model.class_names == ("top", "middle", "bottom") and model.input_shape == (1, 12, 12)
    assert not model.training
    return model, acc


def test_toml_run_keeps_its_text(tmp_path, tiny_npz):
    spec = tmp_path / "net.toml"
    spec.write_text(TOML)
    cfg = _train(spec, tiny_npz, tmp_path / "run")
    src = cfg["model_source"]
    assert src["kind"] == "toml" and src["text"] == TOML and src["path"] == str(spec)
    assert cfg["data_info"]["class_names"] == ["top", "middle", "bottom"]
    assert cfg["dataset"] == f"npz:{tiny_npz}"
    model, acc = _logits_match_metrics(tmp_path / "run", tiny_npz)
    w = np.load(tmp_path / "run" / "weights.npz")
    np.testing.assert_array_equal(model.state_dict()["0.W"], w["0.W"])
    assert acc > 0.5                                          # it learned the bands
    spec.unlink()                                             # the recorded text rebuilds it
    assert gpunn.load_model(tmp_path / "run").num_parameters() == model.num_parameters()
    r = CliRunner().invoke(main, ["eval", str(tmp_path / "run"), "--json", "--no-plots",
                                  "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["accuracy"] == pytest.approx(acc)


def test_python_run_checks_its_file(tmp_path, tiny_npz):
    f = tmp_path / "nets.py"
    f.write_text(PY)
    cfg = _train(f"{f}:build", tiny_npz, tmp_path / "run")
    src = cfg["model_source"]
    assert src["kind"] == "python" and src["path"] == str(f) and src["function"] == "build"
    assert len(src["sha256"]) == 64 and src["text"] == PY
    _logits_match_metrics(tmp_path / "run", tiny_npz)
    f.write_text(PY + "\n# edited\n")
    with pytest.raises(ModelSpecError, match="nets.py changed since the run was trained"):
        gpunn.runs.load_model(tmp_path / "run")
    r = CliRunner().invoke(main, ["eval", str(tmp_path / "run"), "--device", "cpu"])
    assert r.exit_code == 2 and "changed since the run was trained" in r.output
    f.unlink()
    with pytest.raises(ModelSpecError, match="nets.py recorded in .*config.json is gone"):
        gpunn.runs.load_model(tmp_path / "run")
    f.write_text(src["text"])                                  # put back as recorded: loads
    _logits_match_metrics(tmp_path / "run", tiny_npz)


def test_zoo_run_loads_and_old_runs_without_records(tmp_path, tiny_npz):
    _train("model2", tiny_npz, tmp_path / "run")
    _logits_match_metrics(tmp_path / "run", tiny_npz)
    cfg_path = tmp_path / "run" / "config.json"
    d = json.loads(cfg_path.read_text())
    del d["data_info"], d["model_source"]                     # a run from before the records
    cfg_path.write_text(json.dumps(d))
    _logits_match_metrics(tmp_path / "run", tiny_npz)
    os.remove(tmp_path / "run" / "weights.npz")
    with pytest.raises(FileNotFoundError, match="has not finished"):
        gpunn.load_model(tmp_path / "run")


def test_dropout_option_is_refused_for_own_models(tmp_path, tiny_npz):
    spec = tmp_path / "net.toml"
    spec.write_text(TOML)
    r = CliRunner().invoke(main, ["train", "--model", str(spec), "--dataset", f"npz:{tiny_npz}",
                                  "--dropout", "0.5", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "add a Dropout layer there" in r.output


def test_bad_spec_fails_before_loading_data(tmp_path):
    spec = tmp_path / "net.toml"
    spec.write_text('[[layers]]\ntype = "Conv2d"\nout_channel = 4\n')
    r = CliRunner().invoke(main, ["train", "--model", str(spec), "--dataset", "npz:/nonexistent.npz",
                                  "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "unknown key 'out_channel'" in r.output and str(spec) in r.output


def test_default_run_directory_name_uses_file_stems(tmp_path, tiny_npz, monkeypatch):
    spec = tmp_path / "net.toml"
    spec.write_text(TOML)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["train", "--model", str(spec), "--dataset", f"npz:{tiny_npz}",
                                  "--epochs", "1", "--max-steps", "2", "--val-size", "0.1",
                                  "--no-progress", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    (run,) = os.listdir(tmp_path / "runs")
    assert run.startswith("net-tiny-")


# -- gpunn models -------------------------------------------------------------------------------
def test_models_lists_every_zoo_model():
    from gpunn.zoo import MODELS, build_model

    r = CliRunner().invoke(main, ["models"])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert lines[0].split() == ["name", "params", "input", "description"]
    assert [l.split()[0] for l in lines[1:]] == list(MODELS)
    assert "model4" in r.output and "13,570  (1, 28, 28)  Small CNN" in r.output
    rows = json.loads(CliRunner().invoke(main, ["models", "--json"]).output)
    assert [row["name"] for row in rows] == list(MODELS)
    for row in rows:
        assert row["description"]
        shape = tuple(row["input_shape"])
        assert row["parameters"] == build_model(row["name"], shape, 10).num_parameters()


def test_readme_toml_specs_build():
    import re
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, flags=re.S)
    assert blocks
    for text in blocks:
        m = build_from_toml(text, (1, 28, 28), 10, where="README.md")
        assert m.output_shape((1, 28, 28)) == (10,)
        assert build_from_toml(text, (3, 32, 32), 5, where="README.md").output_shape((3, 32, 32)) == (5,)
