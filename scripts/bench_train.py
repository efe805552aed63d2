"""Training-step throughput of zoo models: gpunn (NumPy CPU, and CuPy where a GPU is usable)
beside the same network in PyTorch on the CPU, measured in one run.

    python scripts/bench_train.py [--models model1,model2,model4,cnn-bn] [--batch 100] [--repeats 30]

Prints a table of median milliseconds per SGD step (forward + backward + update) and the
ratio to PyTorch. PyTorch is optional (``pip install torch==2.13.0``: the CPU build).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from gpunn.backend import cuda_available, synchronize, to_device
from gpunn.losses import SoftmaxCrossEntropy
from gpunn.optim import SGD
from gpunn.zoo import build_model


def time_gpunn(name, batch, repeats, device):
    model = build_model(name, (1, 28, 28), 10, seed=0).to(device)
    opt = SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss = SoftmaxCrossEntropy()
    rng = np.random.default_rng(0)
    x = to_device(rng.random((batch, 1, 28, 28), dtype=np.float32), device)
    y = to_device(rng.integers(0, 10, batch).astype(np.int32), device)

    def step():
        loss.forward(model.forward(x, train=True), y)
        model.backward(loss.backward())
        opt.step()
    return _median_ms(step, repeats, lambda: synchronize(device))


def torch_model(name):
    import torch.nn as nn
    if name == "model1":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    if name == "model2":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    if name == "model3":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 32),
                             nn.ReLU(), nn.Linear(32, 10))
    if name == "model4":
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(392, 32), nn.ReLU(), nn.Linear(32, 10))
    if name == "cnn-bn":
        return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(32),
                             nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 14 * 14, 784),
                             nn.Dropout(0.5), nn.ReLU(), nn.Linear(784, 10))
    if name == "mlp1000":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 1000), nn.ReLU(), nn.Linear(1000, 10))
    return None


def time_torch(name, batch, repeats, device="cpu"):
    try:
        import torch
    except ImportError:
        return None
    net = torch_model(name)
    if net is None:
        return None
    net = net.to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    lossf = torch.nn.CrossEntropyLoss()
    x = torch.rand(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        opt.zero_grad(set_to_none=False)
        lossf(net(x), y).backward()
        opt.step()
    return _median_ms(step, repeats, sync)


def _median_ms(step, repeats, sync):
    for _ in range(3):
        step()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="model1,model2,model3,model4,cnn-bn")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    try:
        import torch
        torch_info = f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        torch_info = "torch not installed"
    gpu = cuda_available()
    try:
        import torch
        torch_gpu = gpu and torch.cuda.is_available()
    except ImportError:
        torch_gpu = False
    print(f"batch {args.batch}, median of {args.repeats} steps; numpy {np.__version__}; {torch_info}")
    head = f"{'model':10s} {'gpunn cpu ms':>13s} {'torch cpu ms':>13s} {'gpunn/torch':>12s}"
    if gpu:
        head += f" {'gpunn cuda ms':>14s}"
    if torch_gpu:
        head += f" {'torch cuda ms':>14s}"
    print(head)
    for name in args.models.split(","):
        g = time_gpunn(name, args.batch, args.repeats, "cpu")
        t = time_torch(name, args.batch, args.repeats)
        row = f"{name:10s} {g:13.2f} {t if t is not None else float('nan'):13.2f} " \
              f"{(g / t) if t else float('nan'):12.2f}"
        if gpu:
            row += f" {time_gpunn(name, args.batch, args.repeats, 'cuda'):14.2f}"
        if torch_gpu:
            row += f" {time_torch(name, args.batch, args.repeats, 'cuda'):14.2f}"
        print(row)


if __name__ == "__main__":
    main()
