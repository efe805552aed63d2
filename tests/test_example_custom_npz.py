"""examples/train_custom_npz.py runs as documented, and its build() trains from the CLI."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from gpunn.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_custom_npz.py"


def test_the_example_trains_saves_and_reloads(tmp_path):
    r = subprocess.run([sys.executable, str(EXAMPLE), "--demo", "--epochs", "2", "--device", "cpu",
                        "--out", str(tmp_path / "custom")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "540 train, 60 validation, 150 test images of (3, 16, 16)" in out
    assert "classes ('horizontal', 'vertical', 'diagonal')" in out
    acc = float(out.split("test accuracy ")[1].split()[0])
    assert acc > 0.9                                          # the stripes are easy
    assert "first five test images -> ['" in out
    cfg = json.loads((tmp_path / "custom" / "run" / "config.json").read_text())
    assert cfg["model_source"]["kind"] == "python" and cfg["augment_crop"] == 2
    assert cfg["model_source"]["path"] == str(EXAMPLE)
    for f in ("weights.npz", "checkpoint.npz", "run/weights.npz", "run/report.md"):
        assert (tmp_path / "custom" / f).exists(), f


def test_its_build_function_is_a_model_file_for_the_cli(tmp_path):
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        import train_custom_npz
    finally:
        sys.path.pop(0)
    data = tmp_path / "demo.npz"
    train_custom_npz.write_demo(data, n_train=120, n_test=30)
    r = CliRunner().invoke(main, ["train", "--model", f"{EXAMPLE}:build", "--dataset", f"npz:{data}",
                                  "--epochs", "1", "--val-size", "0.1", "--no-progress",
                                  "--device", "cpu", "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    np.savez(tmp_path / "some.npz", x=np.load(data)["x_test"][:3])
    r = CliRunner().invoke(main, ["predict", str(tmp_path / "run"), str(tmp_path / "some.npz"),
                                  "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output.strip().splitlines()[-1])
    assert len(rows) == 3 and rows[0]["top"][0]["class"] in ("horizontal", "vertical", "diagonal")
