"""The job ``gpunn train --model model4 --dataset fashion-mnist --epochs 1 --device cpu`` does,
written in PyTorch, to compare whole processes (docs/benchmarks/README.md):

    python scripts/train_torch.py [--epochs 1] [--out runs/torch-model4] [--threads N]
    /usr/bin/time -v python scripts/train_torch.py ...      # beside the same for gpunn train

The same work in the same order: read Fashion-MNIST's gzipped IDX files, keep 5000 training
images for validation (the same seeded permutation as gpunn's split), scale to [0, 1]; train
model4 (conv 3x3x8 same + ReLU + max-pool, twice, fc 32 + ReLU, fc 10) with SGD (lr 0.05,
momentum 0.9) on shuffled batches of 100; every 20000 samples and at the end evaluate on the
validation and test sets and on a fixed 20% of the training set (gpunn's train metrics) and
write a checkpoint; then the test confusion matrix, per-class
precision and recall, the four figures (learning curves, confusion matrix, first-layer
filters, misclassified test images), history.json, metrics.csv, the weights and report.md.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import os
import time

import numpy as np

FASHION = "/usr/share/datasets/fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(data_dir, val_size=5000, seed=0):
    x = read_idx(os.path.join(data_dir, "train-images-idx3-ubyte.gz"))
    y = read_idx(os.path.join(data_dir, "train-labels-idx1-ubyte.gz"))
    xt = read_idx(os.path.join(data_dir, "t10k-images-idx3-ubyte.gz"))
    yt = read_idx(os.path.join(data_dir, "t10k-labels-idx1-ubyte.gz"))
    perm = np.random.default_rng(seed).permutation(len(x))
    tr, va = np.sort(perm[val_size:]), np.sort(perm[:val_size])

    def prep(images):
        return (images.astype(np.float32) / 255.0)[:, None]
    return (prep(x[tr]), y[tr].astype(np.int64), prep(x[va]), y[va].astype(np.int64),
            prep(xt), yt.astype(np.int64))


def model4(torch):
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(8 * 7 * 7, 32), nn.ReLU(), nn.Linear(32, 10))


def evaluate(torch, net, x, y, batch=1000):
    net.eval()
    loss, correct, preds = 0.0, 0, []
    with torch.no_grad():
        for lo in range(0, len(x), batch):
            logits = net(x[lo:lo + batch])
            loss += float(torch.nn.functional.cross_entropy(logits, y[lo:lo + batch],
                                                            reduction="sum"))
            p = logits.argmax(1)
            correct += int((p == y[lo:lo + batch]).sum())
            preds.append(p)
    net.train()
    return loss / len(x), correct / len(x), torch.cat(preds).numpy()


def figures(out, history, cm, W, x_wrong, y_wrong, p_wrong):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.image
    import matplotlib.pyplot as plt

    def save(fig, name):
        fig.savefig(os.path.join(out, name), dpi=110, bbox_inches="tight")
        plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for split, colour in (("train", "tab:blue"), ("val", "tab:orange"), ("test", "tab:green")):
        a1.plot(history["samples"], history[f"{split}_acc"], "-o", ms=3, color=colour, label=split)
        a2.plot(history["samples"], history[f"{split}_loss"], "-o", ms=3, color=colour, label=split)
    a1.set(xlabel="training samples seen", ylabel="accuracy", title="accuracy")
    a2.set(xlabel="training samples seen", ylabel="cross-entropy loss", title="loss")
    a1.legend(loc="lower right")
    a2.legend(loc="upper right")
    save(fig, "curves.png")

    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    k = len(cm)
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * k, 0.8 + 0.55 * k))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(k), CLASSES, rotation=45, ha="right")
    ax.set_yticks(range(k), CLASSES)
    for i in range(k):
        for j in range(k):
            if norm[i, j] >= 0.005:
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    save(fig, "confusion.png")

    # thumbnails as gpunn's figures draw them: matplotlib draws the text, each image,
    # enlarged by a whole number of pixels, is copied into the picture (a grid of subplots
    # costs ~0.4 s more per figure)
    def tiles(name, images, captions, cols, tile_in, caption_in, gap_in, fontsize, colour,
              title):
        h, w = images[0].shape
        cols = max(1, min(cols, len(images)))
        rows = math.ceil(len(images) / cols)
        k = max(1, round(tile_in * 110 / w))
        band, gap = math.ceil(caption_in * 110), math.ceil(gap_in * 110)
        height = 50 + rows * (band + h * k) + 11
        width = 22 + cols * w * k + (cols - 1) * gap
        fig = plt.figure(figsize=(width / 110, height / 110), dpi=110)
        places = []
        for i, text in enumerate(captions):
            r, c = divmod(i, cols)
            top, left = 50 + r * (band + h * k) + band, 11 + c * (w * k + gap)
            places.append((top, left))
            fig.text((left + w * k / 2) / width, 1 - (top - 4) / height, text, ha="center",
                     va="bottom", fontsize=fontsize, color=colour, linespacing=1.1)
        fig.suptitle(title, y=1 - 12 / height, va="top")
        fig.canvas.draw()
        pic = np.array(fig.canvas.buffer_rgba())
        plt.close(fig)
        for img, (top, left) in zip(images, places):
            u = np.round((img - img.min()) / max(img.max() - img.min(), 1e-12) * 255)
            pic[top:top + h * k, left:left + w * k, :3] = np.repeat(np.repeat(
                u.astype(np.uint8)[..., None], k, 0), k, 1)
        matplotlib.image.imsave(os.path.join(out, name), pic, dpi=110)

    tiles("filters.png", [f.mean(axis=0) for f in W], [str(i) for i in range(W.shape[0])], 8,
          1.0, 0.2, 0.3, 7, "black", "first convolutional layer filters")
    tiles("misclassified.png", [x[0] for x in x_wrong],
          [f"true: {CLASSES[t]}\npred: {CLASSES[p]}" for t, p in zip(y_wrong, p_wrong)], 5,
          1.8, 0.42, 0.4, 8, "darkred", "misclassified test images")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--out", default="runs/torch-model4-fashion-mnist")
    ap.add_argument("--data-dir", default=FASHION)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads [the cores this process may use, as gpunn]")
    ap.add_argument("--eval-every", type=int, default=20000)
    args = ap.parse_args()

    import torch
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    torch.manual_seed(0)
    t0 = time.time()
    os.makedirs(args.out, exist_ok=True)
    xtr, ytr, xva, yva, xte, yte = (torch.from_numpy(np.ascontiguousarray(a))
                                    for a in load(args.data_dir))
    sub = np.sort(np.random.default_rng(1).choice(len(xtr), size=round(0.2 * len(xtr)),
                                                  replace=False))
    xsub, ysub = xtr[torch.from_numpy(sub)], ytr[torch.from_numpy(sub)]
    net = model4(torch)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    history = {k: [] for k in ("samples", "epoch", "train_loss", "train_acc", "val_loss",
                               "val_acc", "test_loss", "test_acc")}
    gen = torch.Generator().manual_seed(0)
    running = [torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.int64)]
    seen, next_eval = 0, args.eval_every
    with open(os.path.join(args.out, "metrics.csv"), "w", newline="") as fcsv:
        log = csv.writer(fcsv)
        log.writerow(list(history))

        def checkpoint(epoch_frac):
            rl, ra, _ = evaluate(torch, net, xsub, ysub)
            vl, va, _ = evaluate(torch, net, xva, yva)
            tl, ta, _ = evaluate(torch, net, xte, yte)
            row = [seen, epoch_frac, rl, ra, vl, va, tl, ta]
            for k, v in zip(history, row):
                history[k].append(v)
            log.writerow(row)
            fcsv.flush()
            torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "seen": seen},
                       os.path.join(args.out, "checkpoint.pt"))
            print(f"[eval] epoch {epoch_frac:.2f} ({seen} samples): val_acc={va:.4f} "
                  f"test_acc={ta:.4f}", flush=True)

        for epoch in range(args.epochs):
            order = torch.randperm(len(xtr), generator=gen)
            for lo in range(0, len(xtr), 100):
                idx = order[lo:lo + 100]
                xb, yb = xtr[idx], ytr[idx]
                opt.zero_grad()
                logits = net(xb)
                loss = torch.nn.functional.cross_entropy(logits, yb)
                loss.backward()
                opt.step()
                running[0] += loss.detach() * len(xb)        # the running sums gpunn's step
                running[1] += (logits.detach().argmax(1) == yb).sum()   # keeps too
                seen += len(xb)
                if seen >= next_eval and seen < len(xtr) * args.epochs:
                    checkpoint(seen / len(xtr))
                    next_eval += args.eval_every
            checkpoint(epoch + 1.0)
    train_s = time.time() - t0
    _, acc, pred = evaluate(torch, net, xte, yte)
    y = yte.numpy()
    cm = np.zeros((10, 10), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    precision = cm.diagonal() / np.maximum(cm.sum(axis=0), 1)
    recall = cm.diagonal() / np.maximum(cm.sum(axis=1), 1)
    wrong = np.nonzero(pred != y)[0][:25]
    figures(args.out, history, cm, net[0].weight.detach().numpy(), xte.numpy()[wrong],
            y[wrong], pred[wrong])
    torch.save(net.state_dict(), os.path.join(args.out, "weights.pt"))
    with open(os.path.join(args.out, "history.json"), "w") as f:
        json.dump(history, f)
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(f"# model4 on fashion-mnist (PyTorch {torch.__version__})\n\n"
                f"test accuracy {acc:.4f}, {train_s:.1f} s\n\n| class | precision | recall |\n"
                "|---|---|---|\n" + "".join(f"| {c} | {p:.3f} | {r:.3f} |\n"
                                            for c, p, r in zip(CLASSES, precision, recall)))
    print(f"test accuracy {acc:.4f}  ({time.time() - t0:.1f} s)")


if __name__ == "__main__":
    main()
