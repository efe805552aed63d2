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

__all__ = ["atomic_savez", "load_npz", "META_KEY", "save_checkpoint", "load_checkpoint"]

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
        os.fchmod(fd, 0o666 & ~_umask())      # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None:   # name the file meant, not the
            e.filename = path                                 # temporary one
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


# -- training checkpoints -----------------------------------------------------------------------
# A checkpoint is one .npz: the model's state under "model/<key>", and a JSON skeleton in the
# metadata for everything else (train state, optimizer, each extension), whose arrays are
# stored beside the model's under their own prefixes.
CHECKPOINT_FORMAT = 2


def flatten_state(prefix: str, obj, arrays: dict):
    """Nested dicts/lists of arrays and scalars -> a JSON skeleton; arrays go into ``arrays``
    (copied to the host) under keys starting with ``prefix``."""
    if isinstance(obj, dict):
        return {"__dict__": {str(k): flatten_state(f"{prefix}/{k}", v, arrays)
                             for k, v in obj.items()}}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [flatten_state(f"{prefix}/{i}", v, arrays) for i, v in enumerate(obj)]}
    if hasattr(obj, "shape") and hasattr(obj, "dtype") and not isinstance(obj, np.generic):
        arrays[prefix] = obj.get() if hasattr(obj, "get") else np.asarray(obj)
        return {"__array__": prefix}
    if isinstance(obj, np.generic):
        obj = obj.item()
    return {"__value__": obj}


def unflatten_state(skel, arrays: dict):
    if "__dict__" in skel:
        return {k: unflatten_state(v, arrays) for k, v in skel["__dict__"].items()}
    if "__list__" in skel:
        return [unflatten_state(v, arrays) for v in skel["__list__"]]
    if "__array__" in skel:
        return arrays[skel["__array__"]]
    return skel["__value__"]


def save_checkpoint(path, model_state: dict, state: dict, optimizer_state: dict,
                    extensions: dict) -> None:
    """Write a training checkpoint atomically: ``model_state`` (a model's state_dict), the
    train ``state`` (plain values), the optimizer's state_dict and ``{name: state}`` of each
    extension."""
    arrays = {f"model/{k}": v for k, v in model_state.items()}
    meta = {"format": CHECKPOINT_FORMAT, "state": state,
            "optimizer": flatten_state("optim", optimizer_state, arrays),
            "extensions": {name: flatten_state(f"ext/{name}", s, arrays)
                           for name, s in extensions.items()}}
    atomic_savez(path, arrays, meta={"checkpoint": meta})


def load_checkpoint(path) -> dict:
    """Read a training checkpoint: ``{"model", "state", "optimizer", "extensions"}``.

    Checkpoints written before the extension-based loop (no "format" key) are converted: their
    history, best-so-far and schedule become the evaluation, early_stopping and lr_schedule
    extensions' states.
    """
    arrays, meta = load_npz(path, with_meta=True)
    if "checkpoint" not in meta:
        raise ValueError(f"{path}: not a gpunn training checkpoint")
    meta = meta["checkpoint"]
    model = {k[6:]: v for k, v in arrays.items() if k.startswith("model/")}
    optimizer = unflatten_state(meta["optimizer"], arrays)
    if meta.get("format") == CHECKPOINT_FORMAT:
        extensions = {k: unflatten_state(v, arrays) for k, v in meta["extensions"].items()}
        return {"model": model, "state": meta["state"], "optimizer": optimizer,
                "extensions": extensions}
    return _from_format_1(meta, arrays, model, optimizer)


def _from_format_1(meta, arrays, model, optimizer) -> dict:
    old = meta["state"]
    best = {k[5:]: v for k, v in arrays.items() if k.startswith("best/")} or None
    extensions = {
        "evaluation": {"history": meta["history"]},
        "early_stopping": {"monitor": meta.get("monitor"), "best_value": old["best_value"],
                           "best_samples": old["best_samples"], "bad_evals": old["bad_evals"],
                           "best_state": best},
    }
    if meta.get("scheduler"):
        extensions["lr_schedule"] = unflatten_state(meta["scheduler"], arrays)
    state = {k: old[k] for k in ("epoch", "batch", "step", "samples", "since_eval", "seconds")}
    return {"model": model, "state": state, "optimizer": optimizer, "extensions": extensions}
