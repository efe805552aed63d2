"""``load_dataset``: a named data set as arrays ready to train on.

Images are float (float32 by default) NCHW scaled to [0, 1] (optionally standardised with the
training split's mean and std); labels are int64 class indices. A validation split is taken
from the training set by a seeded permutation.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .readers import DataFormatError, read_cifar10_batch, read_idx, read_npz
from .registry import DatasetNotFound, get_info, locate_dataset, parse_own, verify_file
from .synthetic import make_synthetic

__all__ = ["Dataset", "load_dataset", "split_validation"]


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray            # (N, C, H, W) float
    y_train: np.ndarray            # (N,) int64
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple
    source: str = ""
    mean: float | None = None      # standardisation statistics, when applied
    std: float | None = None
    pixel_scale: float | None = 255.0   # uint8 pixels were divided by this; None: float as stored

    @property
    def input_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def split_validation(x, y, val_size, seed: int = 0):
    """Split off ``val_size`` samples (an int, or a fraction if < 1) by a seeded permutation;
    returns (x_train, y_train, x_val, y_val)."""
    n = len(x)
    k = int(round(val_size * n)) if 0 < val_size < 1 else int(val_size)
    if k < 0 or k >= n:
        raise ValueError(f"val_size must leave training samples: got {val_size} of {n} "
                         f"(a fraction such as --val-size 0.1 takes a tenth)")
    if k == 0:
        return x, y, None, None
    perm = np.random.default_rng(seed).permutation(n)
    tr, va = np.sort(perm[k:]), np.sort(perm[:k])
    return x[tr], y[tr], x[va], y[va]


def _read_idx_set(name, paths):
    def pair(img_role, lab_role):
        x = read_idx(paths[img_role], expect_ndim=3)
        y = read_idx(paths[lab_role], expect_ndim=1)
        if len(x) != len(y):
            raise DataFormatError(f"{paths[img_role]} holds {len(x)} images but "
                                  f"{paths[lab_role]} holds {len(y)} labels")
        return x[:, None], y.astype(np.int64)
    xtr, ytr = pair("train_images", "train_labels")
    xte, yte = pair("test_images", "test_labels")
    return xtr, ytr, xte, yte


def _read_cifar(paths):
    parts = [read_cifar10_batch(paths[f"data_batch_{i}"]) for i in range(1, 6)]
    xte, yte = read_cifar10_batch(paths["test_batch"])
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            xte, yte)


def _read_own(kind, path):
    from .folder import read_image_folder
    from .readers import read_idx_dir, read_npz_split

    reader = {"npz": read_npz_split, "idx": read_idx_dir, "folder": read_image_folder}[kind]
    if not os.path.exists(path):
        raise DatasetNotFound(f"data set {kind}:{path}: {path} does not exist")
    return reader(path)


def load_dataset(name: str, *, data_dir=None, val_size: float = 5000, seed: int = 0,
                 standardize: bool = False, dtype=np.float32, verify: bool = True,
                 synthetic_sizes=(6000, 1000), synthetic_channels: int = 1) -> Dataset:
    """Load a registered data set (see ``gpunn datasets``) or your own.

    Your own data: ``"npz:FILE"`` (arrays x_train, y_train, x_test, y_test and optionally
    class_names), ``"idx:DIR"`` (the four IDX files of an MNIST-format set, class names from
    DIR/class_names.txt if present), ``"folder:DIR"`` (DIR/train/<class>/*.png and
    DIR/test/<class>/*.png, gpunn/data/folder.py). A bare path ending in .npz holding x/y or
    images/labels is a single set, split into train/validation/test by ``val_size`` twice.
    uint8 pixels are scaled to [0, 1]; float images are used as stored.
    """
    dtype = np.dtype(dtype)
    source = ""
    own = parse_own(name)
    if own:
        xtr, ytr, xte, yte, classes = _read_own(*own)
        source = own[1]
    elif str(name).endswith(".npz"):
        x, y = read_npz(name)
        xtr, ytr, xte, yte = split_validation(x, y, max(1, len(x) // 6), seed=seed + 1)
        classes = tuple(str(k) for k in range(int(y.max()) + 1))
        source = str(name)
    else:
        info = get_info(name)
        classes = info.class_names
        if info.kind == "synthetic":
            ntr, nte = synthetic_sizes
            xtr, ytr = make_synthetic(ntr, seed=seed, channels=synthetic_channels)
            xte, yte = make_synthetic(nte, seed=seed + 10_000, channels=synthetic_channels)
            source = f"generated (seed {seed})"
        else:
            paths = locate_dataset(name, data_dir)
            if verify:
                for role, p in paths.items():
                    verify_file(info, role, p)
            if info.kind == "idx":
                xtr, ytr, xte, yte = _read_idx_set(name, paths)
            else:
                xtr, ytr, xte, yte = _read_cifar(paths)
            source = os.path.dirname(next(iter(paths.values())))
        for y_, what in ((ytr, "training"), (yte, "test")):
            if len(y_) and (y_.min() < 0 or y_.max() >= len(classes)):
                raise DataFormatError(f"{name}: {what} labels outside [0, {len(classes)}) "
                                      f"(min {y_.min()}, max {y_.max()})")
    xtr_, ytr_, xva, yva = split_validation(xtr, ytr, val_size, seed=seed)

    def scale(a):
        if a is None:
            return None
        out = a.astype(dtype)
        if a.dtype == np.uint8:
            out /= dtype.type(255)
        return out
    ds = Dataset(str(name), scale(xtr_), ytr_, scale(xva), yva, scale(xte), yte.astype(np.int64),
                 tuple(classes), source, pixel_scale=255.0 if xtr.dtype == np.uint8 else None)
    if standardize:
        ds.mean, ds.std = float(ds.x_train.mean()), float(ds.x_train.std()) or 1.0
        for attr in ("x_train", "x_val", "x_test"):
            a = getattr(ds, attr)
            if a is not None:
                a -= dtype.type(ds.mean)
                a /= dtype.type(ds.std)
    return ds
