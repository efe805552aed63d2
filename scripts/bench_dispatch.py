"""Per-op dispatch overhead on the CPU: an op called through gpunn against its bare NumPy body,
on arrays small enough that the body costs almost nothing, and a whole model4 training step.
Then the host work gpunn adds to each CUDA kernel launch (no GPU needed: argument marshalling,
the argument check, the grid), the general argument path against the fast one side by side,
and the launches of one eager model4 step on the CUDA path (counted under emulation).

    python scripts/bench_dispatch.py [--repeat 7]

Prints medians over ``--repeat`` rounds (each round times many calls with timeit); the
overhead column is the op's time minus the body's. Results: docs/DISPATCH.md.
"""
from __future__ import annotations

import argparse
import statistics
import timeit

import numpy as np


def per_call(fn, number, repeat):
    return statistics.median(t / number for t in timeit.repeat(fn, number=number, repeat=repeat))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    r = args.repeat

    from gpunn.ops.activation import relu_backward, relu_forward
    from gpunn.ops.optim_update import sgd_update

    x = np.random.default_rng(0).standard_normal(10).astype(np.float32)
    d = np.ones_like(x)
    p, g, v = x.copy(), x.copy(), np.zeros_like(x)
    rows = [
        ("relu_forward, 10 floats", lambda: relu_forward(x), lambda: np.maximum(x, 0)),
        ("relu_backward, 10 floats", lambda: relu_backward(d, x), lambda: d * (x > 0)),
        ("sgd_update (momentum), 10 floats",
         lambda: sgd_update(p, g, v, 0.01, 0.9), None),
    ]
    print(f"{'op':36s} {'gpunn us':>10s} {'body us':>10s} {'overhead us':>12s}")
    for name, op, body in rows:
        t_op = per_call(op, 20000, r) * 1e6
        if body is None:
            print(f"{name:36s} {t_op:10.2f} {'-':>10s} {'-':>12s}")
            continue
        t_body = per_call(body, 20000, r) * 1e6
        print(f"{name:36s} {t_op:10.2f} {t_body:10.2f} {t_op - t_body:12.2f}")

    from gpunn.optim import SGD
    from gpunn.zoo import build_model
    import gpunn.losses as losses

    loss_cls = getattr(losses, "CrossEntropyLoss", None) or losses.SoftmaxCrossEntropy
    for batch in (1, 100):
        model = build_model("model4", (1, 28, 28), 10, seed=0)
        opt = SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss = loss_cls()
        xb = np.random.default_rng(1).standard_normal((batch, 1, 28, 28)).astype(np.float32)
        yb = np.arange(batch) % 10

        def step():
            logits = model.forward(xb, train=True)
            loss.forward(logits, yb)
            model.backward(loss.backward())
            opt.step()
        step()
        n = 2000 if batch == 1 else 50
        print(f"{'model4 SGD step, batch ' + str(batch):36s} {per_call(step, n, r) * 1e6:10.1f}")

    launch_rows(r)


def launch_rows(r):
    """What gpunn's Kernel.launch does on the host before CuPy's call, per launch."""
    from gpunn import kernels
    from gpunn.testing import emulated_cuda, emulated_kernel
    x = np.zeros((2, 8, 14, 14), np.float32)
    col = np.zeros((72, 2 * 14 * 14), np.float32)
    rows = [("im2col (2 arrays, 12 ints)", "im2col", (x, col, 2, 8, 14, 14, 3, 3, 1, 1, 1, 1, 14, 14)),
            ("conv_output_forward (3 arrays, 3 ints, 2 bools)", "conv_output_forward",
             (col, x, x, 2, 8, 196, True, False)),
            ("softmax_xent_finish (5 arrays, 3 ints)", "softmax_xent_finish",
             (x, x, x, x, x, 100, 1, 1))]
    print(f"\n{'kernel launch, host side':48s} {'general us':>10s} {'fast us':>10s} "
          f"{'check us':>9s} {'grid us':>8s}")
    for name, base, vals in rows:
        k = emulated_kernel(base, np.float32)
        t_gen = per_call(lambda: k._marshal_general(vals), 20000, r) * 1e6
        t_fast = per_call(lambda: k.marshal(*vals), 20000, r) * 1e6
        args = k._marshal_general(vals)
        # (the other rows' stand-in arrays have the wrong dtypes for the check)
        chk = f"{per_call(lambda: k._check(args), 20000, r) * 1e6:9.2f}" if base == "im2col" else f"{'-':>9s}"
        t_grid = per_call(lambda: kernels.launch_config(100000), 20000, r) * 1e6
        print(f"{name:48s} {t_gen:10.2f} {t_fast:10.2f} {chk} {t_grid:8.2f}")

    import gpunn
    from gpunn.fuse import fuse
    from gpunn.optim import SGD
    from gpunn.train.step import TrainStep
    from gpunn.zoo import build_model
    model = fuse(build_model("model4", (1, 28, 28), 10, seed=0))
    xb = np.random.default_rng(1).standard_normal((4, 1, 28, 28)).astype(np.float32)
    yb = np.arange(4) % 10
    with emulated_cuda():
        step = TrainStep(model, gpunn.CrossEntropyLoss(), SGD(model.parameters(), lr=0.01,
                                                              momentum=0.9))
        step(xb, yb)
        kernels.reset_launch_counts()
        step(xb, yb)
    print(f"gpunn kernel launches in one eager model4 step on the CUDA path: "
          f"{sum(kernels.count_launches().values())}")


if __name__ == "__main__":
    main()
