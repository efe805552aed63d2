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
import matplotlib.image  # noqa: E402
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


def _unit_range(img):
    """An image scaled to [0, 1] by its own finite range (all zeros when it is constant; a
    value that is not finite shows as 0, not as garbage)."""
    img = np.asarray(img, dtype=np.float64)
    finite = np.isfinite(img)
    if not finite.any():
        return np.zeros_like(img)
    lo, hi = float(img[finite].min()), float(img[finite].max())
    out = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return np.where(finite, out, 0.0)


_DPI = 110


def _tile_layout(n: int, h: int, w: int, *, cols: int, tile_in: float, caption_in: float,
                 gap_in: float) -> dict:
    """Where _tile_grid puts n images of h x w pixels, in the picture's pixels: ``scale``
    (picture pixels per image pixel, a whole number), ``size`` (height, width), ``tiles``
    [(top, left)] and ``captions`` [(x centre, bottom)] per image, ``title`` (its top)."""
    cols = max(1, min(cols, n))
    rows = max(1, math.ceil(n / cols))
    scale = max(1, round(tile_in * _DPI / w))
    th, tw = h * scale, w * scale
    band, gap = math.ceil(caption_in * _DPI), math.ceil(gap_in * _DPI)
    margin, title = 11, 50
    tiles, captions = [], []
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = title + r * (band + th) + band, margin + c * (tw + gap)
        tiles.append((top, left))
        captions.append((left + tw / 2, top - 4))
    size = (title + rows * (band + th) + margin, 2 * margin + cols * tw + (cols - 1) * gap)
    return {"scale": scale, "size": size, "tiles": tiles, "captions": captions, "title": 12}


def _tile_grid(tiles, captions, path, *, cols: int, tile_in: float, caption_in: float,
               gap_in: float, fontsize: float, color: str, title: str) -> str:
    """Images side by side in one picture with a caption above each: tiles, a list of (H, W)
    grey or (H, W, 3) colour arrays in [0, 1], all one shape.

    Matplotlib draws only the text; each image, enlarged by a whole number of pixels, is
    copied into the drawn picture, which is written as it is. A grid of subplots took 0.49 s
    for plot_misclassified's 25 images and 0.55 s for 32 filters, in every run's report (this
    way 0.1 s); one imshow of all the images together took ~100 MB more peak memory (matplotlib
    resamples pictures in floating point)."""
    step = math.ceil(max(tiles[0].shape[:2]) / (tile_in * _DPI))
    if step > 1:                      # images larger than their tile: every step-th pixel
        tiles = [t[::step, ::step] for t in tiles]
    h, w = tiles[0].shape[:2]
    lay = _tile_layout(len(tiles), h, w, cols=cols, tile_in=tile_in, caption_in=caption_in,
                       gap_in=gap_in)
    height, width = lay["size"]
    fig = plt.figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    for text, (x, bottom) in zip(captions, lay["captions"]):
        fig.text(x / width, 1 - bottom / height, text, ha="center", va="bottom",
                 fontsize=fontsize, color=color, linespacing=1.1)
    fig.suptitle(title, y=1 - lay["title"] / height, va="top")
    fig.canvas.draw()
    picture = np.array(fig.canvas.buffer_rgba())                  # (height, width, 4) uint8
    plt.close(fig)
    if picture.shape[:2] != (height, width):       # a backend that rounds the figure's size
        drawn = picture                            # otherwise: the layout's size, text kept
        picture = np.full((height, width, 4), 255, dtype=np.uint8)
        hh, ww = min(height, drawn.shape[0]), min(width, drawn.shape[1])
        picture[:hh, :ww] = drawn[:hh, :ww]
    k = lay["scale"]
    for tile, (top, left) in zip(tiles, lay["tiles"]):
        rgb = np.round(np.asarray(tile, dtype=np.float64) * 255).astype(np.uint8)
        if rgb.ndim == 2:
            rgb = rgb[..., None]
        picture[top:top + h * k, left:left + w * k, :3] = np.repeat(np.repeat(rgb, k, 0), k, 1)
    matplotlib.image.imsave(path, picture, dpi=_DPI)
    return path


def plot_filters(W, path, title: str = "first convolutional layer filters") -> str:
    """W: (O, C, kh, kw) -> a grid of O filters (channel mean when C > 3), each scaled to its
    own range so the pattern shows."""
    W = np.asarray(W, dtype=np.float64)
    o, c = W.shape[:2]
    tiles = [_unit_range(f.transpose(1, 2, 0) if c == 3 else f.mean(axis=0)) for f in W]
    return _tile_grid(tiles, [str(i) for i in range(o)], path, cols=8, tile_in=1.0,
                      caption_in=0.2, gap_in=0.3, fontsize=7, color="black", title=title)


def plot_misclassified(images, y_true, y_pred, class_names, path, max_images: int = 25) -> str:
    """A grid of images (N, C, H, W) in [0, 1] with "true / predicted" captions."""
    images = np.asarray(images)[:max_images]
    tiles = [_unit_range(img.transpose(1, 2, 0) if img.shape[0] == 3 else img[0])
             for img in images] or [np.ones((8, 8))]      # none: an empty (white) panel
    captions = [f"true: {class_names[int(t)]}\npred: {class_names[int(p)]}"
                for t, p in zip(y_true[:len(tiles)], y_pred[:len(tiles)])]
    return _tile_grid(tiles, captions, path, cols=5, tile_in=1.8, caption_in=0.42,
                      gap_in=0.4, fontsize=8, color="darkred",
                      title="misclassified test images")


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
