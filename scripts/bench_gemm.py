"""NumPy's BLAS against PyTorch's on the GEMMs of the zoo's Linear layers, side by side.

    python scripts/bench_gemm.py [--threads 1,2] [--rounds 5]

For each shape (a Linear layer at a batch size) and each GEMM of its training step, in
gpunn's layout (W: (in, out); forward x @ W, input gradient d @ W.T, weight gradient
x.T @ d into a preallocated buffer), the median time of NumPy and of torch at the same
thread count. Each library runs in a child process of its own, one after the other, round
by round (A B A B): in one process, one library's idle BLAS threads spin on the cores the
other wants, and the second of the two looked up to 14x slower than it is.

This is what limits gpunn's GEMM-bound CPU steps (docs/benchmarks/README.md, "What limits
the missed targets"): gpunn hands these products whole to NumPy's BLAS (OpenBLAS in the
wheels) and cannot do them faster than the library does.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

SHAPES = [("mlp1000 784->1000", 100, 784, 1000),
          ("cnn-bn 6272->784, one --procs rank", 50, 6272, 784),
          ("cnn-bn 6272->784", 100, 6272, 784),
          ("vgg-cifar 4096->512", 128, 4096, 512)]

CHILD = r"""
import json, sys, time
lib, threads, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
shapes = json.loads(sys.argv[4])
import numpy as np
rng = np.random.default_rng(0)
if lib == "torch":
    import torch
    torch.set_num_threads(threads)
else:
    import gpunn  # noqa: F401  (NumPy loaded as gpunn loads it)
    from threadpoolctl import threadpool_limits
    threadpool_limits(threads, user_api="blas")
out = {}
for name, b, i, o in shapes:
    x = rng.random((b, i), dtype=np.float32); W = rng.random((i, o), dtype=np.float32)
    d = rng.random((b, o), dtype=np.float32); dW = np.empty((i, o), np.float32)
    if lib == "torch":
        x, W, d, dW = map(torch.from_numpy, (x, W, d, dW))
        mm = {"forward x @ W": lambda: x @ W, "input grad d @ W.T": lambda: d @ W.T,
              "weight grad x.T @ d": lambda: torch.matmul(x.T, d, out=dW)}
    else:
        mm = {"forward x @ W": lambda: x @ W, "input grad d @ W.T": lambda: d @ W.T,
              "weight grad x.T @ d": lambda: np.matmul(x.T, d, out=dW)}
    for op, f in mm.items():
        f(); f()
        ts = []
        for _ in range(reps):
            t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
        ts.sort()
        out[f"{name}|{op}"] = ts[len(ts) // 2]
print(json.dumps(out))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=15)
    a = ap.parse_args()
    shapes = json.dumps(SHAPES)
    print(f"median ms per GEMM over {a.rounds} interleaved rounds of child processes; "
          f"ratio = median of per-round numpy/torch")
    for t in [int(x) for x in a.threads.split(",")]:
        got = {"numpy": [], "torch": []}
        for _ in range(a.rounds):
            for lib in got:
                r = subprocess.run([sys.executable, "-c", CHILD, lib, str(t), str(a.reps), shapes],
                                   capture_output=True, text=True, check=True)
                got[lib].append(json.loads(r.stdout))
        print(f"\n{t} thread(s)\n\n| GEMM | numpy ms | torch ms | numpy/torch |\n|---|---:|---:|---:|")
        for key in got["numpy"][0]:
            n = [r[key] * 1e3 for r in got["numpy"]]
            c = [r[key] * 1e3 for r in got["torch"]]
            ratio = statistics.median(x / y for x, y in zip(n, c))
            shape, op = key.split("|")
            print(f"| {shape}: {op} | {statistics.median(n):.2f} | {statistics.median(c):.2f} "
                  f"| {ratio:.2f} |")


if __name__ == "__main__":
    main()
