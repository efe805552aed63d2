"""Own data: npz:FILE, idx:DIR and folder:DIR data sets and their errors, and device-side
augmentation (random crop with padding, horizontal flip) that stays exact through a resume."""
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from gpunn.cli import main
from gpunn.data import (DataFormatError, DataLoader, RandomAugment, load_dataset, read_image,
                        write_idx)
from gpunn.data.augment import augment_batch
from gpunn.errors import ShapeError
from gpunn.losses import CrossEntropyLoss
from gpunn.ops.random import splitmix64
from gpunn.optim import SGD
from gpunn.train import TrainConfig, fit
from gpunn.zoo import build_model


def _split(rng, n, shape=(10, 12), k=3):
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), np.arange(n) % k


# -- npz: ---------------------------------------------------------------------------------------
def test_npz_split_set(tmp_path, rng):
    xtr, ytr = _split(rng, 40, (10, 12, 3))                   # NHWC RGB
    xte, yte = _split(rng, 9, (10, 12, 3))
    p = tmp_path / "mine.npz"
    np.savez(p, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte,
             class_names=np.array(["cat", "dog", "eel"]))
    ds = load_dataset(f"npz:{p}", val_size=4)
    assert ds.input_shape == (3, 10, 12) and ds.class_names == ("cat", "dog", "eel")
    assert len(ds.x_train) == 36 and len(ds.x_val) == 4 and ds.pixel_scale == 255.0
    np.testing.assert_allclose(ds.x_test * 255, xte.transpose(0, 3, 1, 2), atol=1e-4)
    np.testing.assert_array_equal(ds.y_test, yte)
    f = tmp_path / "float.npz"                                 # float images: as stored
    np.savez(f, x_train=np.full((5, 1, 4, 4), 3.5), y_train=np.arange(5) % 2,
             x_test=np.zeros((2, 1, 4, 4)), y_test=np.array([0, 1]))
    ds = load_dataset(f"npz:{f}", val_size=0)
    assert ds.x_train.max() == 3.5 and ds.pixel_scale is None and ds.class_names == ("0", "1")


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("y_test"), "missing array(s) y_test"),
    (lambda a: a.update(extra=np.zeros(3)), "unexpected array(s) extra"),
    (lambda a: a.update(y_train=a["y_train"].astype(float)), "y_train: labels must be integers"),
    (lambda a: a.update(y_test=a["y_test"][:-1]), "y_test: labels must be (N,) with N = 6"),
    (lambda a: a.update(y_test=a["y_test"] - 1), "y_test: labels must be >= 0"),
    (lambda a: a.update(y_test=a["y_test"] + 5), "class_names: a label is 7 but only 3 class names"),
    (lambda a: a.update(x_test=a["x_test"][:, :5]), "x_train images are (1, 8, 8) (C, H, W) but "
                                                    "x_test images are (1, 5, 8)"),
    (lambda a: a.update(x_train=a["x_train"][..., None, None]), "x_train must be (N, H, W)"),
    (lambda a: a.update(x_train=a["x_train"] * np.nan), "x_train: images hold NaN"),
    (lambda a: a.update(x_train=a["x_train"].astype(np.int64) * 300), "integer images must be in 0..255"),
    (lambda a: a.update(x_test=a["x_test"].astype(np.float32)), "x_train is uint8 but x_test is float32"),
    (lambda a: a.update(class_names=np.array([1, 2, 3])), "class_names must be a 1-d array of strings"),
    (lambda a: a.update(class_names=np.array(["a", "b", "a"])), "class names repeat"),
    (lambda a: a.update(x_test=a["x_test"][:0], y_test=a["y_test"][:0]), "must each hold at least one"),
    (lambda a: a.update(y_train=a["y_train"] * 0, y_test=a["y_test"] * 0), None),
])
def test_npz_split_errors_name_file_and_array(tmp_path, rng, change, message):
    arrays = {"x_train": rng.integers(0, 256, (12, 8, 8), dtype=np.uint8),
              "y_train": np.arange(12) % 3,
              "x_test": rng.integers(0, 256, (6, 8, 8), dtype=np.uint8),
              "y_test": np.arange(6) % 3, "class_names": np.array(["a", "b", "c"])}
    change(arrays)
    if message is None:                              # labels all 0 with 3 names: allowed
        p = tmp_path / "ok.npz"
        np.savez(p, **arrays)
        assert load_dataset(f"npz:{p}", val_size=0).num_classes == 3
        arrays.pop("class_names")
        np.savez(p, **arrays)
        with pytest.raises(DataFormatError, match="needs at least two classes"):
            load_dataset(f"npz:{p}", val_size=0)
        return
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(DataFormatError) as e:
        load_dataset(f"npz:{p}", val_size=0)
    assert str(e.value).startswith(str(p)) and message in str(e.value), str(e.value)


def test_npz_object_class_names_say_how_to_save(tmp_path, rng):
    p = tmp_path / "obj.npz"
    np.savez(p, x_train=np.zeros((4, 3, 3), np.uint8), y_train=np.arange(4) % 2,
             x_test=np.zeros((2, 3, 3), np.uint8), y_test=np.arange(2),
             class_names=np.array(["a", "b"], dtype=object))
    with pytest.raises(DataFormatError, match="class_names cannot be read without pickle.*dtype=str"):
        load_dataset(f"npz:{p}", val_size=0)


def test_missing_own_data_and_bare_npz_hints(tmp_path):
    from gpunn.data import DatasetNotFound
    with pytest.raises(DatasetNotFound, match="npz:.*nothing.npz does not exist"):
        load_dataset(f"npz:{tmp_path / 'nothing.npz'}")
    with pytest.raises(ValueError, match="give a path after folder:"):
        load_dataset("folder:")
    with pytest.raises(ValueError, match="or your own: npz:FILE.npz, idx:DIR, folder:DIR"):
        load_dataset("imagenet")
    p = tmp_path / "one.npz"
    np.savez(p, x_train=np.zeros((30, 3, 3), np.uint8), y_train=np.arange(30) % 2,
             x_test=np.zeros((2, 3, 3), np.uint8), y_test=np.arange(2))
    with pytest.raises(ValueError, match="got 5000 of 30.*--val-size 0.1"):
        load_dataset(f"npz:{p}")


# -- idx: ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("names", [
    ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
     "t10k-labels-idx1-ubyte.gz"),
    ("train-images.idx3-ubyte", "train-labels.idx1-ubyte", "test-images.idx3-ubyte",
     "test-labels.idx1-ubyte"),                                     # Kaggle's spelling
])
def test_idx_dir(tmp_path, rng, names):
    xtr, ytr = _split(rng, 20, (7, 7), k=4)
    xte, yte = _split(rng, 8, (7, 7), k=4)
    for name, a in zip(names, (xtr, ytr.astype(np.uint8), xte, yte.astype(np.uint8))):
        write_idx(tmp_path / name, a)
    ds = load_dataset(f"idx:{tmp_path}", val_size=0)
    assert ds.input_shape == (1, 7, 7) and ds.class_names == ("0", "1", "2", "3")
    np.testing.assert_allclose(ds.x_train[:, 0] * 255, xtr, atol=1e-4)
    (tmp_path / "class_names.txt").write_text("zero\none\ntwo\nthree\n")
    assert load_dataset(f"idx:{tmp_path}", val_size=0).class_names == ("zero", "one", "two", "three")
    (tmp_path / "class_names.txt").write_text("zero\none\n")
    with pytest.raises(DataFormatError, match="class_names.txt: a label is 3 but only 2"):
        load_dataset(f"idx:{tmp_path}", val_size=0)
    (tmp_path / names[3]).unlink()
    with pytest.raises(DataFormatError, match="no test labels file"):
        load_dataset(f"idx:{tmp_path}")
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", yte.astype(np.uint8))
    write_idx(tmp_path / "test-labels-idx1-ubyte.copy", yte.astype(np.uint8))
    with pytest.raises(DataFormatError, match="several test labels files"):
        load_dataset(f"idx:{tmp_path}")


def test_idx_dir_count_mismatch(tmp_path, rng):
    xtr, ytr = _split(rng, 20, (7, 7))
    write_idx(tmp_path / "train-images-idx3-ubyte", xtr)
    write_idx(tmp_path / "train-labels-idx1-ubyte", ytr[:-1].astype(np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", xtr)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", ytr.astype(np.uint8))
    with pytest.raises(DataFormatError, match="train-images-idx3-ubyte holds 20 images but .*"
                                              "train-labels-idx1-ubyte holds 19 labels"):
        load_dataset(f"idx:{tmp_path}")


# -- folder: ------------------------------------------------------------------------------------
def _png(path, a, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a, mode).save(path)


def _folder(root, rng, shape=(9, 11), classes=("ant", "bee", "cow"), n=(4, 2)):
    arrays = {}
    for split, count in zip(("train", "test"), n):
        for c in classes:
            for i in range(count):
                a = rng.integers(0, 256, shape, dtype=np.uint8)
                _png(root / split / c / f"{i}.png", a)
                arrays[f"{split}/{c}/{i}"] = a
    return arrays


def test_folder_grayscale_and_rgb(tmp_path, rng):
    arrays = _folder(tmp_path / "g", rng)
    (tmp_path / "g" / "train" / "ant" / "notes.txt").write_text("ignored")
    ds = load_dataset(f"folder:{tmp_path / 'g'}", val_size=0)
    assert ds.class_names == ("ant", "bee", "cow") and ds.input_shape == (1, 9, 11)
    assert ds.x_train.dtype == np.float32 and len(ds.y_train) == 12
    np.testing.assert_array_equal(ds.y_test, [0, 0, 1, 1, 2, 2])
    np.testing.assert_allclose(ds.x_test[2, 0], arrays["test/bee/0"] / 255, atol=1e-6)
    _folder(tmp_path / "c", rng, shape=(6, 5, 3), classes=("a", "b"), n=(3, 1))
    ds = load_dataset(f"folder:{tmp_path / 'c'}", val_size=0)
    assert ds.input_shape == (3, 6, 5) and 0 <= ds.x_train.min() and ds.x_train.max() <= 1


def test_read_image_layouts(tmp_path, rng):
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    _png(tmp_path / "rgb.png", rgb)
    np.testing.assert_allclose(read_image(tmp_path / "rgb.png"), rgb.transpose(2, 0, 1) / 255, atol=1e-6)
    opaque = np.concatenate([rgb, np.full((5, 7, 1), 255, np.uint8)], axis=2)
    _png(tmp_path / "rgba.png", opaque)
    assert read_image(tmp_path / "rgba.png").shape == (3, 5, 7)
    opaque[0, 0, 3] = 10
    _png(tmp_path / "clear.png", opaque)
    with pytest.raises(DataFormatError, match="clear.png: the image has transparent pixels"):
        read_image(tmp_path / "clear.png")
    smooth = np.broadcast_to((np.arange(16)[:, None, None] * 12 + np.arange(3) * 30)
                             .astype(np.uint8), (16, 24, 3)).copy()
    Image.fromarray(smooth).save(tmp_path / "photo.jpg", quality=95)   # JPEG: through Pillow
    img = read_image(tmp_path / "photo.jpg")
    assert img.shape == (3, 16, 24) and np.abs(img - smooth.transpose(2, 0, 1) / 255).max() < 0.03
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(DataFormatError, match="junk.png: cannot read the image"):
        read_image(tmp_path / "junk.png")


def test_folder_errors_name_the_file(tmp_path, rng):
    def fails(root, pattern):
        with pytest.raises(DataFormatError, match=pattern):
            load_dataset(f"folder:{root}", val_size=0)

    r = tmp_path / "size"
    _folder(r, rng)
    _png(r / "train" / "bee" / "9.png", rng.integers(0, 256, (9, 12), dtype=np.uint8))
    fails(r, r"train/bee/9.png: image is 12x9 grayscale but .*train/ant/0.png \(the first image "
             r"read\) is 11x9 grayscale: all images of a data set need the same size")
    r = tmp_path / "chan"
    _folder(r, rng)
    _png(r / "test" / "cow" / "5.png", rng.integers(0, 256, (9, 11, 3), dtype=np.uint8))
    fails(r, r"test/cow/5.png: image is 11x9 RGB but .* is 11x9 grayscale: .* same channels")
    r = tmp_path / "junk"
    _folder(r, rng)
    (r / "train" / "ant" / "2.png").write_bytes(b"\x89PNG broken")
    fails(r, r"train/ant/2.png: cannot read the image")
    r = tmp_path / "empty"
    _folder(r, rng)
    (r / "train" / "dog").mkdir()
    fails(r, r"train/dog: empty class folder")
    r = tmp_path / "mismatch"
    _folder(r, rng)
    shutil.rmtree(r / "test" / "cow")
    _png(r / "test" / "cat" / "0.png", rng.integers(0, 256, (9, 11), dtype=np.uint8))
    fails(r, r"different classes \(only in train: cow; only in test: cat\)")
    r = tmp_path / "notest"
    _folder(r, rng)
    shutil.rmtree(r / "test")
    fails(r, r"notest/test: no such folder")


def test_train_on_a_folder_from_the_cli(tmp_path, rng):
    _folder(tmp_path / "imgs", rng, shape=(8, 8), n=(10, 3))
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--model", "model2", "--dataset", f"folder:{tmp_path / 'imgs'}",
                                  "--epochs", "1", "--val-size", "0.2", "--batch-size", "8",
                                  "--no-progress", "--device", "cpu", "--out", str(out),
                                  "--augment-crop", "1", "--augment-flip"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dataset"] == f"folder:{tmp_path / 'imgs'}"
    assert cfg["augment_crop"] == 1 and cfg["augment_flip"] is True
    assert cfg["data_info"]["class_names"] == ["ant", "bee", "cow"]
    assert "| ant |" in (out / "report.md").read_text()


# -- augmentation -------------------------------------------------------------------------------
def _reference_augment(x, key, start, pad, flip):
    """One sample at a time, from the formula in gpunn/data/augment.py's docstring."""
    out = np.empty_like(x)
    span = 2 * pad + 1
    for i in range(len(x)):
        bits = int(splitmix64(np.array([start + i], dtype=np.uint64) + np.uint64(key))[0])
        dy = (((bits >> 8) & 0xFFFFFF) * span) >> 24
        dx = (((bits >> 32) & 0xFFFFFF) * span) >> 24
        img = np.pad(x[i], ((0, 0), (pad, pad), (pad, pad)))[:, dy:dy + x.shape[2], dx:dx + x.shape[3]]
        out[i] = img[:, :, ::-1] if flip and bits & 1 else img
    return out


@pytest.mark.parametrize("pad, flip", [(0, True), (2, False), (3, True)])
def test_augment_batch_matches_the_per_sample_reference(rng, pad, flip):
    x = rng.random((64, 2, 7, 9)).astype(np.float32)
    got = augment_batch(x, 0x1234_5678_9ABC, 100, pad, flip)
    np.testing.assert_array_equal(got, _reference_augment(x, 0x1234_5678_9ABC, 100, pad, flip))
    assert got.dtype == x.dtype and got.shape == x.shape
    if flip and not pad:
        mirrored = [np.array_equal(g, s[:, :, ::-1]) for g, s in zip(got, x)]
        unchanged = [np.array_equal(g, s) for g, s in zip(got, x)]
        assert all(m or u for m, u in zip(mirrored, unchanged)) and 15 < sum(mirrored) < 49
    if pad:                                  # every offset in [0, 2*pad] turns up
        kept = [np.array_equal(g, s) for g, s in zip(got, x)]
        assert 0 < sum(kept) < 40


def test_loader_augments_reproducibly_and_resumes_mid_epoch(rng):
    x = rng.random((50, 1, 6, 6)).astype(np.float32)
    y = np.arange(50) % 5
    aug = RandomAugment(crop=2, flip=True)
    a = DataLoader(x, y, batch_size=8, seed=3, augment=aug)
    first = [xb.copy() for xb, _ in a]
    second = [xb.copy() for xb, _ in a]                    # the next epoch draws anew
    assert not np.array_equal(first[0], second[0])
    b = DataLoader(x, y, batch_size=8, seed=3, augment=RandomAugment(crop=2, flip=True))
    again = [xb for xb, _ in b.batches(0)]
    resumed = [xb for xb, _ in b.batches(0, start=4)]
    for u, v in zip(first, again):
        np.testing.assert_array_equal(u, v)
    for u, v in zip(first[4:], resumed):
        np.testing.assert_array_equal(u, v)
    plain = [xb for xb, _ in DataLoader(x, y, batch_size=8, seed=3).batches(0)]
    assert not np.array_equal(plain[0], first[0])          # it does change the batches
    assert not RandomAugment() and DataLoader(x, y, 8, augment=RandomAugment()).augment is None
    with pytest.raises(ShapeError, match="augments images"):
        DataLoader(x.reshape(50, -1), y, 8, augment=aug)
    with pytest.raises(ValueError, match="crop must be a padding of >= 0"):
        RandomAugment(crop=-1)


@pytest.fixture(scope="module")
def small():
    from gpunn.data import make_synthetic
    x, y = make_synthetic(400, seed=2, size=12)
    x = x.astype(np.float32) / 255
    return SimpleNamespace(x_train=x[:300], y_train=y[:300], x_val=x[300:350], y_val=y[300:350],
                           x_test=x[350:], y_test=y[350:])


def _fit_aug(data, out, resume=False, max_steps=None, augment=True):
    m = build_model("model4", (1, 12, 12), 10, seed=0)
    opt = SGD(m, lr=0.05, momentum=0.9)
    conf = TrainConfig(epochs=2, batch_size=32, eval_every=100, progress=False,
                       max_steps=max_steps,
                       augment=RandomAugment(crop=2, flip=True) if augment else None)
    fit(m, CrossEntropyLoss(), opt, data, conf, out_dir=str(out), resume=resume,
        log=lambda s: None)
    return m.state_dict()


def test_resume_with_augmentation_is_bit_exact(small, tmp_path):
    whole = _fit_aug(small, tmp_path / "whole")
    _fit_aug(small, tmp_path / "split", max_steps=13)        # stops inside epoch 2
    resumed = _fit_aug(small, tmp_path / "split", resume=True)
    plain = _fit_aug(small, tmp_path / "plain", augment=False)
    for k in whole:
        np.testing.assert_array_equal(whole[k], resumed[k], err_msg=k)
    assert any(not np.array_equal(whole[k], plain[k]) for k in whole)


@pytest.mark.gpu
def test_augmentation_is_the_same_on_the_gpu(rng):
    import cupy
    x = rng.random((40, 3, 8, 8)).astype(np.float32)
    got = augment_batch(cupy.asarray(x), 987654321, 7, 3, True)
    np.testing.assert_array_equal(cupy.asnumpy(got), augment_batch(x, 987654321, 7, 3, True))


def test_cli_resume_uses_the_recorded_augmentation(tmp_path, rng):
    xtr, ytr = _split(rng, 120, (10, 10))
    xte, yte = _split(rng, 20, (10, 10))
    data = tmp_path / "d.npz"
    np.savez(data, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)

    def train(out, *extra):
        r = CliRunner().invoke(main, ["train", "--model", "model4", "--dataset", f"npz:{data}",
                                      "--val-size", "0.1", "--eval-every", "50",
                                      "--batch-size", "16", "--no-progress", "--device", "cpu",
                                      "--augment-crop", "2", "--augment-flip", "--out", str(out),
                                      *extra])
        assert r.exit_code == 0, r.output
    train(tmp_path / "whole", "--epochs", "2")
    train(tmp_path / "split", "--epochs", "1")
    r = CliRunner().invoke(main, ["train", "--resume", str(tmp_path / "split"), "--epochs", "2",
                                  "--no-progress"])
    assert r.exit_code == 0, r.output
    a, b = np.load(tmp_path / "whole" / "weights.npz"), np.load(tmp_path / "split" / "weights.npz")
    assert set(a.files) == set(b.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
