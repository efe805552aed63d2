"""Readers for the file formats of the MNIST family (IDX), CIFAR-10 (python batches) and .npz.

Every reader validates what it reads and names the file in its errors: a truncated download
or a mislabelled file fails here, not as a strange shape deep inside training.
"""
from __future__ import annotations

import gzip
import pickle

import numpy as np

__all__ = ["DataFormatError", "read_idx", "write_idx", "read_cifar10_batch", "read_npz",
           "open_maybe_gzip"]

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
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise DataFormatError(f"{path}: images must be (N, H, W), (N, C, H, W) or (N, H, W, C), "
                              f"got shape {x.shape}")
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(x):
        raise DataFormatError(f"{path}: labels must be (N,) with N = {len(x)}, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataFormatError(f"{path}: labels must be integers, got {y.dtype}")
    return np.ascontiguousarray(x), y.astype(np.int64)


def file_sha256(path) -> str:
    """SHA-256 of the file's content after gunzipping (so .gz and raw copies agree)."""
    import hashlib
    return hashlib.sha256(open_maybe_gzip(path)).hexdigest()

