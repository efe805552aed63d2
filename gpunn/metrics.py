"""Classification metrics on host arrays (CuPy inputs are copied over once)."""
from __future__ import annotations

import numpy as np

from .backend import to_numpy

__all__ = ["accuracy", "confusion_matrix", "per_class_metrics", "most_confused_pairs"]


def _labels(a, what):
    a = np.asarray(to_numpy(a))
    if a.ndim == 2:                      # logits or one-hot rows -> class indices
        a = a.argmax(axis=1)
    if a.ndim != 1:
        raise ValueError(f"{what} must be (N,) class indices or (N, K) scores, got shape {a.shape}")
    return a.astype(np.int64)


def accuracy(y_true, y_pred) -> float:
    """Share of predictions equal to the labels (y_pred may be (N, K) scores)."""
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if len(t) != len(p):
        raise ValueError(f"accuracy: {len(t)} labels but {len(p)} predictions")
    return float((t == p).mean()) if len(t) else 0.0


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """cm[i, j] = number of samples of true class i predicted as j; int64 (K, K)."""
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if len(t) != len(p):
        raise ValueError(f"confusion_matrix: {len(t)} labels but {len(p)} predictions")
    bad = (t < 0) | (t >= num_classes) | (p < 0) | (p >= num_classes)
    if bad.any():
        raise ValueError(f"confusion_matrix: labels must be in [0, {num_classes}), found "
                         f"{sorted(set(t[bad].tolist()) | set(p[bad].tolist()))[:5]}")
    return np.bincount(t * num_classes + p, minlength=num_classes ** 2).reshape(
        num_classes, num_classes).astype(np.int64)


def per_class_metrics(y_true, y_pred, num_classes: int) -> dict:
    """Per-class precision, recall, F1 and support (arrays of length K).

    A class never predicted has precision 0; a class with no samples has recall 0; F1 is 0
    where precision + recall is 0 (scikit-learn's zero_division=0 convention).
    """
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
        recall = np.where(support > 0, tp / np.maximum(support, 1), 0.0)
        f1 = np.where(precision + recall > 0,
                      2 * precision * recall / np.where(precision + recall > 0, precision + recall, 1),
                      0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def most_confused_pairs(cm, k: int = 5, class_names=None) -> list:
    """The k largest off-diagonal counts as (true name, predicted name, count), largest first."""
    cm = np.asarray(cm)
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(cm))]
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None, kind="stable")[::-1][:k]
    return [(names[i], names[j], int(off[i, j])) for i, j in
            (np.unravel_index(o, cm.shape) for o in order) if off[i, j] > 0]
