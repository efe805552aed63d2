"""Where a `gpunn train --procs` rank's training step goes: per layer, the reduction, the update.

    python scripts/profile_procs_rank.py [--model cnn-bn] [--batch 100] [--procs 2] [--steps 60]

Forks --procs ranks sharing one model (as `gpunn bench`'s "gpunn --procs" column does:
SyncBatchNorm, the batch split between the ranks, one thread each), takes --steps timed steps
after a warm-up, and prints rank 0's median step and the median time of each layer's forward
and backward, of the shared gradient reduction and of the update, and how long each rank
waited at the ranks' barriers per step. Layers run fused (gpunn.fuse) are timed as one piece:
their time is the step's minus the pieces'. GPUNN_BLAS=openblas times the step without MKL.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn-bn")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    a = ap.parse_args(argv)
    sys.path.insert(0, ".")
    import gpunn.distributed.shm as shm
    from gpunn.bench.steps import LR, MOMENTUM, _batch, input_shape
    from gpunn.distributed import DistributedTrainStep, broadcast_model, broadcast_optimizer
    from gpunn.distributed.data import shard
    from gpunn.fuse import fuse
    from gpunn.layers.norm import SyncBatchNorm
    from gpunn.losses import CrossEntropyLoss
    from gpunn.ops.mkl import describe
    from gpunn.optim import SGD
    from gpunn.zoo import build_model

    times: dict = {}

    def timed(name, fn):
        def run(*args, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                times.setdefault(name, []).append(time.perf_counter() - t0)
        return run

    waited = [0.0]
    wait = shm._Shared.wait

    def counted_wait(self, rank, timeout):
        t0 = time.perf_counter()
        try:
            return wait(self, rank, timeout)
        finally:
            waited[0] += time.perf_counter() - t0
    shm._Shared.wait = counted_wait
    for name in ("reduce", "update"):
        setattr(shm.SharedTraining, name, timed(name, getattr(shm.SharedTraining, name)))

    comm = shm.launch(a.procs)
    m = build_model(a.model, input_shape(a.model), 10, seed=0)
    SyncBatchNorm.convert_sync_batchnorm(m, comm)
    fuse(m)
    opt = SGD(m.parameters(), lr=LR, momentum=MOMENTUM)
    broadcast_model(m, comm)
    broadcast_optimizer(opt, comm)
    step = DistributedTrainStep(m, CrossEntropyLoss(), opt, comm=comm)
    for i, layer in enumerate(m.layers):
        label = f"{i} {type(layer).__name__}"
        layer.forward = timed(f"{label} forward", layer.forward)
        layer.backward = timed(f"{label} backward", layer.backward)
    x, y = _batch(a.model, a.batch)
    lo, hi = shard(a.batch, comm.size, comm.rank)
    x, y = x[lo:hi], y[lo:hi]
    for _ in range(5):
        step(x, y, total=a.batch)
    times.clear()
    waited[0] = 0.0
    steps = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step(x, y, total=a.batch)
        steps.append(time.perf_counter() - t0)
    got = comm.allgather_object(1e3 * waited[0] / a.steps)
    if comm.rank == 0:
        print(f"{a.model}, batch {a.batch} over {comm.size} ranks ({hi - lo} here), "
              f"CPU GEMMs: {describe()}")
        print(f"rank 0 step: median {1e3 * statistics.median(steps):.2f} ms; waiting at the "
              f"barriers per step: " + ", ".join(f"rank {r} {w:.2f} ms" for r, w in enumerate(got)))
        pieces = 0.0
        for name, v in times.items():
            med = 1e3 * statistics.median(v)
            pieces += med
            print(f"  {name:32s} {med:8.3f} ms")
        print(f"  {'(fused layers, the rest)':32s} {1e3 * statistics.median(steps) - pieces:8.3f} ms")
    sys.exit(comm.finish(0))


if __name__ == "__main__":
    main()
