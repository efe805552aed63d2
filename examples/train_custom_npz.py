"""Train your own model on your own .npz, then load it back and predict.

    python examples/train_custom_npz.py DATA.npz [--epochs 5] [--out runs/custom]
    python examples/train_custom_npz.py --demo          # writes a small demo set first

DATA.npz holds x_train, y_train, x_test, y_test (images (N, H, W), (N, C, H, W) or
(N, H, W, C), uint8 pixels or floats; integer labels) and optionally class_names. The model is
``build`` below; the same function trains from the command line, since ``--model`` takes a
Python file and a function in it:

    gpunn train --model examples/train_custom_npz.py:build --dataset npz:DATA.npz
    gpunn predict runs/<that run> picture.png

This script does the same steps in Python: load the data, build the model, ``fit`` with
checkpoints and on-device augmentation, evaluate on the test split, save, and reload the
trained run with ``gpunn.load_model``.
"""
import argparse
import os

import numpy as np

import gpunn


def build(input_shape, num_classes, rng, dtype):
    """A small CNN for any (C, H, W): conv + pool, a residual block, global average pooling
    and a linear classifier (gpunn train --model calls it with the data's shape and classes)."""
    c = input_shape[0]
    return gpunn.Sequential(
        gpunn.Conv2d(c, 16, 3, padding="same", rng=rng, dtype=dtype), gpunn.ReLU(),
        gpunn.MaxPool2d(2),
        gpunn.Residual(gpunn.Conv2d(16, 16, 3, padding="same", bias=False, rng=rng, dtype=dtype),
                       gpunn.BatchNorm2d(16, dtype=dtype), gpunn.ReLU(),
                       gpunn.Conv2d(16, 16, 3, padding="same", bias=False, rng=rng, dtype=dtype),
                       gpunn.BatchNorm2d(16, dtype=dtype)),
        gpunn.ReLU(), gpunn.GlobalAvgPool2d(),
        gpunn.Linear(16, num_classes, rng=rng, dtype=dtype))


def write_demo(path, n_train=600, n_test=150, seed=0):
    """Three classes of 16x16 RGB images, noise with a bright horizontal, vertical or diagonal
    stripe, as uint8 (N, H, W, C) arrays: the layout most image tools write."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:16, 0:16]
    stripes = [abs(r - 7.5) < 2, abs(c - 7.5) < 2, abs(r - c) < 2]

    def make(n):
        y = rng.integers(0, 3, n)
        x = rng.integers(0, 90, (n, 16, 16, 3)).astype(np.uint8)
        for k, mask in enumerate(stripes):
            x[(y == k)[:, None, None] & mask] = 220
        return x, y
    (xtr, ytr), (xte, yte) = make(n_train), make(n_test)
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte,
             class_names=np.array(["horizontal", "vertical", "diagonal"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="?", help="your .npz (see above)")
    ap.add_argument("--demo", action="store_true", help="write and use a small demo set")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--out", default=os.path.join("runs", "custom"))
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    if args.demo:
        os.makedirs(args.out, exist_ok=True)
        args.data = os.path.join(args.out, "demo.npz")
        write_demo(args.data)
    if not args.data:
        ap.error("give DATA.npz, or --demo")

    data = gpunn.load_dataset(f"npz:{args.data}", val_size=0.1, seed=0)
    print(f"{args.data}: {len(data.y_train)} train, {len(data.y_val)} validation, "
          f"{len(data.y_test)} test images of {data.input_shape}; classes {data.class_names}")
    model = build(data.input_shape, data.num_classes, np.random.default_rng(0), np.float32)
    print(model.summary(data.input_shape))
    device = gpunn.resolve_device(args.device)
    model.to(device)
    opt = gpunn.Adam(model.parameters(), lr=2e-3)
    loss = gpunn.CrossEntropyLoss()
    config = gpunn.TrainConfig(epochs=args.epochs, batch_size=50, eval_every=0, progress=False,
                               augment=gpunn.RandomAugment(crop=2))   # on the device, per batch
    result = gpunn.fit(model, loss, opt, data, config, out_dir=args.out, device=device)
    x_test = gpunn.to_device(data.x_test, device)
    y_test = gpunn.to_device(data.y_test, device)
    test_loss, test_acc, _ = gpunn.evaluate(model, loss, x_test, y_test)
    print(f"best validation accuracy {result.best.get('value')}; "
          f"test accuracy {test_acc:.4f} (loss {test_loss:.4f})")
    model.save(os.path.join(args.out, "weights.npz"))

    # The same model as a gpunn run directory, which gpunn eval / predict / load_model read:
    # gpunn.runs.run_training does everything `gpunn train` does from a RunConfig.
    from gpunn.runs import RunConfig, run_training
    run = os.path.join(args.out, "run")
    cfg = RunConfig(model=f"{os.path.abspath(__file__)}:build", dataset=f"npz:{args.data}",
                    epochs=args.epochs, optimizer="adam", lr=2e-3, batch_size=50, val_size=0.1,
                    eval_every=0, augment_crop=2, device=args.device, progress=False)
    summary = run_training(cfg, run, log=lambda msg: None)
    trained = gpunn.load_model(run)                     # weights loaded, evaluation mode, CPU
    logits = trained(data.x_test[:5])
    names = [trained.class_names[k] for k in logits.argmax(axis=1)]
    print(f"run {run}: test accuracy {summary['test_acc']:.4f}; first five test images -> {names}")


if __name__ == "__main__":
    main()
