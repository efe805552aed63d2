"""gpunn against PyTorch on the CPU, timed only in quiet windows (docs/benchmarks/README.md).

    python scripts/bench_quiet.py [--models model4,cnn-bn,mlp1000] [--batch 100]
                                  [--threads 2,1] [--windows 8] [--impls gpunn,torch]

On a small shared VM a second core is often busy, and then both libraries slow down badly at
two threads. So each window waits until /proc/stat shows every core idle for 1.5 s, gives
each (implementation, thread count) a timed block (a pause so idle BLAS threads stop
spinning, one untimed step, ~50 ms of steps), and keeps the window only if the machine stayed
idle. Quoted: medians over the windows; ratios as the median of per-window ratios.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time


def _cpu_times():
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    vals = [int(v) for v in parts]
    idle = vals[3] + vals[4]
    return sum(vals), idle


def _busy_fraction(seconds):
    t0, i0 = _cpu_times()
    time.sleep(seconds)
    t1, i1 = _cpu_times()
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)


def wait_quiet(limit=0.08, probe=1.5, give_up=120):
    start = time.time()
    while time.time() - start < give_up:
        if _busy_fraction(probe) < limit:
            return True
    return False


def _block(step, threads, set_threads, seconds=0.05):
    set_threads(threads)
    time.sleep(0.15)
    step.run()
    step.sync()
    t0 = time.perf_counter()
    k = 0
    while True:
        step.run()
        k += 1
        if time.perf_counter() - t0 >= seconds or k >= 40:
            break
    step.sync()
    return (time.perf_counter() - t0) / k


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="model4,cnn-bn,mlp1000")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--threads", default="2,1")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--impls", default="gpunn,torch")
    ap.add_argument("--procs", action="store_true",
                    help="also gpunn train --procs's step (one process per thread of the "
                         "largest --threads), against torch at that thread count")
    a = ap.parse_args(argv)
    sys.path.insert(0, ".")
    import gpunn  # noqa: F401  (first: it loads NumPy's OpenBLAS with its short idle spin)
    import torch

    from gpunn.bench.steps import make_step
    from gpunn.threads import set_num_threads

    threads = [int(t) for t in a.threads.split(",")]
    impls = a.impls.split(",")
    setters = {"gpunn": set_num_threads, "torch": torch.set_num_threads}
    for model in a.models.split(","):
        steps = {i: make_step(i, model, a.batch, "cpu") for i in impls}
        procs = None
        if a.procs:
            set_num_threads(max(threads))
            procs = make_step("gpunn-procs", model, a.batch, "cpu")
            for _ in range(3):
                procs.run()
            ptimes = []
        for i, s in steps.items():
            for t in threads:
                setters[i.split("-")[0]](t)
                for _ in range(3):
                    s.run()
        times = {(i, t): [] for i in impls for t in threads}
        kept = 0
        while kept < a.windows:
            if not wait_quiet():
                print(f"# {model}: no quiet window in 120 s; timing anyway", flush=True)
            got = {(i, t): _block(steps[i], t, setters[i.split("-")[0]])
                   for t in threads for i in impls}
            if procs is not None:
                got["procs"] = _block(procs, max(threads), lambda t: None)
            if _busy_fraction(0.3) > 0.15:        # someone else came in: drop the window
                continue
            for k, v in got.items():
                if k == "procs":
                    ptimes.append(v)
                else:
                    times[k].append(v)
            kept += 1
        row = [model]
        for t in threads:
            med = {i: 1e3 * statistics.median(times[(i, t)]) for i in impls}
            row += [f"{i} {t}thr {med[i]:.2f} ms" for i in impls]
            if len(impls) > 1:
                r = statistics.median(x / y for x, y in zip(times[(impls[0], t)],
                                                          times[(impls[1], t)]))
                row.append(f"{impls[0]}/{impls[1]} {t}thr {r:.2f}")
        if procs is not None:
            t = max(threads)
            r = statistics.median(x / y for x, y in zip(ptimes, times[("torch", t)]))
            row += [f"gpunn --procs {t} {1e3 * statistics.median(ptimes):.2f} ms",
                    f"procs/torch {t}thr {r:.2f}"]
            procs.close()
        print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
