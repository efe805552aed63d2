"""Image files: one image read with matplotlib's reader, and a folder of class sub-folders.

A folder data set (``--dataset folder:DIR``) is laid out as ImageFolder sets are::

    DIR/train/<class>/*.png        DIR/test/<class>/*.png

(.png, .jpg and .jpeg; other files are ignored). The class names are the sub-folder names,
sorted; train and test must have the same ones. Every image must have the size and channel
count of the first one read. Images become float32 NCHW in [0, 1]: grayscale -> 1 channel,
RGB -> 3; an alpha channel is dropped when the image is fully opaque and refused otherwise.

matplotlib reads through Pillow (a matplotlib dependency since 3.3), so no imaging library is
added; without Pillow the error says so.
"""
from __future__ import annotations

import os

import numpy as np

from .readers import DataFormatError

__all__ = ["IMAGE_EXTENSIONS", "read_image", "read_image_folder", "list_class_images"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def read_image(path) -> np.ndarray:
    """One image file -> float32 (C, H, W) in [0, 1], C = 1 (grayscale) or 3 (RGB)."""
    try:
        import matplotlib.image as mpimg
        a = mpimg.imread(path)
    except ImportError as e:
        raise DataFormatError(f"{path}: reading images needs Pillow, which matplotlib depends on "
                              f"but is not importable here ({e}); pip install pillow") from None
    except FileNotFoundError:
        raise DataFormatError(f"{path}: no such image file") from None
    except Exception as e:               # Pillow's UnidentifiedImageError, truncated files, ...
        raise DataFormatError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from None
    a = np.asarray(a)
    if a.dtype == np.uint8:              # JPEG comes as uint8; PNG as float in [0, 1]
        a = a.astype(np.float32) / np.float32(255)
    elif a.dtype == np.uint16:
        a = a.astype(np.float32) / np.float32(65535)
    elif np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32, copy=False)
    else:
        raise DataFormatError(f"{path}: unsupported pixel type {a.dtype}")
    if a.ndim == 2:
        return np.ascontiguousarray(a[None])
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise DataFormatError(f"{path}: unsupported image layout {a.shape}")
    if a.shape[2] in (2, 4):             # gray + alpha, RGBA
        if (a[..., -1] < 1).any():
            raise DataFormatError(f"{path}: the image has transparent pixels; save it without "
                                  "an alpha channel (gpunn does not guess a background)")
        a = a[..., :-1]
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def list_class_images(split_dir) -> dict:
    """class name -> sorted image paths, for each sub-folder of ``split_dir`` (sorted)."""
    if not os.path.isdir(split_dir):
        raise DataFormatError(f"{split_dir}: no such folder (a folder data set has DIR/train/"
                              "<class>/*.png and DIR/test/<class>/*.png)")
    classes = sorted(d for d in os.listdir(split_dir)
                     if not d.startswith(".") and os.path.isdir(os.path.join(split_dir, d)))
    if not classes:
        raise DataFormatError(f"{split_dir}: no class folders (expected {split_dir}/<class>/*.png)")
    out = {}
    for c in classes:
        d = os.path.join(split_dir, c)
        files = sorted(f for f in os.listdir(d)
                       if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise DataFormatError(f"{d}: empty class folder (no {', '.join(IMAGE_EXTENSIONS)} "
                                  "images)")
        out[c] = [os.path.join(d, f) for f in files]
    return out


def _read_split(per_class: dict, classes: tuple, shape: tuple | None, first: str | None):
    paths = [(p, k) for k, c in enumerate(classes) for p in per_class[c]]
    x = None
    y = np.array([k for _, k in paths], dtype=np.int64)
    for i, (p, _) in enumerate(paths):
        img = read_image(p)
        if shape is None:
            shape, first = img.shape, p
        if img.shape != shape:
            what = "channels" if img.shape[0] != shape[0] else "size"
            raise DataFormatError(
                f"{p}: image is {_describe(img.shape)} but {first} (the first image read) is "
                f"{_describe(shape)}: all images of a data set need the same {what}")
        if x is None:
            x = np.empty((len(paths), *shape), dtype=np.float32)
        x[i] = img
    return x, y, shape, first


def _describe(shape) -> str:
    c, h, w = shape
    return f"{w}x{h} {'grayscale' if c == 1 else 'RGB'}"


def read_image_folder(root):
    """``root/train/<class>/*`` and ``root/test/<class>/*`` -> (x_train, y_train, x_test,
    y_test, class_names) with images float32 (N, C, H, W) in [0, 1] and int64 labels."""
    if not os.path.isdir(root):
        raise DataFormatError(f"{root}: no such folder (folder:DIR names a folder with train/ "
                              "and test/ sub-folders of class folders)")
    train = list_class_images(os.path.join(root, "train"))
    test = list_class_images(os.path.join(root, "test"))
    if set(train) != set(test):
        only_tr, only_te = sorted(set(train) - set(test)), sorted(set(test) - set(train))
        raise DataFormatError(
            f"{root}: train/ and test/ have different classes (only in train: "
            f"{', '.join(only_tr) or 'none'}; only in test: {', '.join(only_te) or 'none'})")
    classes = tuple(train)
    if len(classes) < 2:
        raise DataFormatError(f"{root}: needs at least two class folders, found {classes[0]!r}")
    xtr, ytr, shape, first = _read_split(train, classes, None, None)
    xte, yte, _, _ = _read_split(test, classes, shape, first)
    return xtr, ytr, xte, yte, classes
