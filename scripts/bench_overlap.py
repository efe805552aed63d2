"""Does starting the gradient all-reduce during the backward pass pay? One table, one run.

    mpiexec -n 2 python scripts/bench_overlap.py [--models mlp1000,model4,cnn-bn]
        [--batch 50] [--buckets 0,1,25] [--rounds 15] [--steps 5]

Every rank builds one model and one DistributedTrainStep per bucket size (0: one all-reduce
after the backward pass; else buckets of that many MiB started as their layers finish,
gpunn/distributed/buckets.py), all from the same weights, and times them in interleaved
rounds (each round runs every configuration once, in a rotating order), so the machine's
drift hits all alike. Rank 0 prints the median step time per configuration, the ratio to
bucket 0, how many buckets there were, how long the step waited for the all-reduce after the
backward pass (median; the part of it the buckets did not hide), and the all-reduce of the
whole buffer alone.
Synthetic data; one thread per rank (set GPUNN_THREADS / OPENBLAS_NUM_THREADS yourself to
change that).

On one machine the ranks' own cores do both the backward pass and the reduction, so there is
little to hide. ``--link-gbps G`` models a network between the ranks instead: each all-reduce
also takes its ring transfer time on a G Gbit/s link, 2 (N-1)/N x bytes / bandwidth, after
the transfers started before it (one link carries one at a time), which passes while the rank
computes (as a NIC's or NCCL's transfers do) and is waited out only
when the step needs the result. It shows how much of that time the buckets hide; the
reduction's real cost on this machine is paid in both cases.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("GPUNN_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import gpunn  # noqa: E402
import gpunn.distributed as dist  # noqa: E402
from gpunn.bench.steps import input_shape  # noqa: E402


class Link(dist.Communicator):
    """``comm`` with every all-reduce also taking its transfer time on a ``gbps`` link."""

    def __init__(self, comm, gbps):
        self.comm, self.bytes_per_s = comm, gbps * 1e9 / 8
        self.rank, self.size, self.backend = comm.rank, comm.size, f"{comm.backend} + link"
        self.free_at = 0.0                    # the link carries one transfer after another

    def wire(self, x):
        return 2 * (self.size - 1) / self.size * x.nbytes / self.bytes_per_s

    def iallreduce(self, x, op="sum", *, name=""):
        self.free_at = max(time.perf_counter(), self.free_at) + self.wire(x)
        return _Delayed(self.comm.iallreduce(x, op, name=name), self.free_at)

    def allreduce(self, x, op="sum", *, name=""):
        self.iallreduce(x, op, name=name).wait()
        return x

    def barrier(self):
        self.comm.barrier()


class _Delayed:
    def __init__(self, handle, until):
        self.handle, self.until = handle, until

    def test(self):
        return self.handle.test() and time.perf_counter() >= self.until

    def wait(self):
        self.handle.wait()
        left = self.until - time.perf_counter()
        if left > 0:
            time.sleep(left)


class _Timed:
    """The gradient hook, timed: what the step waits for the all-reduce after backward."""

    def __init__(self, hook):
        self.hook, self.spent = hook, []

    def __call__(self, step):
        t = time.perf_counter()
        self.hook(step)
        self.spent.append(time.perf_counter() - t)


def measure(comm, model, batch, buckets, rounds, steps):
    rng = np.random.default_rng(comm.rank)
    x = rng.random((batch, *input_shape(model)), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    runs = {}
    for mb in buckets:
        net = gpunn.build_model(model, input_shape(model), 10, seed=0)
        opt = gpunn.SGD(net.parameters(), lr=0.01, momentum=0.9)
        step = dist.DistributedTrainStep(net, gpunn.CrossEntropyLoss(), opt, comm=comm,
                                         bucket_mb=mb)
        step.after_backward[0] = _Timed(step.after_backward[0])
        runs[mb] = step
        for _ in range(3):
            step(x, y, total=batch * comm.size)
    times = {mb: [] for mb in buckets}
    for step in runs.values():
        step.after_backward[0].spent.clear()
    for r in range(rounds):
        order = buckets[r % len(buckets):] + buckets[:r % len(buckets)]
        for mb in order:
            comm.barrier()
            t = time.perf_counter()
            for _ in range(steps):
                runs[mb](x, y, total=batch * comm.size)
            comm.barrier()
            times[mb].append((time.perf_counter() - t) / steps)
    g = runs[buckets[0]].optimizer.slots[0].grads
    ar = []
    for _ in range(20):
        comm.barrier()
        t = time.perf_counter()
        comm.allreduce(g)
        ar.append(time.perf_counter() - t)
    n_buckets = {mb: (len(s.buckets) if s.buckets is not None else 1) for mb, s in runs.items()}
    waits = {mb: float(np.median(s.after_backward[0].spent)) for mb, s in runs.items()}
    return {mb: float(np.median(v)) for mb, v in times.items()}, n_buckets, \
        float(np.median(ar)), g.nbytes, waits


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mlp1000,model4,cnn-bn")
    ap.add_argument("--batch", type=int, default=50, help="per rank")
    ap.add_argument("--buckets", default="0,1,25", help="bucket sizes in MiB (0: no overlap)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=5, help="steps per timed round")
    ap.add_argument("--link-gbps", type=float, default=0,
                    help="model a network link of this many Gbit/s between the ranks (0: none)")
    a = ap.parse_args()
    comm = dist.init()
    if a.link_gbps > 0:
        comm = Link(comm, a.link_gbps)
    buckets = [float(b) for b in a.buckets.split(",")]
    rows = []
    for model in a.models.split(","):
        rows.append((model, *measure(comm, model, a.batch, buckets, a.rounds, a.steps)))
    if comm.rank != 0:
        return
    print(f"{comm.size} ranks ({comm.backend}), batch {a.batch} per rank, "
          f"{os.environ.get('GPUNN_THREADS')} thread(s) each; median of {a.rounds} interleaved "
          f"rounds of {a.steps} steps\n")
    head = "| model | gradients | all-reduce alone | " + " | ".join(
        f"bucket {b:g} MiB" if b else "after backward" for b in buckets) + " |"
    print(head)
    print("|" + "---|" * (3 + len(buckets)))
    for model, t, n, ar, nbytes, waits in rows:
        base = t[buckets[0]]
        cells = [f"{t[b] * 1e3:.2f} ms" + ("" if b == buckets[0] else
                                           f" ({t[b] / base:.3f}x, {n[b]} buckets)")
                 + f", waits {waits[b] * 1e3:.2f}" for b in buckets]
        print(f"| {model} | {nbytes / 1e6:.1f} MB | {ar * 1e3:.2f} ms | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
