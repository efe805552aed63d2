""".npz files gpunn writes: weights (``Sequential.save``) and training checkpoints.

Every file is written to a temporary name beside the target, fsynced and renamed over it, so
a crash or a full disk never leaves half a file where a good one was. A JSON metadata entry
(``__gpunn_meta__``) carries the format name and whatever the writer adds.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

__all__ = ["atomic_savez", "load_npz", "META_KEY"]

FORMAT = "gpunn-state-v1"
META_KEY = "__gpunn_meta__"


def atomic_savez(path, arrays: dict, meta: dict | None = None) -> None:
    """``np.savez`` to a temporary file beside ``path``, fsync, then rename over ``path``."""
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"save: expected a path ending in .npz, got {path!r}")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    payload = dict(arrays)
    payload[META_KEY] = np.array(json.dumps({"format": FORMAT, **(meta or {})}))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_npz(path, with_meta: bool = False):
    """Read an .npz written by :func:`atomic_savez`; errors name the file and the problem."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such weights file: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npz weights file ({type(e).__name__}: {e})") from None
    meta = {}
    if META_KEY in arrays:
        try:
            meta = json.loads(str(arrays.pop(META_KEY)))
        except json.JSONDecodeError:
            raise ValueError(f"{path}: corrupt gpunn metadata") from None
    return (arrays, meta) if with_meta else arrays
