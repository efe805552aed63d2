"""Figures as PNG files (matplotlib, Agg backend: no display needed). Each function takes the
output path last and returns it.

History format (from ``gpunn.train.fit``): a dict of equal-length lists with keys ``samples``,
``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``, ``test_loss``, ``test_acc`` (None
where a split was not evaluated).
"""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_learning_curves", "plot_confusion_matrix", "plot_filters", "plot_misclassified",
           "plot_sweep_curves", "plot_sweep_table", "sweep_table_markdown"]

_SPLITS = (("train", "tab:blue"), ("val", "tab:orange"), ("test", "tab:green"))


def _save(fig, path):
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _series(history, key):
    xs = [s for s, v in zip(history["samples"], history.get(key, [])) if v is not None]
    ys = [v for v in history.get(key, []) if v is not None]
    return xs, ys


def _curves_on(ax_acc, ax_loss, history, legend=True):
    for split, colour in _SPLITS:
        xs, ys = _series(history, f"{split}_acc")
        if ys:
            ax_acc.plot(xs, ys, "-o", ms=3, color=colour, label=split)
        xs, ys = _series(history, f"{split}_loss")
        if ys and ax_loss is not None:
            ax_loss.plot(xs, ys, "-o", ms=3, color=colour, label=split)
    if legend:
        ax_acc.legend(loc="lower right")


def plot_learning_curves(history: dict, path, title: str = "") -> str:
    """Accuracy and loss against training samples seen, for train / validation / test."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    _curves_on(a1, a2, history)
    a1.set(xlabel="training samples seen", ylabel="accuracy", title="accuracy")
    a2.set(xlabel="training samples seen", ylabel="cross-entropy loss", title="loss")
    a2.legend(loc="upper right")
    for a in (a1, a2):
        a.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_confusion_matrix(cm, class_names, path, title: str = "confusion matrix (rows: true, normalised)") -> str:
    """Row-normalised confusion matrix with the counts' shares printed in each cell."""
    cm = np.asarray(cm, dtype=np.float64)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    k = len(cm)
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * k, 0.8 + 0.55 * k))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    for i in range(k):
        for j in range(k):
            if norm[i, j] >= 0.005:
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    return _save(fig, path)


def plot_filters(W, path, title: str = "first convolutional layer filters") -> str:
    """W: (O, C, kh, kw) -> a grid of O filters (channel mean when C > 3), each scaled to its
    own range so the pattern shows."""
    W = np.asarray(W, dtype=np.float64)
    o, c = W.shape[:2]
    cols = min(8, o)
    rows = math.ceil(o / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.3 * rows + 0.4), squeeze=False)
    for idx, ax in enumerate(axes.flat):
        ax.axis("off")
        if idx >= o:
            continue
        f = W[idx]
        img = f.transpose(1, 2, 0) if c == 3 else f.mean(axis=0)
        lo, hi = img.min(), img.max()
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        ax.imshow(img, cmap=None if c == 3 else "gray", interpolation="nearest")
        ax.set_title(str(idx), fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def plot_misclassified(images, y_true, y_pred, class_names, path, max_images: int = 25) -> str:
    """A grid of images (N, C, H, W) in [0, 1] with "true / predicted" captions."""
    images = np.asarray(images)[:max_images]
    n = len(images)
    cols = min(5, max(n, 1))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for idx, ax in enumerate(axes.flat):
        ax.axis("off")
        if idx >= n:
            continue
        img = images[idx]
        lo, hi = float(img.min()), float(img.max())
        img = (img - lo) / (hi - lo) if hi > lo else img * 0
        if img.shape[0] == 3:
            ax.imshow(img.transpose(1, 2, 0))
        else:
            ax.imshow(img[0], cmap="gray")
        ax.set_title(f"true: {class_names[int(y_true[idx])]}\npred: {class_names[int(y_pred[idx])]}",
                     fontsize=8, color="darkred")
    fig.suptitle("misclassified test images")
    return _save(fig, path)


def plot_sweep_curves(histories: dict, models, settings, path) -> str:
    """Grid of accuracy curves: one row per model, one column per setting."""
    fig, axes = plt.subplots(len(models), len(settings), squeeze=False, sharey=True,
                             figsize=(3.6 * len(settings), 2.6 * len(models)))
    for i, m in enumerate(models):
        for j, s in enumerate(settings):
            ax = axes[i, j]
            h = histories.get((m, s))
            if h:
                _curves_on(ax, None, h, legend=(i == 0 and j == 0))
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(s)
            if j == 0:
                ax.set_ylabel(f"{m}\naccuracy")
            if i == len(models) - 1:
                ax.set_xlabel("samples seen")
    return _save(fig, path)


def sweep_table_markdown(results: dict, models, settings, choose_by: dict | None = None) -> str:
    """Markdown table of ``results`` (model, setting) -> value, models x settings, with each
    row's best in bold: the cell with the highest ``choose_by`` value when given (a sweep
    passes validation accuracy, so the test accuracy shown never chooses), else the highest
    value shown."""
    judge = results if choose_by is None else choose_by
    lines = ["| model | " + " | ".join(settings) + " |", "|---|" + "---:|" * len(settings)]
    for m in models:
        vals = [results.get((m, s)) for s in settings]
        marks = [judge.get((m, s)) for s in settings]
        top = max((v for v in marks if v is not None), default=None)
        win = marks.index(top) if top is not None else -1
        cells = ["-" if v is None else (f"**{v:.4f}**" if i == win else f"{v:.4f}")
                 for i, v in enumerate(vals)]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sweep_table(results: dict, models, settings, path) -> str:
    """The summary table of final test accuracies as an image."""
    cells = [[("-" if results.get((m, s)) is None else f"{results[(m, s)]:.4f}") for s in settings]
             for m in models]
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(settings), 0.6 + 0.4 * len(models)))
    ax.axis("off")
    table = ax.table(cellText=cells, rowLabels=list(models), colLabels=list(settings), loc="center",
                     cellLoc="center")
    table.scale(1, 1.4)
    ax.set_title("final test accuracy")
    return _save(fig, path)
