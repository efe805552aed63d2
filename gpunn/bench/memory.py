"""Peak memory of training a model: host RSS on the CPU, the allocator's peak on a GPU.

CPU: each (implementation, model, batch) runs in a fresh process (``python -m
gpunn.bench.memory IMPL MODEL BATCH DEVICE THREADS STEPS``) that imports its framework,
records its resident set, builds the model, runs the steps, and reports the peak resident set
(``VmHWM``) and that baseline. The benchmark quotes peak - baseline: the memory the model's
training needs beyond the framework's own import (PyTorch's libraries alone are ~300 MB).

GPU (in the benchmark's process, one implementation at a time): gpunn's peak is the bytes
CuPy's memory pool holds after the steps, the pool emptied before the model was built (the
pool keeps every block it has handed out, so that is its peak); PyTorch's is
``torch.cuda.max_memory_reserved()`` after ``empty_cache()`` and ``reset_peak_memory_stats()``.
Both are the caching allocators' reserved bytes, so the two columns measure the same thing.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

__all__ = ["host_peak", "gpu_peak"]


def _status_bytes(key: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process from /proc/self/status, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def host_peak(impl: str, model: str, batch: int, threads: int, steps: int = 3,
              timeout: float = 600) -> dict:
    """{"peak_bytes", "baseline_bytes"} of a child process training ``model``; or
    {"error": ...} when it cannot run."""
    cmd = [sys.executable, "-m", "gpunn.bench.memory", impl, model, str(batch), "cpu",
           str(threads), str(steps)]
    env = dict(os.environ, GPUNN_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode or not lines:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0]}
    return json.loads(lines[-1])


def gpu_peak(impl: str, make, steps: int = 3) -> int:
    """Peak reserved bytes while ``make()`` builds a Step and runs ``steps`` of it."""
    if impl.startswith("torch"):
        import torch
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        step = make()
        for _ in range(steps):
            step.run()
        step.sync()
        peak = int(torch.cuda.max_memory_reserved())
    else:
        import cupy as cp
        pool = cp.get_default_memory_pool()
        cp.cuda.Device().synchronize()
        pool.free_all_blocks()
        step = make()
        for _ in range(steps):
            step.run()
        step.sync()
        peak = int(pool.total_bytes())
    if step.close:
        step.close()
    return peak


def _child(impl, model, batch, device, threads, steps):
    from ..threads import set_num_threads
    from .steps import Unavailable, make_step
    set_num_threads(int(threads))
    if impl.startswith("torch"):
        import torch
        torch.set_num_threads(int(threads))
    else:
        import gpunn  # noqa: F401  (import cost in the baseline, as torch's is)
    base = _status_bytes("VmRSS")
    try:
        step = make_step(impl, model, int(batch), device)
    except Unavailable as e:
        print(json.dumps({"error": str(e)}))
        return
    for _ in range(int(steps)):
        step.run()
    step.sync()
    # VmHWM, not ru_maxrss: a child started from a big parent can inherit the parent's
    # ru_maxrss across fork + exec, while VmHWM belongs to the new address space
    peak = _status_bytes("VmHWM")
    print(json.dumps({"peak_bytes": peak, "baseline_bytes": base}))


if __name__ == "__main__":
    _child(*sys.argv[1:7])
