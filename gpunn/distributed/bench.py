"""Data-parallel scaling on the CPU: ``gpunn bench --ranks 1,2`` (or
``python scripts/bench_distributed.py``).

For each model, three ways to train at the same per-core batch B:

    1 rank  x 1 thread    batch B       the per-core baseline
    1 rank  x N threads   batch N*B     one process using all N cores (gpunn.threads, BLAS)
    N ranks x 1 thread    batch B each  data-parallel over MPI (global batch N*B)
    N forked x 1 thread   batch B each  the same, forked ranks sharing memory (--procs)
    N independent copies  batch B each  no communication at all: the machine's ceiling
                                        (cores that share a physical core or memory
                                        bandwidth slow each other down without any MPI)

Each runs in its own process(es) with the thread count pinned (GPUNN_THREADS and the BLAS
variables), on synthetic data already in memory; a step is DistributedTrainStep (plain
TrainStep for one rank) with SGD momentum. The step time is the median over rounds of
``steps`` steps after a warm-up; the configurations are repeated ``repeats`` times in
interleaved order and the fastest repeat kept (on a machine shared with other work, the least
disturbed run is the closest to what the configuration can do). Scaling efficiency is
images/s of N ranks over N times the baseline's; the all-reduce of the gradient buffer is
timed alone too, to show what the step spends communicating.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

__all__ = ["DEFAULT_MODELS", "run_scaling", "format_scaling", "find_mpiexec"]

DEFAULT_MODELS = ("mlp1000", "model4", "cnn-bn")


def find_mpiexec():
    """The mpiexec installed beside this interpreter (the mpich wheel puts it in the
    environment's bin), else the first on PATH, else None."""
    import shutil
    for name in ("mpiexec", "mpirun"):
        p = os.path.join(os.path.dirname(sys.executable), name)
        if os.path.exists(p):
            return p
    return shutil.which("mpiexec")


def _env(threads: int) -> dict:
    t = str(threads)
    return {**os.environ, "GPUNN_DEVICE": "cpu", "GPUNN_THREADS": t, "OMP_NUM_THREADS": t,
            "OPENBLAS_NUM_THREADS": t, "MKL_NUM_THREADS": t}


def _launch(model, batch, threads, ranks, steps, rounds, mpiexec, copies=1, forked=False):
    """One configuration's worker(s): under mpiexec for several ranks (``forked``: forked by
    the worker itself, GPUNN_PROCS, sharing memory), or ``copies`` independent single
    processes at once (the machine's ceiling: no communication at all)."""
    cmd = [sys.executable, "-m", "gpunn.distributed.bench", "--worker", model, str(batch),
           str(steps), str(rounds)]
    env = _env(threads)
    if ranks > 1 and forked:
        env["GPUNN_PROCS"] = str(ranks)
    elif ranks > 1:
        cmd = [mpiexec, "-n", str(ranks), *cmd]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(copies)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{err[-2000:]}")
        outs.append(json.loads([x for x in out.splitlines() if x.startswith("{")][-1]))
    # independent copies: the slowest one's step (they ran side by side)
    return max(outs, key=lambda o: o["step_s"])


def run_scaling(models=DEFAULT_MODELS, batch: int = 100, ranks: int = 2, *, steps: int = 10,
                rounds: int = 5, repeats: int = 3, log=None) -> dict:
    """Measure the three configurations for each model; returns the raw and the summary."""
    mpiexec = find_mpiexec()
    configs = [("1 rank x 1 thread", 1, 1, batch), (f"1 rank x {ranks} threads", 1, ranks,
                                                      batch * ranks),
               (f"{ranks} ranks x 1 thread", ranks, 1, batch),
               (f"{ranks} forked processes x 1 thread", ranks, 1, batch),
               (f"{ranks} independent processes", 1, 1, batch)]
    if mpiexec is None:                  # forked ranks need no MPI: measure those
        configs = [c for c in configs if c[0] != f"{ranks} ranks x 1 thread"]
    raw = {m: {c[0]: [] for c in configs} for m in models}
    load_before = os.getloadavg()[0]
    for rep in range(repeats):
        for m in models:
            for name, nranks, threads, b in configs:
                if log:
                    log(f"{m}: {name}, batch {b} (repeat {rep + 1}/{repeats})")
                copies = ranks if name.endswith("independent processes") else 1
                raw[m][name].append(_launch(m, b, threads, nranks, steps, rounds, mpiexec,
                                            copies, forked="forked" in name))
    rows = []
    for m in models:
        med = {}
        for name, nranks, threads, b in configs:
            runs = raw[m][name]
            step = float(min(r["step_s"] for r in runs))     # the least disturbed repeat
            procs = ranks if name.endswith("independent processes") else nranks
            med[name] = {"ranks": nranks, "threads": threads, "batch": b,
                         "global_batch": b * procs, "step_ms": step * 1e3,
                         "images_per_s": b * procs / step,
                         "allreduce_ms": float(min(r["allreduce_s"] for r in runs)) * 1e3,
                         "grad_mb": runs[0]["grad_bytes"] / 1e6}
        base, multi = med["1 rank x 1 thread"], med[f"1 rank x {ranks} threads"]
        alone = med[f"{ranks} independent processes"]
        fork = med[f"{ranks} forked processes x 1 thread"]
        dp = med.get(f"{ranks} ranks x 1 thread")
        row = {"model": m, "configs": med,
               "forked_efficiency": fork["images_per_s"] / (ranks * base["images_per_s"]),
               "threads_efficiency": multi["images_per_s"] / (ranks * base["images_per_s"]),
               "forked_vs_threads": fork["images_per_s"] / multi["images_per_s"]}
        if dp is not None:
            row.update({"efficiency": dp["images_per_s"] / (ranks * base["images_per_s"]),
                        "of_ceiling": dp["images_per_s"] / alone["images_per_s"],
                        "ranks_vs_threads": dp["images_per_s"] / multi["images_per_s"]})
        rows.append(row)
    # the machine's load average (1 min) before and after: other work on the cores skews
    # every figure, the multithreaded ones most (a thread that waits for a busy core)
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "ranks": ranks, "batch": batch,
            "load": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "cores": len(os.sched_getaffinity(0)), "steps": steps, "rounds": rounds,
            "repeats": repeats, "rows": rows, "raw": raw}


def format_scaling(result: dict) -> str:
    n = result["ranks"]
    lines = [f"Data-parallel scaling on the CPU ({result['cores']} cores), per-rank batch "
             f"{result['batch']}, fastest of {result['repeats']} interleaved repeats (each the "
             f"median of {result['rounds']} rounds of {result['steps']} steps; {result['date']}; load "
             f"average {result['load'][0]} before, {result['load'][1]} after)", "",
             f"| model | gradient | 1 rank x 1 thread | 1 rank x {n} threads (batch "
             f"{n * result['batch']}) | {n} MPI ranks x 1 thread | {n} forked x 1 thread "
             f"(--procs) | {n} independent processes | MPI all-reduce alone | scaling, {n} MPI "
             f"ranks | scaling, {n} forked | scaling, {n} threads | forked / threads |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result["rows"]:
        cfg = row["configs"]

        def cell(name):
            x = cfg.get(name)
            return "-" if x is None else f"{x['images_per_s']:,.0f} img/s ({x['step_ms']:.1f} ms)"
        mpi = cfg.get(f"{n} ranks x 1 thread")
        first = next(iter(cfg.values()))
        lines.append(
            f"| {row['model']} | {first['grad_mb']:.2f} MB | {cell('1 rank x 1 thread')} | "
            f"{cell(f'1 rank x {n} threads')} | {cell(f'{n} ranks x 1 thread')} | "
            f"{cell(f'{n} forked processes x 1 thread')} | "
            f"{cell(f'{n} independent processes')} | "
            f"{'-' if mpi is None else format(mpi['allreduce_ms'], '.2f') + ' ms'} | "
            f"{'-' if 'efficiency' not in row else format(row['efficiency'], '.0%')} | "
            f"{row['forked_efficiency']:.0%} | {row['threads_efficiency']:.0%} | "
            f"{row['forked_vs_threads']:.2f}x |")
    return "\n".join(lines)


# -- the worker: one configuration, in its own process(es) -----------------------------------------
def _worker(model: str, batch: int, steps: int, rounds: int) -> None:
    import gpunn
    from . import DistributedTrainStep, init
    from ..bench.steps import input_shape
    from ..train import TrainStep

    comm = init()
    rng = np.random.default_rng(comm.rank)
    x = rng.random((batch, *input_shape(model)), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    net = gpunn.build_model(model, input_shape(model), 10, seed=0)
    opt = gpunn.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loss = gpunn.CrossEntropyLoss()
    if comm.size > 1:
        step = DistributedTrainStep(net, loss, opt, comm=comm)
        run = lambda: step(x, y, total=batch * comm.size)        # noqa: E731
    else:
        step = TrainStep(net, loss, opt)
        run = lambda: step(x, y)                                  # noqa: E731
    for _ in range(3):
        run()
    times = []
    for _ in range(rounds):
        comm.barrier()
        t = time.perf_counter()
        for _ in range(steps):
            run()
        times.append((time.perf_counter() - t) / steps)
    grads = [s.grads for s in opt.slots]
    ar = []
    for _ in range(20):
        comm.barrier()
        t = time.perf_counter()
        for g in grads:
            comm.allreduce(g)
        ar.append(time.perf_counter() - t)
    if comm.rank == 0:
        print(json.dumps({"step_s": float(np.median(times)), "allreduce_s": float(np.median(ar)),
                          "grad_bytes": int(sum(g.nbytes for g in grads)), "ranks": comm.size,
                          "batch": batch}), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        _worker(sys.argv[2], *map(int, sys.argv[3:6]))
    else:
        print(format_scaling(run_scaling(log=lambda m: print(m, file=sys.stderr))))
