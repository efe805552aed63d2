"""Model specs: what ``--model`` may name, and how a run rebuilds its model later.

Three kinds of spec:

    zoo name        "model4"                   gpunn/zoo.py (``gpunn models`` lists them)
    Python file     "path/to/file.py:build"    ``build(input_shape, num_classes, rng, dtype)``
                                               returning a Sequential (":build" is the default)
    TOML file       "path/to/spec.toml"        ``[[layers]]`` tables, one per layer

A TOML spec lists layers by type with their keyword arguments; the sizes a layer takes from
its input (``in_channels``, ``in_features``, ``num_features``) are inferred from the previous
layer's output shape, and ``"num_classes"`` stands for the data set's class count::

    [[layers]]
    type = "Conv2d"
    out_channels = 16
    kernel_size = 3
    padding = "same"

    [[layers]]
    type = "Residual"            # nested blocks: [[layers.layers]] (and [[layers.shortcut]])
      [[layers.layers]]
      type = "Conv2d"
      out_channels = 16
      kernel_size = 3
      padding = "same"

    [[layers]]
    type = "Flatten"
    [[layers]]
    type = "Linear"
    out_features = "num_classes"

A run records where its model came from in ``config.json`` as ``model_source``
(:func:`model_source`): the TOML text itself, or the Python file's absolute path, function name,
SHA-256 and text. Rebuilding (eval, predict, export, :func:`gpunn.runs.load_model`) uses the
recorded TOML text, or re-imports the Python file after checking that its SHA-256 still matches.
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import re
import sys
import traceback

import numpy as np

from .errors import ShapeError
from .init import make_rng
from .model import Sequential

__all__ = ["ModelSpecError", "model_kind", "model_source", "build_from_spec", "build_from_toml",
           "build_from_source", "model_label"]

_PY_SPEC = re.compile(r"^(?P<path>.+\.py)(?::(?P<func>[A-Za-z_]\w*))?$")
_CLASSES_KEY = "num_classes"          # a TOML value that stands for the data set's class count
_RUN_ARGS = ("rng", "dtype")          # every layer that takes them gets the run's
_DROPOUT = "--dropout applies to zoo models; {} defines its own layers: add a Dropout layer there"


class ModelSpecError(ValueError):
    """A model file or TOML spec is wrong (the message names the file, layer and key)."""


# -- what a spec is -----------------------------------------------------------------------------
def model_kind(spec: str) -> str:
    """"zoo", "python" or "toml"; a ModelSpecError listing the forms for anything else."""
    from .zoo import MODELS

    spec = str(spec)
    if spec in MODELS:
        return "zoo"
    if spec.endswith(".toml"):
        return "toml"
    if _PY_SPEC.match(spec):
        return "python"
    raise ModelSpecError(f"unknown model {spec!r}; choose one of: {', '.join(MODELS)}, or a "
                         "file: path/to/file.py:build (a function build(input_shape, "
                         "num_classes, rng, dtype) returning a Sequential) or path/to/spec.toml")


def model_label(spec: str) -> str:
    """A short name for a spec (run directory names, plot titles): the zoo name or the file's
    stem ("nets/small.py:build" -> "small-build")."""
    kind = model_kind(spec)
    if kind == "zoo":
        return spec
    if kind == "toml":
        return os.path.splitext(os.path.basename(spec))[0]
    m = _PY_SPEC.match(spec)
    stem = os.path.splitext(os.path.basename(m["path"]))[0]
    return stem if not m["func"] or m["func"] == "build" else f"{stem}-{m['func']}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ModelSpecError(f"{what} {path} not found") from None
    except OSError as e:
        raise ModelSpecError(f"{what} {path} cannot be read: {e}") from None


def model_source(spec: str, dropout: float | None = None) -> dict | None:
    """What a run records about a file-defined model (None for a zoo name), checked as far as
    it can be without the data (the file is there, the TOML parses, no zoo-only ``dropout``).

    TOML: ``{"kind": "toml", "path", "text", "sha256"}``; Python: ``{"kind": "python",
    "path", "function", "sha256", "text"}`` with the absolute path.
    """
    kind = model_kind(spec)
    if kind == "zoo":
        return None
    if dropout is not None:
        raise ModelSpecError(_DROPOUT.format(spec))
    if kind == "toml":
        path = os.path.abspath(spec)
        raw = _read(path, "model spec")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ModelSpecError(f"{path}: not UTF-8 text ({e})") from None
        doc = _parse_toml(text, path)                    # fail now, not after loading data
        _Ctx(path, None, None, None).check_list(doc["layers"], "layers")
        return {"kind": "toml", "path": path, "text": text, "sha256": _sha256(raw)}
    m = _PY_SPEC.match(spec)
    path = os.path.abspath(m["path"])
    raw = _read(path, "model file")
    return {"kind": "python", "path": path, "function": m["func"] or "build",
            "sha256": _sha256(raw), "text": raw.decode("utf-8", errors="replace")}


# -- building -----------------------------------------------------------------------------------
def build_from_spec(spec: str, input_shape, num_classes: int, *, seed: int = 0,
                    dtype=np.float32, dropout: float | None = None) -> Sequential:
    """Build a zoo name, Python file or TOML file for ``input_shape`` (C, H, W) and
    ``num_classes``, checked to map the input to ``(num_classes,)`` logits."""
    return build_from_source(spec, model_source(spec), input_shape, num_classes, seed=seed,
                             dtype=dtype, dropout=dropout)


def build_from_source(spec: str, source: dict | None, input_shape, num_classes: int, *,
                      seed: int = 0, dtype=np.float32, dropout: float | None = None,
                      where: str = "the run's config.json") -> Sequential:
    """Rebuild a model from what a run recorded (``source`` from :func:`model_source`; None for
    the zoo). A Python file is re-imported only if its SHA-256 still matches the recorded one."""
    if source is None:
        from .zoo import build_model
        return build_model(spec, input_shape, num_classes, seed=seed, dtype=dtype,
                           dropout=dropout)
    if dropout is not None:
        raise ModelSpecError(_DROPOUT.format(source.get("path", spec)))
    kind = source.get("kind")
    if kind == "toml":
        return build_from_toml(source["text"], input_shape, num_classes, seed=seed, dtype=dtype,
                               where=source.get("path", "model spec"))
    if kind != "python":
        raise ModelSpecError(f"{where}: model_source has unknown kind {kind!r}")
    path = source["path"]
    if not os.path.isfile(path):
        raise ModelSpecError(
            f"the model file {path} recorded in {where} is gone (moved or deleted); put it back "
            "there (its text as trained is in config.json under model_source.text)")
    now = _sha256(_read(path, "model file"))
    if now != source["sha256"]:
        raise ModelSpecError(
            f"the model file {path} changed since the run was trained (sha256 recorded "
            f"{source['sha256'][:16]}..., now {now[:16]}...): the saved weights may not fit it; "
            "restore the file (its text as trained is in config.json under model_source.text)")
    return _build_from_python(path, source["function"], input_shape, num_classes, seed=seed,
                              dtype=dtype)


def _finish(model, input_shape, num_classes, where, name):
    try:
        out = model.output_shape(input_shape)
    except ShapeError as e:
        raise ModelSpecError(f"{where}: the model cannot take input {tuple(input_shape)}: {e}") from None
    if out != (int(num_classes),):
        raise ModelSpecError(f"{where}: the model maps input {tuple(input_shape)} to {out}, "
                             f"expected ({num_classes},) logits (the last layer's size should "
                             f"be the number of classes, \"{_CLASSES_KEY}\" in a TOML spec)")
    model.name = name
    return model


def _check_io(input_shape, num_classes, where):
    input_shape = tuple(int(s) for s in input_shape)
    if int(num_classes) < 2:
        raise ModelSpecError(f"{where}: num_classes must be >= 2, got {num_classes}")
    return input_shape, int(num_classes)


# -- Python files -------------------------------------------------------------------------------
def _user_frame(exc, path):
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if os.path.abspath(f.filename) == path]
    return f" (line {frames[-1].lineno}: {frames[-1].line})" if frames else ""


def _build_from_python(path, function, input_shape, num_classes, *, seed, dtype):
    where = f"{path}:{function}"
    input_shape, num_classes = _check_io(input_shape, num_classes, where)
    raw = _read(path, "model file")
    name = f"gpunn_user_model_{_sha256(raw)[:16]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    folder = os.path.dirname(path)
    sys.path.insert(0, folder)              # so the file can import modules beside it
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(name, None)
        raise ModelSpecError(f"{path}: importing it raised {type(e).__name__}: {e}"
                             f"{_user_frame(e, path)}") from e
    finally:
        if sys.path and sys.path[0] == folder:
            sys.path.pop(0)
    fn = getattr(module, function, None)
    if not callable(fn):
        found = sorted(k for k, v in vars(module).items()
                       if inspect.isfunction(v) and v.__module__ == name)
        raise ModelSpecError(f"{path} has no function {function!r} (functions defined there: "
                             f"{', '.join(found) or 'none'}); name one with {path}:NAME")
    rng, dt = make_rng(seed), np.dtype(dtype)
    args = _bind_builder(fn, where, input_shape, num_classes, rng, dt)
    try:
        out = fn(*args.args, **args.kwargs)
    except Exception as e:
        raise ModelSpecError(f"{where}({input_shape}, {num_classes}, rng, {dt}) raised "
                             f"{type(e).__name__}: {e}{_user_frame(e, path)}") from e
    from .layers.base import Layer
    if isinstance(out, (list, tuple)) and all(isinstance(l, Layer) for l in out):
        out = Sequential(*out)
    if not isinstance(out, Sequential):
        raise ModelSpecError(f"{where} returned {type(out).__name__}; it must return a "
                             "gpunn.Sequential (or a list of layers)")
    return _finish(out, input_shape, num_classes, where, os.path.basename(path))


def _bind_builder(fn, where, input_shape, num_classes, rng, dtype):
    sig = inspect.signature(fn)
    for attempt in (lambda: sig.bind(input_shape, num_classes, rng, dtype),
                    lambda: sig.bind(input_shape, num_classes, rng=rng, dtype=dtype)):
        try:
            return attempt()
        except TypeError:
            pass
    raise ModelSpecError(f"{where}{sig} cannot be called as build(input_shape, num_classes, "
                         "rng, dtype)")


# -- TOML specs ---------------------------------------------------------------------------------
def _parse_toml(text: str, where: str) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ModelSpecError(f"{where}: not valid TOML: {e}") from None
    unknown = sorted(set(doc) - {"layers", "name", "description", "input_shape"})
    if unknown:
        raise ModelSpecError(f"{where}: unknown top-level key(s) {', '.join(unknown)}; a model "
                             "spec has [[layers]] tables and optionally name, description, "
                             "input_shape")
    if not isinstance(doc.get("layers"), list) or not doc["layers"]:
        raise ModelSpecError(f"{where}: needs at least one [[layers]] table")
    return doc


def build_from_toml(text_or_path: str, input_shape, num_classes: int, *, seed: int = 0,
                    dtype=np.float32, where: str | None = None) -> Sequential:
    """Build a TOML model spec (its text, or a path ending in .toml)."""
    if where is None and str(text_or_path).endswith(".toml") and "\n" not in str(text_or_path):
        where = os.path.abspath(text_or_path)
        text = _read(where, "model spec").decode("utf-8")
    else:
        text, where = text_or_path, where or "model spec"
    doc = _parse_toml(text, where)
    input_shape, num_classes = _check_io(input_shape, num_classes, where)
    if "input_shape" in doc and tuple(doc["input_shape"]) != input_shape:
        raise ModelSpecError(f"{where}: declares input_shape = {list(doc['input_shape'])} but "
                             f"the data's input is {list(input_shape)}")
    ctx = _Ctx(where, make_rng(seed), np.dtype(dtype), num_classes)
    layers, _ = ctx.build_list(doc["layers"], input_shape, "layers")
    model = Sequential(*layers)
    name = doc.get("name") or os.path.splitext(os.path.basename(where))[0]
    return _finish(model, input_shape, num_classes, where, str(name))


# The constructor argument each layer type takes from its per-sample input shape, and the
# input rank it needs for it.
_INFERRED = {"Conv2d": ("in_channels", 3), "Linear": ("in_features", 1),
             "BatchNorm2d": ("num_features", 3), "BatchNorm1d": ("num_features", 1)}
_CONTAINERS = {"Residual"}


def _layer_types() -> dict:
    from . import layers
    return {n: getattr(layers, n) for n in layers.__all__ if n != "Layer"}


class _Ctx:
    def __init__(self, where, rng, dtype, num_classes):
        self.where, self.rng, self.dtype, self.num_classes = where, rng, dtype, num_classes
        self.types = _layer_types()

    def fail(self, at, kind, msg):
        return ModelSpecError(f"{self.where}: {at}{f' ({kind})' if kind else ''}: {msg}")

    def build_list(self, tables, shape, at):
        if not isinstance(tables, list) or not tables:
            raise self.fail(at, None, "must be a non-empty list of layer tables ([[...]])")
        out = []
        for i, t in enumerate(tables):
            layer, shape = self.build_one(t, shape, f"{at}[{i}]")
            out.append(layer)
        return out, shape

    def check_list(self, tables, at):
        """Types and keys of every table, before any shape is known (fails fast on typos)."""
        if not isinstance(tables, list) or not tables:
            raise self.fail(at, None, "must be a non-empty list of layer tables ([[...]])")
        for i, t in enumerate(tables):
            kind, kw = self.check_table(t, f"{at}[{i}]")
            if kind in _CONTAINERS:
                for k in ("layers", "shortcut"):
                    if k in kw:
                        self.check_list(kw[k], f"{at}[{i}].{k}")

    def check_table(self, table, at):
        if not isinstance(table, dict):
            raise self.fail(at, None, f"must be a table with a type, got {table!r}")
        kind = table.get("type")
        if kind is None:
            raise self.fail(at, None, "has no type (e.g. type = \"Conv2d\")")
        if kind not in self.types:
            raise self.fail(at, None, f"unknown layer type {kind!r}; known: "
                            f"{', '.join(self.types)}")
        kw = {k: v for k, v in table.items() if k != "type"}
        if kind in _CONTAINERS:
            self.check_container_keys(kind, kw, at)
        else:
            self.check_layer_keys(kind, kw, at)
        return kind, kw

    def build_one(self, table, shape, at):
        kind, kw = self.check_table(table, at)
        layer = (self.build_container(kind, kw, shape, at) if kind in _CONTAINERS
                 else self.build_layer(kind, kw, shape, at))
        try:
            return layer, layer.output_shape(shape)
        except ShapeError as e:
            raise self.fail(at, kind, f"cannot take per-sample input {shape}: {e}") from None

    def _params(self, kind):
        return {n: p for n, p in inspect.signature(self.types[kind].__init__).parameters.items()
                if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}

    def check_layer_keys(self, kind, kw, at):
        params = self._params(kind)
        allowed = [n for n in params if n not in _RUN_ARGS]
        for k in kw:
            if k in _RUN_ARGS:
                raise self.fail(at, kind, f"{k!r} comes from the run (--seed, --dtype), not the "
                                "spec")
            if k not in params:
                raise self.fail(at, kind, f"unknown key {k!r}; {kind} takes: "
                                f"{', '.join(allowed) or 'no arguments'}")
        inferred = _INFERRED.get(kind, (None,))[0]
        missing = [n for n, p in params.items() if p.default is p.empty and n not in kw
                   and n not in _RUN_ARGS and n != inferred]
        if missing:
            raise self.fail(at, kind, f"missing {', '.join(missing)}")

    def build_layer(self, kind, kw, shape, at):
        params = self._params(kind)
        kw = {k: self.value(v, at, kind, k) for k, v in kw.items()}
        if kind in _INFERRED:
            name, rank = _INFERRED[kind]
            if len(shape) != rank:
                hint = " (add a Flatten before it)" if rank == 1 else ""
                raise self.fail(at, kind, f"gets per-sample input {shape} but takes "
                                f"{'(features,)' if rank == 1 else '(C, H, W)'}{hint}")
            if name in kw and kw[name] != shape[0]:
                raise self.fail(at, kind, f"{name} = {kw[name]!r} but the previous layer gives "
                                f"{shape[0]} (leave {name} out: it is inferred)")
            kw[name] = shape[0]
        for k in _RUN_ARGS:
            if k in params:
                kw[k] = self.rng if k == "rng" else self.dtype
        try:
            return self.types[kind](**kw)
        except (ValueError, TypeError) as e:
            raise self.fail(at, kind, str(e)) from None

    def check_container_keys(self, kind, kw, at):
        takes_shortcut = "shortcut" in inspect.signature(self.types[kind].__init__).parameters
        allowed = ["layers"] + (["shortcut"] if takes_shortcut else [])
        for k in kw:
            if k not in allowed:
                raise self.fail(at, kind, f"unknown key {k!r}; {kind} takes: "
                                f"{', '.join(allowed)} (lists of [[{at.split('[')[0]}.layers]] "
                                "tables)")
        if "layers" not in kw:
            raise self.fail(at, kind, "needs its block as [[...layers]] tables")

    def build_container(self, kind, kw, shape, at):
        block, _ = self.build_list(kw["layers"], shape, f"{at}.layers")
        extra = {}
        if "shortcut" in kw:
            extra["shortcut"], _ = self.build_list(kw["shortcut"], shape, f"{at}.shortcut")
        try:
            return self.types[kind](*block, **extra)
        except (ValueError, TypeError) as e:
            raise self.fail(at, kind, str(e)) from None

    def value(self, v, at, kind, key):
        if v == _CLASSES_KEY:
            return self.num_classes
        if isinstance(v, list):
            if not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in v):
                raise self.fail(at, kind, f"{key} = {v!r}: a list must hold numbers")
            return tuple(v)
        if isinstance(v, dict):
            raise self.fail(at, kind, f"{key} is a table; layer arguments are numbers, "
                            "strings, booleans or lists of numbers")
        return v
