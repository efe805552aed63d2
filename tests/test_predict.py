"""gpunn predict: inputs prepared as the run's data were, resized or refused, top-k output."""
import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from gpunn.cli import main
from gpunn.data import load_dataset
from gpunn.predict import PredictError, Predictor, fit_to_model, resize, softmax
from gpunn.runs import load_model

CLASSES = ["top", "middle", "bottom"]


@pytest.mark.parametrize("h0, w0, h, w", [(56, 56, 28, 28), (20, 30, 8, 12), (7, 9, 21, 27),
                                          (100, 100, 28, 28), (28, 28, 32, 32), (5, 5, 5, 5)])
def test_resize_is_pillows_bilinear_and_nearest(rng, h0, w0, h, w):
    a = rng.random((h0, w0)).astype(np.float32)
    for method, flag in (("bilinear", Image.BILINEAR), ("nearest", Image.NEAREST)):
        ref = np.asarray(Image.fromarray(a, "F").resize((w, h), flag))
        got = resize(np.stack([a, 1 - a]), h, w, method)
        assert got.shape == (2, h, w) and got.dtype == np.float32
        np.testing.assert_allclose(got[0], ref, atol=1e-6, err_msg=method)
        np.testing.assert_allclose(got[1], 1 - ref, atol=1e-6, err_msg=method)


def test_fit_to_model_refuses_what_it_cannot_fix(rng):
    img = rng.random((1, 20, 20)).astype(np.float32)
    same, was = fit_to_model(img, (1, 20, 20), "a.png")
    assert same is img and was is None
    out, was = fit_to_model(img, (1, 10, 10), "a.png")
    assert out.shape == (1, 10, 10) and was == (20, 20)
    with pytest.raises(PredictError, match=r"a.png: the image is 20x20 grayscale but the model "
                                           r"takes 32x32 RGB input: convert it to RGB first"):
        fit_to_model(img, (3, 32, 32), "a.png")
    with pytest.raises(PredictError, match="is 20x20 RGB but the model takes 28x28 grayscale "
                                           "input: convert it to grayscale first"):
        fit_to_model(np.zeros((3, 20, 20), np.float32), (1, 28, 28), "a.png")
    with pytest.raises(PredictError, match=r"the image is 30x20 but the model takes 28x28, a "
                                           r"different aspect ratio \(1.5 vs 1\); crop it to 1:1"):
        fit_to_model(rng.random((1, 20, 30)), (1, 28, 28), "a.png")
    with pytest.raises(PredictError, match="use --resize bilinear or nearest"):
        fit_to_model(img, (1, 10, 10), "a.png", "none")


def _tiny(tmp_path, rng):
    def make(n):
        y = np.arange(n) % 3
        x = rng.integers(0, 60, (n, 12, 12)).astype(np.uint8)
        for k in range(3):
            x[y == k, 4 * k:4 * k + 4, :] += 150
        return x, y
    (xtr, ytr), (xte, yte) = make(240), make(30)
    p = tmp_path / "tiny.npz"
    np.savez(p, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, class_names=np.array(CLASSES))
    return p


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    data = _tiny(d, np.random.default_rng(5))
    out = {}
    for name, extra in (("plain", []), ("std", ["--standardize"])):
        r = CliRunner().invoke(main, ["train", "--model", "model2", "--dataset", f"npz:{data}",
                                      "--epochs", "2", "--val-size", "0.1", "--eval-every", "0",
                                      "--batch-size", "20", "--lr", "0.1", "--no-progress",
                                      "--device", "cpu", "--out", str(d / name), *extra])
        assert r.exit_code == 0, r.output
        out[name] = d / name
    return data, out, d


def _pngs(folder, x, names=None):
    paths = []
    for i, img in enumerate(x):
        p = folder / (names[i] if names else f"img{i}.png")
        Image.fromarray(img).save(p)
        paths.append(str(p))
    return paths


@pytest.mark.parametrize("which", ["plain", "std"])
def test_png_predictions_are_the_runs_own_forward(runs, which):
    data, out, d = runs
    ds = load_dataset(f"npz:{data}", val_size=0.1, standardize=(which == "std"))
    z = np.load(data)
    paths = _pngs(d, z["x_test"][:6], [f"{which}{i}.png" for i in range(6)])
    p = Predictor(out[which])
    assert p.class_names == tuple(CLASSES) and p.input_shape == (1, 12, 12)
    x, names, sizes = p.prepare(paths)
    np.testing.assert_allclose(x, ds.x_test[:6], atol=1e-6)     # [0, 1], then the run's stats
    rows = p.predict(paths, top_k=3)
    model = load_model(out[which])
    want = softmax(model.forward(ds.x_test[:6], train=False))
    for row, probs, name in zip(rows, want, paths):
        assert row["input"] == name and row["resized_from"] is None
        got = {t["index"]: t["probability"] for t in row["top"]}
        assert sorted(got) == [0, 1, 2]
        for k, v in got.items():
            assert v == pytest.approx(probs[k], abs=1e-5)
        assert row["top"][0]["class"] == CLASSES[int(np.argmax(probs))]
        assert row["top"][0]["probability"] >= row["top"][1]["probability"]
    if which == "plain":                                       # the run learned the bands
        assert sum(r["top"][0]["index"] == y for r, y in zip(rows, z["y_test"][:6])) >= 5


def test_npz_inputs_and_resized_images(runs):
    data, out, d = runs
    z = np.load(data)
    np.savez(d / "batch.npz", x=z["x_test"][:4], y=z["y_test"][:4])
    big = [np.kron(img, np.ones((3, 3), np.uint8)) for img in z["x_test"][:2]]
    paths = _pngs(d, big, ["big0.png", "big1.png"])
    p = Predictor(out["plain"])
    rows = p.predict([str(d / "batch.npz"), *paths], top_k=1)
    assert [r["input"] for r in rows[:4]] == [f"{d / 'batch.npz'}[{i}]" for i in range(4)]
    assert [len(r["top"]) for r in rows] == [1] * 6
    assert rows[4]["resized_from"] == [36, 36] and rows[0]["resized_from"] is None
    x, _, _ = p.prepare(paths)
    want = np.stack([resize(b[None].astype(np.float32) / 255, 12, 12) for b in big])
    np.testing.assert_allclose(x, want, atol=1e-6)
    assert not p.warnings


def test_cli_text_json_and_errors(runs, rng):
    data, out, d = runs
    z = np.load(data)
    paths = _pngs(d, z["x_test"][:2], ["c0.png", "c1.png"])
    r = CliRunner().invoke(main, ["predict", str(out["plain"]), *paths, "--top-k", "2"])
    assert r.exit_code == 0, r.output
    lines = [l for l in r.output.splitlines() if l.startswith(str(d))]
    assert len(lines) == 2 and lines[0].split()[0] == paths[0]
    assert lines[0].count("%") == 2 and any(c in lines[0] for c in CLASSES)
    r = CliRunner().invoke(main, ["predict", str(out["plain"]), paths[0], "--json", "--top-k", "5"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output.strip().splitlines()[-1])
    assert len(rows) == 1 and len(rows[0]["top"]) == 3                    # capped at K
    assert sum(t["probability"] for t in rows[0]["top"]) == pytest.approx(1.0)
    Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(d / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (12, 18), dtype=np.uint8)).save(d / "wide.png")
    (d / "junk.png").write_bytes(b"nope")
    np.savez(d / "two.npz", a=np.zeros((2, 12, 12)), b=np.zeros((2, 12, 12)))
    for args, msg in (([str(d / "rgb.png")], "rgb.png: the image is 12x12 RGB but the model takes "
                                             "12x12 grayscale input"),
                      ([str(d / "wide.png")], "different aspect ratio"),
                      ([str(d / "junk.png")], "junk.png: cannot read the image"),
                      ([str(d / "two.npz")], "two.npz: which array holds the images? found a, b"),
                      ([str(d / "notes.txt")], "give an image (.png, .jpg, .jpeg) or an .npz"),
                      ([str(d / "big0.png"), "--resize", "none"], "use --resize bilinear")):
        r = CliRunner().invoke(main, ["predict", str(out["plain"]), *args])
        assert r.exit_code == 2 and "error: " in r.output and msg in r.output, (msg, r.output)
    r = CliRunner().invoke(main, ["predict", str(out["plain"]), paths[0], "--weights", "best.npz"])
    assert r.exit_code == 2 and "best.npz not found" in r.output


def test_jpeg_needs_pillow_and_says_so(runs, monkeypatch):
    data, out, d = runs
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(d / "x.jpg")
    monkeypatch.setitem(sys.modules, "matplotlib.image", None)     # import fails as without PIL
    r = CliRunner().invoke(main, ["predict", str(out["plain"]), str(d / "x.jpg")])
    assert r.exit_code == 2 and "needs Pillow, which matplotlib depends on" in r.output


def test_float_trained_runs_warn_about_image_scaling(tmp_path, rng):
    p = tmp_path / "f.npz"
    np.savez(p, x_train=rng.random((60, 1, 6, 6)) * 4, y_train=np.arange(60) % 2,
             x_test=rng.random((10, 1, 6, 6)) * 4, y_test=np.arange(10) % 2)
    r = CliRunner().invoke(main, ["train", "--model", "model1", "--dataset", f"npz:{p}",
                                  "--epochs", "1", "--val-size", "0", "--no-progress",
                                  "--device", "cpu", "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(tmp_path / "a.png")
    r = CliRunner().invoke(main, ["predict", str(tmp_path / "run"), str(tmp_path / "a.png")])
    assert r.exit_code == 0 and "warning: the run trained on float arrays used as stored" in r.output
    np.savez(tmp_path / "fl.npz", x=rng.random((2, 1, 6, 6)) * 4)
    r = CliRunner().invoke(main, ["predict", str(tmp_path / "run"), str(tmp_path / "fl.npz")])
    assert r.exit_code == 0 and "warning" not in r.output


def test_rgb_folder_run_predicts_jpeg(tmp_path, rng):
    for split, n in (("train", 8), ("test", 2)):
        for k, c in enumerate(("red", "blue")):
            (tmp_path / "set" / split / c).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 80, (10, 10, 3), dtype=np.uint8)
                img[..., 0 if k == 0 else 2] += 170
                Image.fromarray(img).save(tmp_path / "set" / split / c / f"{i}.png")
    r = CliRunner().invoke(main, ["train", "--model", "model1", "--dataset",
                                  f"folder:{tmp_path / 'set'}", "--epochs", "3", "--val-size", "0",
                                  "--batch-size", "4", "--lr", "0.5", "--no-progress",
                                  "--device", "cpu", "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    photo = np.zeros((20, 20, 3), np.uint8)
    photo[..., 2] = 230
    Image.fromarray(photo).save(tmp_path / "sky.jpg", quality=95)
    rows = Predictor(tmp_path / "run").predict([str(tmp_path / "sky.jpg")], top_k=2)
    assert rows[0]["resized_from"] == [20, 20] and rows[0]["top"][0]["class"] == "blue"
