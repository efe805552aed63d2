"""Readers for the file formats of the MNIST family (IDX), CIFAR-10 (python batches) and .npz.

Every reader validates what it reads and names the file in its errors: a truncated download
or a mislabelled file fails here, not as a strange shape deep inside training.
"""
from __future__ import annotations

import gzip
import pickle

import numpy as np

__all__ = ["DataFormatError", "read_idx", "write_idx", "read_cifar10_batch", "read_npz",
           "read_npz_split", "read_idx_dir", "open_maybe_gzip", "to_nchw", "check_images",
           "check_labels"]

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class DataFormatError(ValueError):
    """A data file is malformed (message names the file and what is wrong)."""


def open_maybe_gzip(path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic (not by extension)."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataFormatError(f"{path}: corrupt or truncated gzip data ({e})") from None
    return raw


def read_idx(path, expect_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or gzipped): magic 0x0000, dtype code, ndim, big-endian dims."""
    data = open_maybe_gzip(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataFormatError(f"{path}: not an IDX file (bad magic number "
                              f"{data[:4].hex() or 'empty file'})")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise DataFormatError(f"{path}: unknown IDX dtype code 0x{code:02x}")
    if expect_ndim is not None and ndim != expect_ndim:
        raise DataFormatError(f"{path}: expected an IDX file with {expect_ndim} dimension(s), "
                              f"found {ndim} (images have 3, labels 1: files swapped?)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFormatError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    need = int(np.prod(dims)) * dtype.itemsize
    have = len(data) - header
    if have != need:
        raise DataFormatError(f"{path}: header declares {dims} ({need} bytes of data) but the "
                              f"file holds {have} bytes ({'truncated' if have < need else 'trailing data'})")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` as IDX (gzipped when ``compress`` or the name ends in .gz)."""
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    a = np.asarray(array)
    code = codes.get(a.dtype.newbyteorder("="))
    if code is None:
        raise TypeError(f"write_idx: unsupported dtype {a.dtype}")
    payload = bytes([0, 0, code, a.ndim]) + np.asarray(a.shape, dtype=">u4").tobytes() + \
        a.astype(np.dtype(_IDX_DTYPES[code])).tobytes()
    if compress or (compress is None and str(path).endswith(".gz")):
        payload = gzip.compress(payload)
    with open(path, "wb") as f:
        f.write(payload)


def read_cifar10_batch(path):
    """One CIFAR-10 python batch -> (images uint8 (N, 3, 32, 32), labels int64 (N,)).

    The format is a Python pickle: only open files from a source you trust (unpickling can run
    code). gpunn verifies the registry's checksums before it gets here.
    """
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError) as e:
        raise DataFormatError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise DataFormatError(f"{path}: a CIFAR-10 batch needs 'data' and 'labels' entries")
    x = np.asarray(d[b"data"], dtype=np.uint8)
    y = np.asarray(d[b"labels"], dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != 3072:
        raise DataFormatError(f"{path}: CIFAR-10 data must be (N, 3072), got {x.shape}")
    if len(y) != len(x):
        raise DataFormatError(f"{path}: {len(x)} images but {len(y)} labels")
    return x.reshape(-1, 3, 32, 32), y


def read_npz(path):
    """An .npz with arrays ``x``/``y`` or ``images``/``labels`` -> (images (N, C, H, W), labels).

    Images may be (N, H, W) (one channel), (N, C, H, W), or (N, H, W, C) with C in {1, 3, 4}
    (detected when the last axis is that small and the second is not).
    """
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataFormatError(f"{path}: not a readable .npz file ({e})") from None
    with z:
        keys = set(z.files)
        for xk, yk in (("x", "y"), ("images", "labels")):
            if xk in keys and yk in keys:
                x, y = z[xk], z[yk]
                break
        else:
            raise DataFormatError(f"{path}: expected arrays x/y or images/labels, found "
                                  f"{', '.join(sorted(keys)) or 'none'}")
    x = to_nchw(x, f"{path}: images")
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(x):
        raise DataFormatError(f"{path}: labels must be (N,) with N = {len(x)}, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataFormatError(f"{path}: labels must be integers, got {y.dtype}")
    return np.ascontiguousarray(x), y.astype(np.int64)


def to_nchw(x, where: str) -> np.ndarray:
    """(N, H, W) -> (N, 1, H, W); (N, H, W, C) with C in {1, 3, 4} (when axis 1 is not such a
    size) -> (N, C, H, W); (N, C, H, W) as is."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        return x.transpose(0, 3, 1, 2)
    if x.ndim != 4:
        raise DataFormatError(f"{where} must be (N, H, W), (N, C, H, W) or (N, H, W, C), "
                              f"got shape {x.shape}")
    return x


def check_images(x, where: str) -> np.ndarray:
    """Images as uint8 (0..255, scaled to [0, 1] on loading) or float (used as stored): an
    integer array within 0..255 becomes uint8; other dtypes, NaN and inf are errors."""
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataFormatError(f"{where}: integer images must be in 0..255 (found "
                                  f"{x.min()}..{x.max()}); give uint8 pixels or float values")
        return x.astype(np.uint8)
    if not np.issubdtype(x.dtype, np.floating):
        raise DataFormatError(f"{where}: images must be uint8 or float, got {x.dtype}")
    if not np.isfinite(x).all():
        raise DataFormatError(f"{where}: images hold NaN or inf values")
    return x


def check_labels(y, n: int, where: str) -> np.ndarray:
    """Labels (n,) of integer class indices >= 0 -> int64."""
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise DataFormatError(f"{where}: labels must be (N,) with N = {n} (one per image), "
                              f"got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataFormatError(f"{where}: labels must be integers (class indices), got {y.dtype}")
    if len(y) and y.min() < 0:
        raise DataFormatError(f"{where}: labels must be >= 0, found {y.min()}")
    return y.astype(np.int64)


def class_names_for(names, labels, where: str) -> tuple:
    """The class names (given, or "0".."K-1" with K = max label + 1), checked against every
    label array in ``labels``: at least two classes, and every label a valid index."""
    top = max((int(y.max()) for y in labels if len(y)), default=-1)
    if names is None:
        names = tuple(str(k) for k in range(top + 1))
    else:
        names = tuple(str(n) for n in names)
        if top >= len(names):
            raise DataFormatError(f"{where}: a label is {top} but only {len(names)} class names "
                                  f"are given ({', '.join(names)})")
        if len(set(names)) != len(names):
            raise DataFormatError(f"{where}: class names repeat: {', '.join(names)}")
    if len(names) < 2:
        raise DataFormatError(f"{where}: needs at least two classes, got {len(names)} (labels "
                              f"up to {top})")
    return names


def read_npz_split(path):
    """An .npz with ``x_train``, ``y_train``, ``x_test``, ``y_test`` and optionally
    ``class_names`` (strings) -> (x_train, y_train, x_test, y_test, class_names).

    Images as in :func:`read_npz` (any of the three layouts, the same per-sample shape in
    both splits), uint8 or float; labels integer class indices below the number of classes.
    Every error names the file and the array.
    """
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataFormatError(f"{path}: not a readable .npz file ({e})") from None
    need = ("x_train", "y_train", "x_test", "y_test")
    with z:
        keys = set(z.files)
        missing = [k for k in need if k not in keys]
        if missing:
            raise DataFormatError(f"{path}: missing array(s) {', '.join(missing)} (found "
                                  f"{', '.join(sorted(keys)) or 'none'}); an npz: data set holds "
                                  "x_train, y_train, x_test, y_test and optionally class_names")
        extra = sorted(keys - set(need) - {"class_names"})
        if extra:
            raise DataFormatError(f"{path}: unexpected array(s) {', '.join(extra)}; an npz: data "
                                  "set holds x_train, y_train, x_test, y_test, class_names")
        arrays = {}
        for k in need + (("class_names",) if "class_names" in keys else ()):
            try:
                arrays[k] = z[k]
            except ValueError as e:          # object arrays need pickle, which is refused
                raise DataFormatError(f"{path}: array {k} cannot be read without pickle ({e}); "
                                      "save strings as np.array(names, dtype=str)") from None
    out = {}
    for split in ("train", "test"):
        x = check_images(to_nchw(arrays[f"x_{split}"], f"{path}: x_{split}"), f"{path}: x_{split}")
        y = check_labels(arrays[f"y_{split}"], len(x), f"{path}: y_{split}")
        out[split] = (x, y)
    (xtr, ytr), (xte, yte) = out["train"], out["test"]
    if len(xtr) == 0 or len(xte) == 0:
        raise DataFormatError(f"{path}: x_train and x_test must each hold at least one image "
                              f"(got {len(xtr)} and {len(xte)})")
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataFormatError(f"{path}: x_train images are {xtr.shape[1:]} (C, H, W) but x_test "
                              f"images are {xte.shape[1:]}")
    if (xtr.dtype == np.uint8) != (xte.dtype == np.uint8):
        raise DataFormatError(f"{path}: x_train is {xtr.dtype} but x_test is {xte.dtype}: both "
                              "uint8 pixels or both float, so they are scaled alike")
    names = None
    if "class_names" in arrays:
        cn = arrays["class_names"]
        if cn.ndim != 1 or cn.dtype.kind not in "US":
            raise DataFormatError(f"{path}: class_names must be a 1-d array of strings, got "
                                  f"{cn.dtype} {cn.shape}")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in cn.tolist()]
    names = class_names_for(names, (ytr, yte), f"{path}: class_names")
    return (np.ascontiguousarray(xtr), ytr, np.ascontiguousarray(xte), yte, names)


# Which IDX file of a folder is which: the split's word and the IDX rank in the name
# (train-images-idx3-ubyte, t10k-labels-idx1-ubyte.gz, train-images.idx3-ubyte, ...).
_IDX_ROLES = {"train_images": (("train",), "idx3"), "train_labels": (("train",), "idx1"),
              "test_images": (("t10k", "test"), "idx3"), "test_labels": (("t10k", "test"), "idx1")}


def find_idx_files(folder) -> dict:
    """role -> path of the four IDX files of an MNIST-format set in ``folder``."""
    import os
    if not os.path.isdir(folder):
        raise DataFormatError(f"{folder}: not a folder (idx:DIR names a folder holding the four "
                              "IDX files of an MNIST-format set)")
    names = sorted(f for f in os.listdir(folder) if not f.startswith("."))
    found, problems = {}, []
    for role, (words, rank) in _IDX_ROLES.items():
        hits = [f for f in names if rank in f.lower() and any(w in f.lower() for w in words)]
        if len(hits) == 1:
            found[role] = os.path.join(folder, hits[0])
        elif not hits:
            problems.append(f"no {role.replace('_', ' ')} file (a name with "
                            f"{' or '.join(words)} and {rank}, e.g. "
                            f"{'train' if 'train' in words else 't10k'}-"
                            f"{role.split('_')[1]}-{rank}-ubyte[.gz])")
        else:
            problems.append(f"several {role.replace('_', ' ')} files: {', '.join(hits)}")
    if problems:
        raise DataFormatError(f"{folder}: " + "; ".join(problems))
    return found


def read_idx_dir(folder):
    """The four IDX files in ``folder`` -> (x_train, y_train, x_test, y_test, class_names);
    class names from ``folder/class_names.txt`` (one a line) when present, else "0".."K-1"."""
    import os
    paths = find_idx_files(folder)
    out = []
    for split in ("train", "test"):
        ip, lp = paths[f"{split}_images"], paths[f"{split}_labels"]
        x = read_idx(ip, expect_ndim=3)
        y = read_idx(lp, expect_ndim=1)
        if len(x) != len(y):
            raise DataFormatError(f"{ip} holds {len(x)} images but {lp} holds {len(y)} labels")
        out += [check_images(x[:, None], ip), check_labels(y, len(x), lp)]
    xtr, ytr, xte, yte = out
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataFormatError(f"{paths['train_images']} images are {xtr.shape[2:]} but "
                              f"{paths['test_images']} images are {xte.shape[2:]}")
    names_file = os.path.join(folder, "class_names.txt")
    names = None
    if os.path.isfile(names_file):
        with open(names_file, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    names = class_names_for(names, (ytr, yte), names_file if names else folder)
    return xtr, ytr, xte, yte, names


def file_sha256(path) -> str:
    """SHA-256 of the file's content after gunzipping (so .gz and raw copies agree)."""
    import hashlib
    return hashlib.sha256(open_maybe_gzip(path)).hexdigest()

