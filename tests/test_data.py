"""Data: IDX / CIFAR / npz readers and their errors, registry, synthetic set, splits, loader."""
import gzip
import os
import pickle

import numpy as np
import pytest

from gpunn.data import (ChecksumError, DataFormatError, DataLoader, DatasetNotFound,
                        load_dataset, make_synthetic, read_cifar10_batch, read_idx, read_npz,
                        split_validation, write_idx)
from gpunn.data import registry
from gpunn.data.registry import DATASETS, locate_dataset, verify_file


@pytest.fixture
def fake_idx_dir(tmp_path, rng):
    """A tiny MNIST-style data set written as IDX files (train gzipped, test raw)."""
    d = tmp_path / "fashion-mnist"
    d.mkdir()
    xtr = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    ytr = rng.integers(0, 10, 30).astype(np.uint8)
    xte = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    yte = rng.integers(0, 10, 12).astype(np.uint8)
    write_idx(d / "train-images-idx3-ubyte.gz", xtr)
    write_idx(d / "train-labels-idx1-ubyte.gz", ytr)
    write_idx(d / "t10k-images-idx3-ubyte", xte)
    write_idx(d / "t10k-labels-idx1-ubyte", yte)
    return d, (xtr, ytr, xte, yte)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, rng, compress):
    for a in (rng.integers(0, 256, (5, 4, 3), dtype=np.uint8), rng.standard_normal((3, 2)).astype(np.float32),
              np.arange(7, dtype=np.int32)):
        p = tmp_path / f"a{a.ndim}.idx"
        write_idx(p, a, compress=compress)
        np.testing.assert_array_equal(read_idx(p), a)
        with open(p, "rb") as f:
            assert (f.read(2) == b"\x1f\x8b") == compress       # gzip detected by magic


def test_idx_errors_name_the_file(tmp_path, rng):
    good = tmp_path / "good.idx"
    write_idx(good, rng.integers(0, 256, (4, 5, 5), dtype=np.uint8))
    raw = good.read_bytes()
    cases = {
        "bad-magic.idx": (b"\x01\x02" + raw[2:], "bad magic number"),
        "truncated.idx": (raw[:-7], "truncated"),
        "trailing.idx": (raw + b"xx", "trailing data"),
        "bad-dtype.idx": (raw[:2] + b"\x42" + raw[3:], "unknown IDX dtype"),
        "empty.idx": (b"", "empty file"),
        "bad-gzip.idx.gz": (gzip.compress(raw)[:-20], "gzip"),
    }
    for name, (data, msg) in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(DataFormatError, match=msg) as e:
            read_idx(p)
        assert name in str(e.value)
    with pytest.raises(DataFormatError, match="1 dimension.*found 3.*swapped"):
        read_idx(good, expect_ndim=1)


def test_load_from_data_dir(fake_idx_dir, monkeypatch, tmp_path):
    d, (xtr, ytr, xte, yte) = fake_idx_dir
    monkeypatch.setenv("GPUNN_DATA", str(tmp_path / "empty-cache"))
    ds = load_dataset("fashion-mnist", data_dir=str(d), val_size=6, verify=False)
    assert ds.x_train.shape == (24, 1, 28, 28) and ds.x_val.shape == (6, 1, 28, 28)
    assert ds.x_test.dtype == np.float32 and ds.x_test.max() <= 1.0
    np.testing.assert_allclose(ds.x_test[:, 0] * 255, xte, atol=1e-4)
    np.testing.assert_array_equal(ds.y_test, yte)
    assert sorted(np.concatenate([ds.y_train, ds.y_val]).tolist()) == sorted(ytr.tolist())
    assert ds.class_names[0] == "T-shirt/top" and ds.num_classes == 10
    assert ds.input_shape == (1, 28, 28)


def test_checksum_mismatch_names_file(fake_idx_dir):
    d, _ = fake_idx_dir
    p = str(d / "train-images-idx3-ubyte.gz")
    with pytest.raises(ChecksumError, match=r"train-images-idx3-ubyte.gz: checksum mismatch.*expected sha256 c59f"):
        verify_file(DATASETS["fashion-mnist"], "train_images", p)
    with pytest.raises(ChecksumError):
        load_dataset("fashion-mnist", data_dir=str(d))


def test_count_mismatch(fake_idx_dir, rng):
    d, _ = fake_idx_dir
    write_idx(d / "t10k-labels-idx1-ubyte", rng.integers(0, 10, 11).astype(np.uint8))
    with pytest.raises(DataFormatError, match=r"12 images but .*t10k-labels-idx1-ubyte holds 11"):
        load_dataset("fashion-mnist", data_dir=str(d), verify=False, val_size=0)


def test_label_out_of_range(fake_idx_dir):
    d, _ = fake_idx_dir
    write_idx(d / "t10k-labels-idx1-ubyte", np.full(12, 10, np.uint8))
    with pytest.raises(DataFormatError, match=r"test labels outside \[0, 10\)"):
        load_dataset("fashion-mnist", data_dir=str(d), verify=False, val_size=0)


def test_missing_dataset_lists_every_way(monkeypatch, tmp_path):
    monkeypatch.setenv("GPUNN_DATA", str(tmp_path))
    monkeypatch.setattr(registry, "DATASETS", {**DATASETS, "fashion-mnist": registry.DatasetInfo(
        **{**DATASETS["fashion-mnist"].__dict__, "system_dirs": (str(tmp_path / "nowhere"),)})})
    with pytest.raises(DatasetNotFound) as e:
        locate_dataset("fashion-mnist")
    msg = str(e.value)
    for way in ("apt-get install dataset-fashion-mnist", "gpunn datasets --download fashion-mnist",
                "--data-dir", "$GPUNN_DATA"):
        assert way in msg
    with pytest.raises(ValueError, match="fashion-mnist, mnist, kmnist, cifar10, synthetic"):
        locate_dataset("imagenet")


def test_download_verifies_and_is_atomic(monkeypatch, tmp_path, fake_idx_dir):
    """Downloads through a stand-in opener (no network in tests): bad data is never kept."""
    src, _ = fake_idx_dir
    import io

    def opener(url, timeout):
        name = url.rsplit("/", 1)[1]
        p = src / name
        return io.BytesIO(p.read_bytes() if p.exists() else gzip.compress((src / name[:-3]).read_bytes()))
    monkeypatch.setenv("GPUNN_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(registry, "DATASETS", {**DATASETS, "mnist": DATASETS["mnist"]})
    path = registry.download_dataset("mnist", opener=opener)          # no checksum recorded
    assert sorted(os.listdir(path)) == sorted(f + ".gz" for f in DATASETS["mnist"].files.values())
    with pytest.raises(DatasetNotFound, match="checksum mismatch"):   # fashion has checksums
        registry.download_dataset("fashion-mnist", opener=opener)
    assert not os.path.exists(tmp_path / "cache" / "fashion-mnist" / "train-images-idx3-ubyte.gz")


def test_cifar_batch(tmp_path, rng):
    data = rng.integers(0, 256, (7, 3072), dtype=np.uint8)
    p = tmp_path / "data_batch_1"
    with open(p, "wb") as f:
        pickle.dump({b"data": data, b"labels": list(range(7))}, f)
    x, y = read_cifar10_batch(p)
    assert x.shape == (7, 3, 32, 32) and y.tolist() == list(range(7))
    np.testing.assert_array_equal(x[3, 1].reshape(-1), data[3, 1024:2048])
    with open(p, "wb") as f:
        pickle.dump({b"data": data[:, :100], b"labels": [0] * 7}, f)
    with pytest.raises(DataFormatError, match="data_batch_1.*3072"):
        read_cifar10_batch(p)


def test_npz_reader(tmp_path, rng):
    p = tmp_path / "letters.npz"
    np.savez(p, images=rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), labels=np.arange(20) % 10)
    x, y = read_npz(p)
    assert x.shape == (20, 1, 28, 28) and y.dtype == np.int64
    np.savez(p, x=np.zeros((5, 8, 8, 3), np.uint8), y=np.zeros(5, np.int32))
    assert read_npz(p)[0].shape == (5, 3, 8, 8)
    np.savez(p, a=np.zeros(3))
    with pytest.raises(DataFormatError, match="letters.npz: expected arrays x/y or images/labels"):
        read_npz(p)
    np.savez(p, images=np.zeros((20, 28, 28), np.uint8), labels=np.arange(20) % 10)
    ds = load_dataset(str(p), val_size=2)
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == 20


def test_synthetic_is_deterministic_and_learnable():
    a, la = make_synthetic(50, seed=3)
    b, lb = make_synthetic(50, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a, make_synthetic(50, seed=4)[0])
    assert a.shape == (50, 1, 28, 28) and a.dtype == np.uint8
    assert make_synthetic(4, channels=3, size=32)[0].shape == (4, 3, 32, 32)


def test_split_and_standardize():
    x = np.arange(100)
    xtr, ytr, xva, yva = split_validation(x, x, 0.2, seed=1)
    assert len(xva) == 20 and sorted(np.concatenate([xtr, xva]).tolist()) == list(range(100))
    assert np.array_equal(split_validation(x, x, 0.2, seed=1)[2], xva)
    with pytest.raises(ValueError, match="val_size"):
        split_validation(x, x, 100)
    ds = load_dataset("synthetic", val_size=100, standardize=True)
    assert abs(float(ds.x_train.mean())) < 1e-3 and abs(float(ds.x_train.std()) - 1) < 1e-3


def test_loader_covers_each_sample_once_per_epoch():
    x = np.arange(103, dtype=np.float32)[:, None]
    y = np.arange(103)
    dl = DataLoader(x, y, batch_size=10, shuffle=True, seed=5)
    assert len(dl) == 11
    e0 = np.concatenate([yb for _, yb in dl])
    assert sorted(e0.tolist()) == list(range(103))
    assert dl.epoch == 1                               # each pass moves on to the next epoch
    e1 = np.concatenate([yb for _, yb in dl])
    assert not np.array_equal(e0, e1) and sorted(e1.tolist()) == list(range(103))
    dl.epoch = 0
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in dl]), e0)   # replayable
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in dl.batches(1)]), e1)
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in dl.batches(1, start=3)]),
                                  e1[30:])             # a resumed epoch: the same batches on
    for xb, yb in dl:
        np.testing.assert_array_equal(xb[:, 0], yb.astype(np.float32))        # pairs stay aligned
    dl2 = DataLoader(x, y, batch_size=10, shuffle=False, drop_last=True)
    assert len(dl2) == 10 and [len(b[1]) for b in dl2] == [10] * 10
    with pytest.raises(ValueError, match="103 samples but y has 5"):
        DataLoader(x, y[:5], 10)


@pytest.mark.slow
def test_real_fashion_mnist():
    try:
        ds = load_dataset("fashion-mnist", val_size=0)
    except DatasetNotFound:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
