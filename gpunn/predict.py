"""Predict with a trained run: image files (PNG, JPEG) or .npz arrays -> top-k classes.

Inputs are prepared as the run's data were: image files are read as float in [0, 1]
(gpunn/data/folder.py), uint8 arrays are divided by 255 and float arrays used as stored, then
standardised with the training split's mean and std when the run used ``--standardize``
(recorded in config.json's ``data_info``).

An input whose size differs from the model's is resized when its aspect ratio is the model's:
``bilinear`` (the default) is a separable triangle filter on pixel centres, widened by the
scale when shrinking so that every input pixel contributes (Pillow's BILINEAR resize does the
same); ``nearest`` takes the pixel under each output pixel's centre; ``none`` refuses. Other
aspect ratios and channel counts that differ from the model's are refused with a message that
says what to change.
"""
from __future__ import annotations

import math

import numpy as np

from .data.folder import IMAGE_EXTENSIONS, read_image
from .data.readers import to_nchw, check_images

__all__ = ["PredictError", "Predictor", "load_inputs", "fit_to_model", "resize", "softmax"]

RESIZE = ("bilinear", "nearest", "none")


class PredictError(ValueError):
    """An input cannot be fed to the model (the message names the input and what differs)."""


# -- inputs -------------------------------------------------------------------------------------
def load_inputs(path) -> list:
    """[(name, image (C, H, W), from_uint8)] from an image file or an .npz.

    An .npz holds one array, or arrays named ``x`` or ``images`` (``y``/``labels`` beside them
    are ignored), laid out (N, H, W), (N, C, H, W) or (N, H, W, C) as for training, or one
    (H, W) grayscale image. Names are the file, and ``file[i]`` for the images of an .npz.
    """
    path = str(path)
    low = path.lower()
    if low.endswith(IMAGE_EXTENSIONS):
        return [(path, read_image(path), False)]
    if not low.endswith(".npz"):
        raise PredictError(f"{path}: give an image ({', '.join(IMAGE_EXTENSIONS)}) or an .npz")
    try:
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise PredictError(f"{path}: no such file") from None
    except (ValueError, OSError, EOFError) as e:
        raise PredictError(f"{path}: not a readable .npz file ({e})") from None
    with z:
        keys = [k for k in z.files if k not in ("y", "labels")]
        key = next((k for k in ("x", "images") if k in keys), keys[0] if len(keys) == 1 else None)
        if key is None:
            raise PredictError(f"{path}: which array holds the images? found "
                               f"{', '.join(z.files) or 'none'}; name it x or images")
        x = z[key]
    where = f"{path}: {key}"
    if x.ndim == 2:
        x = x[None]
    x = check_images(to_nchw(x, where), where)
    from_uint8 = x.dtype == np.uint8
    if from_uint8:                                   # pixels, scaled as training scales them
        x = x.astype(np.float32) / np.float32(255)
    return [(f"{path}[{i}]", x[i], from_uint8) for i in range(len(x))]


# -- fitting the model's input ------------------------------------------------------------------
def _weights(n_in: int, n_out: int, method: str) -> np.ndarray:
    """(n_out, n_in) resampling matrix along one axis (pixel i covers [i, i + 1))."""
    scale = n_in / n_out
    centres = (np.arange(n_out) + 0.5) * scale                   # in input pixel units
    if method == "nearest":
        w = np.zeros((n_out, n_in))
        w[np.arange(n_out), np.minimum(centres.astype(np.int64), n_in - 1)] = 1
        return w
    support = max(scale, 1.0)                                    # antialias when shrinking
    d = ((np.arange(n_in) + 0.5)[None, :] - centres[:, None]) / support
    w = np.maximum(0.0, 1.0 - np.abs(d))
    return w / w.sum(axis=1, keepdims=True)


def resize(img, h: int, w: int, method: str = "bilinear") -> np.ndarray:
    """Resize (C, H, W) to (C, h, w), ``bilinear`` or ``nearest`` (see the module docstring);
    float64 arithmetic, the input's dtype out."""
    if method not in ("bilinear", "nearest"):
        raise ValueError(f"resize: method must be bilinear or nearest, got {method!r}")
    c, h0, w0 = img.shape
    wy, wx = _weights(h0, h, method), _weights(w0, w, method)
    out = np.einsum("yi,cij,xj->cyx", wy, img.astype(np.float64), wx)
    return out.astype(img.dtype)


def _describe(shape) -> str:
    c, h, w = shape
    return f"{w}x{h} {'grayscale' if c == 1 else 'RGB' if c == 3 else f'{c}-channel'}"


def fit_to_model(img, input_shape, name: str, method: str = "bilinear"):
    """``img`` (C, H, W) as the model's per-sample input: (image, resized_from or None)."""
    if img.ndim != 3:
        raise PredictError(f"{name}: expected an image (C, H, W), got shape {img.shape}")
    c, h, w = (int(s) for s in input_shape)
    if img.shape[0] != c:
        hint = ("convert it to grayscale first" if c == 1 else
                "convert it to RGB first" if c == 3 else f"give it {c} channels")
        raise PredictError(f"{name}: the image is {_describe(img.shape)} but the model takes "
                           f"{_describe(input_shape)} input: {hint}")
    if img.shape[1:] == (h, w):
        return img, None
    h0, w0 = img.shape[1:]
    if h0 * w != w0 * h:
        g = math.gcd(w, h)
        raise PredictError(f"{name}: the image is {w0}x{h0} but the model takes {w}x{h}, a "
                           f"different aspect ratio ({w0 / h0:.3g} vs {w / h:.3g}); crop it to "
                           f"{w // g}:{h // g} first (gpunn does not guess which part matters)")
    if method == "none":
        raise PredictError(f"{name}: the image is {w0}x{h0} but the model takes {w}x{h} "
                           "(use --resize bilinear or nearest to resize it)")
    return resize(img, h, w, method), (h0, w0)


def softmax(logits) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# -- the run ------------------------------------------------------------------------------------
class Predictor:
    """A run's model with the run's input preparation.

    ``Predictor(run).predict(["shoe.png", "more.npz"], top_k=3)`` returns one dict per image:
    ``{"input", "top": [{"class", "index", "probability"}], "resized_from": [h, w] | None}``.
    """

    def __init__(self, run_dir, *, device="cpu", weights: str = "weights.npz"):
        from .backend import resolve_device
        from .runs import load_model, run_config

        self.cfg = run_config(run_dir)
        self.device = resolve_device(device)
        self.model = load_model(run_dir, device=self.device, weights=weights)
        info = self.cfg.data_info
        self.input_shape = tuple(info["input_shape"])
        self.class_names = tuple(info["class_names"])
        self.dtype = np.dtype(self.cfg.dtype)
        self.stats = (info["mean"], info["std"]) if self.cfg.standardize else None
        self.float_data = info.get("pixel_scale") is None     # trained on floats as stored
        self.warnings = []

    def prepare(self, paths, resize: str = "bilinear"):
        """(batch (N, C, H, W) in the run's dtype, names, resized_from per image)."""
        if resize not in RESIZE:
            raise ValueError(f"resize must be one of {', '.join(RESIZE)}, got {resize!r}")
        images, names, sizes = [], [], []
        for p in paths:
            for name, img, from_uint8 in load_inputs(p):
                if self.float_data and (from_uint8 or not str(p).lower().endswith(".npz")):
                    self._warn("the run trained on float arrays used as stored; this input is "
                               "scaled to [0, 1], so predictions mean something only if the "
                               "training arrays were in [0, 1] too")
                img, was = fit_to_model(img, self.input_shape, name, resize)
                images.append(img.astype(np.float64))
                names.append(name)
                sizes.append(None if was is None else list(was))
        if not images:
            raise PredictError("no inputs given")
        x = np.stack(images)
        if self.stats is not None:
            mean, std = self.stats
            x = (x - mean) / std
        return x.astype(self.dtype), names, sizes

    def _warn(self, msg):
        if msg not in self.warnings:
            self.warnings.append(msg)

    def probabilities(self, x, batch_size: int = 256) -> np.ndarray:
        from .backend import to_device, to_numpy

        out = []
        for i in range(0, len(x), batch_size):
            xb = to_device(x[i:i + batch_size], self.device)
            out.append(softmax(to_numpy(self.model.forward(xb, train=False))))
            if hasattr(self.model, "release_caches"):
                self.model.release_caches()
        return np.concatenate(out)

    def predict(self, paths, top_k: int = 3, resize: str = "bilinear") -> list:
        x, names, sizes = self.prepare(paths, resize)
        probs = self.probabilities(x)
        k = max(1, min(int(top_k), len(self.class_names)))
        rows = []
        for name, p, was in zip(names, probs, sizes):
            order = np.argsort(-p, kind="stable")[:k]
            rows.append({"input": name, "resized_from": was,
                         "top": [{"class": self.class_names[j], "index": int(j),
                                  "probability": float(p[j])} for j in order]})
        return rows


def format_rows(rows) -> str:
    """One line per input: name, top classes with percentages, and a resize note."""
    width = max(len(r["input"]) for r in rows)
    lines = []
    for r in rows:
        top = "  ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in r["top"])
        note = f"  (resized from {r['resized_from'][1]}x{r['resized_from'][0]})" \
            if r["resized_from"] else ""
        lines.append(f"{r['input']:<{width}}  {top}{note}")
    return "\n".join(lines)
