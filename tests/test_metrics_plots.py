"""Metrics against hand-computed values; every plot writes a non-empty PNG."""
import numpy as np
import pytest

from gpunn import plots
from gpunn.metrics import accuracy, confusion_matrix, most_confused_pairs, per_class_metrics

PNG = b"\x89PNG\r\n\x1a\n"


def test_metrics_by_hand():
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 1, 1, 1, 0, 2])
    assert accuracy(y, p) == pytest.approx(4 / 6)
    cm = confusion_matrix(y, p, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    m = per_class_metrics(y, p, 3)
    np.testing.assert_allclose(m["precision"], [1 / 2, 2 / 3, 1])
    np.testing.assert_allclose(m["recall"], [1 / 2, 1, 1 / 2])
    np.testing.assert_allclose(m["f1"], [1 / 2, 0.8, 2 / 3])
    np.testing.assert_array_equal(m["support"], [2, 2, 2])
    assert most_confused_pairs(cm, 2, ["a", "b", "c"]) == [("c", "a", 1), ("a", "b", 1)]
    logits = np.eye(3)[p] * 5
    assert accuracy(y, logits) == pytest.approx(4 / 6)


def test_zero_division_and_errors():
    m = per_class_metrics([0, 0], [0, 0], 3)
    np.testing.assert_array_equal(m["precision"], [1, 0, 0])
    np.testing.assert_array_equal(m["recall"], [1, 0, 0])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="2 labels but 1 predictions"):
        accuracy([0, 1], [0])


def _is_png(path):
    with open(path, "rb") as f:
        head = f.read(8)
    return head == PNG


def test_every_plot_writes_a_png(tmp_path, rng):
    h = {"samples": [100, 200, 300], "train_loss": [1.0, 0.6, 0.4], "train_acc": [0.5, 0.7, 0.8],
         "val_loss": [1.1, 0.7, 0.5], "val_acc": [0.45, 0.65, 0.75], "test_loss": [None, None, 0.5],
         "test_acc": [None, None, 0.74]}
    names = [f"class {i}" for i in range(4)]
    out = [
        plots.plot_learning_curves(h, tmp_path / "curves.png", title="t"),
        plots.plot_confusion_matrix(rng.integers(0, 20, (4, 4)), names, tmp_path / "cm.png"),
        plots.plot_filters(rng.standard_normal((8, 1, 3, 3)), tmp_path / "f1.png"),
        plots.plot_filters(rng.standard_normal((5, 3, 5, 5)), tmp_path / "f3.png"),
        plots.plot_misclassified(rng.random((7, 1, 28, 28)), [0, 1, 2, 3, 0, 1, 2], [1, 2, 3, 0, 1, 2, 3],
                                 names, tmp_path / "mis.png"),
        plots.plot_sweep_curves({("m1", "s1"): h, ("m2", "s2"): h}, ["m1", "m2"], ["s1", "s2"],
                                tmp_path / "sweep.png"),
        plots.plot_sweep_table({("m1", "s1"): 0.8, ("m2", "s1"): 0.9}, ["m1", "m2"], ["s1"],
                               tmp_path / "table.png"),
    ]
    for p in out:
        assert _is_png(p) and p.stat().st_size > 1000, p
    md = plots.sweep_table_markdown({("m1", "s1"): 0.8, ("m2", "s1"): 0.9}, ["m1", "m2"], ["s1", "s2"])
    assert "| m2 | **0.9000** | - |" in md


def test_tile_grid_writes_each_image_where_the_layout_puts_it(tmp_path, rng):
    """The misclassified-images and filter figures copy each image, enlarged by a whole
    number of pixels, into the drawn picture: read the PNG back and find every image there,
    pixel for pixel (grey and colour), with its caption drawn above it, not over it."""
    import matplotlib.image as mpimg
    grey = rng.random((7, 1, 28, 28))
    path = plots.plot_misclassified(grey, [0] * 7, [1] * 7, ["a", "b"], tmp_path / "m.png")
    lay = plots._tile_layout(7, 28, 28, cols=5, tile_in=1.8, caption_in=0.42, gap_in=0.4)
    png = np.round(mpimg.imread(path) * 255).astype(np.uint8)
    assert png.shape[:2] == lay["size"]
    k = lay["scale"]
    assert k >= 2 and len(lay["tiles"]) == 7 and lay["tiles"][5][0] > lay["tiles"][4][0]
    for img, (top, left) in zip(grey, lay["tiles"]):
        u = (img[0] - img[0].min()) / (img[0].max() - img[0].min())
        want = np.repeat(np.repeat(np.round(u * 255).astype(np.uint8), k, 0), k, 1)
        for ch in range(3):
            assert np.array_equal(png[top:top + 28 * k, left:left + 28 * k, ch], want)
        band = png[top - 30:top - 2, left:left + 28 * k, :3]      # the caption above it
        assert (band < 200).any(), "no caption drawn above the image"
    colour = rng.random((5, 3, 5, 5))
    path = plots.plot_filters(colour, tmp_path / "f.png")
    lay = plots._tile_layout(5, 5, 5, cols=8, tile_in=1.0, caption_in=0.2, gap_in=0.3)
    png = np.round(mpimg.imread(path) * 255).astype(np.uint8)
    top, left = lay["tiles"][3]
    f = colour[3].transpose(1, 2, 0)
    u = np.round((f - f.min()) / (f.max() - f.min()) * 255).astype(np.uint8)
    assert np.array_equal(png[top:top + 5 * lay["scale"]:lay["scale"],
                              left:left + 5 * lay["scale"]:lay["scale"], :3], u)
    big = rng.random((3, 3, 500, 400))                # larger than a tile: decimated
    path = plots.plot_misclassified(big, [0] * 3, [1] * 3, ["a", "b"], tmp_path / "b.png")
    step = -(-500 // int(1.8 * 110))
    lay = plots._tile_layout(3, -(-500 // step), -(-400 // step), cols=5, tile_in=1.8,
                             caption_in=0.42, gap_in=0.4)
    png = np.round(mpimg.imread(path) * 255).astype(np.uint8)
    assert png.shape[:2] == lay["size"] and lay["scale"] == 1
    top, left = lay["tiles"][1]
    f = big[1].transpose(1, 2, 0)[::step, ::step]
    u = np.round((f - big[1].min()) / (big[1].max() - big[1].min()) * 255).astype(np.uint8)
    assert np.array_equal(png[top:top + u.shape[0], left:left + u.shape[1], :3], u)
    empty = plots.plot_misclassified(np.zeros((0, 1, 28, 28)), [], [], ["a"], tmp_path / "e.png")
    lay = plots._tile_layout(1, 8, 8, cols=5, tile_in=1.8, caption_in=0.42, gap_in=0.4)
    (top, left), k = lay["tiles"][0], lay["scale"]
    assert (mpimg.imread(empty)[top:top + 8 * k, left:left + 8 * k, :3] == 1).all()  # blank
    assert plots._unit_range(np.full((2, 2), 7.0)).max() == 0
    assert np.array_equal(plots._unit_range(np.array([[1.0, np.nan], [3.0, np.inf]])),
                          [[0.0, 0.0], [1.0, 0.0]])
    assert np.allclose(plots._unit_range(np.array([[1.0, 3.0]])), [[0.0, 1.0]])


def test_tile_grid_keeps_the_layout_when_the_backend_draws_another_size(tmp_path, rng,
                                                                        monkeypatch):
    import matplotlib.image as mpimg
    real = plots.plt.figure

    def one_pixel_short(figsize, dpi):          # a backend that rounds the size down
        return real(figsize=(figsize[0] - 1 / dpi, figsize[1] - 1 / dpi), dpi=dpi)
    monkeypatch.setattr(plots.plt, "figure", one_pixel_short)
    path = plots.plot_filters(rng.standard_normal((4, 1, 3, 3)), tmp_path / "f.png")
    lay = plots._tile_layout(4, 3, 3, cols=8, tile_in=1.0, caption_in=0.2, gap_in=0.3)
    assert mpimg.imread(path).shape[:2] == lay["size"]
