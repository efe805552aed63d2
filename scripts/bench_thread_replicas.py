"""A measured-and-rejected idea, kept so it can be rerun: data parallelism over threads inside
one training step (docs/benchmarks/README.md, "Measured and not kept").

Two replicas of the model share the parameter values; each runs forward and backward on half
the batch with one BLAS thread. Prints, side by side in one run (interleaved rounds, medians):
the two halves one after the other, the two halves on two threads at once, and the whole batch
on one thread.

    python scripts/bench_thread_replicas.py [MODEL] [BATCH] [SWITCH_INTERVAL_S]
"""
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from threadpoolctl import threadpool_limits

import gpunn
import gpunn.threads
from gpunn.bench.steps import _batch, input_shape
from gpunn.fuse import fuse
from gpunn.zoo import build_model


def main():
    name = sys.argv[1] if len(sys.argv) > 1 else "model4"
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    sys.setswitchinterval(float(sys.argv[3]) if len(sys.argv) > 3 else 0.005)
    gpunn.threads.set_num_threads(1)
    shape = input_shape(name)
    x, y = _batch(name, batch)
    main_model = build_model(name, shape, 10, seed=0)
    replicas = []
    for _ in range(2):
        rep = fuse(build_model(name, shape, 10, seed=0))       # as gpunn train runs it
        for p0, p in zip(main_model.parameters(), rep.parameters()):
            p.bind(p0.data, p.grad)                  # shared values, own gradients
        replicas.append((rep, gpunn.CrossEntropyLoss()))
    half = batch // 2
    parts = [(0, half), (half, batch)]
    pool = ThreadPoolExecutor(1)

    def run(r, lo, hi):
        model, loss = replicas[r]
        out = model.forward(x[lo:hi], train=True)
        loss.forward(out, y[lo:hi])
        model.backward(loss.backward(), input_grad=False)

    def serial():
        with threadpool_limits(1, "blas"):
            run(0, *parts[0])
            run(1, *parts[1])

    def two_threads():
        with threadpool_limits(1, "blas"):
            other = pool.submit(run, 1, *parts[1])
            run(0, *parts[0])
            other.result()

    def whole():
        with threadpool_limits(1, "blas"):
            run(0, 0, batch)

    fns = {"halves one after the other": serial, "halves on two threads": two_threads,
           "whole batch, one thread": whole}
    for f in fns.values():
        for _ in range(3):
            f()
    times = {k: [] for k in fns}
    for _ in range(10):
        for k, f in fns.items():
            time.sleep(0.1)
            t0, n = time.perf_counter(), 0
            while time.perf_counter() - t0 < 0.1:
                f()
                n += 1
            times[k].append((time.perf_counter() - t0) / n * 1e3)
    for k, v in times.items():
        print(f"{name} batch {batch}: {k:28s} {statistics.median(v):7.2f} ms")


if __name__ == "__main__":
    main()
