"""``gpunn bench``: time zoo models' training steps in gpunn and PyTorch, side by side.

For each model, device and batch size every implementation (gpunn, PyTorch, and on a GPU both
again with CUDA graphs) is built and warmed up, then timed in interleaved rounds (A B C A B C
...), so a machine that slows down mid-run slows every column alike. A round is a block of
~50 ms of steps after a short pause on the CPU (see _time_interleaved) and enough steps
between two device syncs to last ~20 ms on a GPU. Quoted: the median
step time, images/s and one epoch's time from it, and the ratio gpunn/PyTorch as the median of
the per-round ratios (robust to drift, close to the ratio of medians on a quiet machine).
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field

import numpy as np

from .floor import measure_device, model_floor
from .steps import CIFAR, Unavailable, input_shape, make_step

__all__ = ["BenchConfig", "run_bench", "format_report", "write_results", "DEFAULT_MODELS"]

DEFAULT_MODELS = ("model1", "model2", "mlp1000", "model4", "cnn-bn", "resnet-small",
                  "vgg-cifar", "resnet20")


def default_batches(model: str, quick: bool = False) -> tuple:
    if model in CIFAR:
        return (128,)
    return (100,) if quick else (100, 512)


def epoch_size(model: str) -> int:
    return 50_000 if model in CIFAR else 60_000


@dataclass
class BenchConfig:
    models: tuple = DEFAULT_MODELS
    devices: tuple = ("cpu",)          # "cpu", "cuda", "cuda:N"
    batches: tuple | None = None       # None: 100 and 512 (CIFAR models: 128)
    threads: int | None = None         # None: gpunn.threads' default
    seconds: float = 4.0               # timing budget per implementation and case
    min_rounds: int = 7
    warmup: int = 3
    memory: bool = True
    torch: bool = True
    quick: bool = False
    log: object = None                 # callable(str) for progress lines
    procs: int | None = None           # the gpunn --procs column's processes (None: threads)


@dataclass
class Case:
    model: str
    device: str
    batch: int
    impls: dict = field(default_factory=dict)      # impl -> {"step_ms", ...} or {"error"}
    ratios: dict = field(default_factory=dict)     # "gpunn/torch" -> median per-round ratio
    floor: dict = field(default_factory=dict)

    def as_dict(self):
        return {"model": self.model, "device": self.device, "batch": self.batch,
                "impls": self.impls, "ratios": self.ratios, "floor": self.floor}


def _impls_for(device: str, with_torch: bool, procs: int | None = None) -> list:
    from ..threads import get_num_threads
    impls = ["gpunn"]
    if device.startswith("cuda"):
        impls.append("gpunn-graph")
    elif (procs or get_num_threads()) > 1:
        impls.append("gpunn-procs")             # gpunn train --procs: one process per thread
    if with_torch:
        impls.append("torch")
        if device.startswith("cuda"):
            impls.append("torch-graph")
    return impls


CPU_PAUSE = 0.15     # s before each CPU block: a BLAS's idle threads stop spinning by then


def _time_interleaved(steps: dict, cfg: BenchConfig, cuda: bool) -> dict:
    """impl -> list of per-step seconds, one per round, rounds interleaved across impls.

    GPU: a round is enough steps between two syncs to last ~20 ms. CPU: a round is a block of
    steps (~50 ms of them, at most 20) after a pause of CPU_PAUSE and one untimed step. The
    pause matters: a BLAS's idle worker threads spin after their last call (OpenBLAS's for
    ~0.1 s by default; ~1.5 ms as gpunn loads it, gpunn/threads.py, but PyTorch's OpenMP
    threads have their own spin), and on a 2-core machine a PyTorch step that started while
    OpenBLAS's spun took 97 ms instead of 36 (cnn-bn, batch 100): back-to-back interleaving
    would charge one library's idle threads to the other.
    """
    inner = {}
    for name, s in steps.items():
        for _ in range(cfg.warmup if not cuda else max(cfg.warmup, 10)):
            s.run()
        s.sync()
        t0 = time.perf_counter()
        s.run()
        s.sync()
        one = max(time.perf_counter() - t0, 1e-6)
        inner[name] = max(1, int(0.02 / one)) if cuda else max(1, min(20, int(0.05 / one)))
    est = {n: _estimate(steps[n], inner[n]) for n in steps}           # s per step
    per_round = sum(inner[n] * est[n] if cuda else CPU_PAUSE + (inner[n] + 1) * est[n]
                    for n in steps)
    rounds = max(cfg.min_rounds, min(300, int(cfg.seconds * len(steps) / max(per_round, 1e-6))))
    times = {n: [] for n in steps}
    for _ in range(rounds):
        for name, s in steps.items():
            k = inner[name]
            if not cuda:
                time.sleep(CPU_PAUSE)
                s.run()                      # untimed: caches and threads back up to speed
            t0 = time.perf_counter()
            for _ in range(k):
                s.run()
            s.sync()
            times[name].append((time.perf_counter() - t0) / k)
    return times


def _estimate(step, k):
    t0 = time.perf_counter()
    for _ in range(k):
        step.run()
    step.sync()
    return (time.perf_counter() - t0) / k


def _log(cfg, msg):
    if cfg.log:
        cfg.log(msg)


def run_case(model: str, device: str, batch: int, cfg: BenchConfig, rates: dict) -> Case:
    from ..threads import get_num_threads
    from ..zoo import build_model
    case = Case(model, device, batch)
    cuda = device.startswith("cuda")
    names = _impls_for(device, cfg.torch, cfg.procs)
    steps = {}
    for name in names:
        try:
            steps[name] = make_step(name, model, batch, device, procs=cfg.procs)
        except Unavailable as e:
            case.impls[name] = {"error": str(e)}
        except Exception as e:                         # a failure is a result, not a crash
            case.impls[name] = {"error": f"{type(e).__name__}: {e}"}
    if cuda and cfg.memory:
        from .memory import gpu_peak
        for name in list(steps):
            steps[name].close()
            steps[name] = None
        for name in list(steps):
            try:
                case.impls[name] = {"peak_bytes": gpu_peak(
                    name, lambda: make_step(name, model, batch, device))}
            except Exception as e:
                case.impls[name] = {"error": f"{type(e).__name__}: {e}"}
                del steps[name]
        steps = {n: make_step(n, model, batch, device) for n in steps}
    try:
        times = _time_interleaved(steps, cfg, cuda)
    finally:
        for s in steps.values():
            if s.close:
                s.close()
    for name, ts in times.items():
        med = statistics.median(ts)
        info = case.impls.setdefault(name, {})
        info.update({"step_ms": 1e3 * med, "min_ms": 1e3 * min(ts), "rounds": len(ts),
                     "images_s": batch / med,
                     "epoch_s": med * math.ceil(epoch_size(model) / batch)})
    for a, b in (("gpunn", "torch"), ("gpunn-procs", "torch"), ("gpunn-graph", "torch-graph"),
                 ("gpunn-graph", "torch")):
        if a in times and b in times:
            case.ratios[f"{a}/{b}"] = statistics.median(
                x / y for x, y in zip(times[a], times[b]))
    if not cuda and cfg.memory:
        # child processes, side by side: peak RSS is per process, so they may share the cores
        from concurrent.futures import ThreadPoolExecutor

        from .memory import host_peak
        one = [n for n in times if n != "gpunn-procs"]     # RSS is per process
        with ThreadPoolExecutor(len(one) or 1) as ex:
            peaks = dict(zip(one, ex.map(
                lambda n: host_peak(n, model, batch, get_num_threads(),
                                    steps=2 if cfg.quick else 3), one)))
        for name, r in peaks.items():
            if "error" in r:
                case.impls[name]["memory_error"] = r["error"]
            else:
                case.impls[name]["peak_bytes"] = r["peak_bytes"] - r["baseline_bytes"]
                case.impls[name]["peak_rss_bytes"] = r["peak_bytes"]
    m = build_model(model, input_shape(model), 10, seed=0)
    case.floor = model_floor(m, input_shape(model), batch, rates).as_dict()
    return case


def _versions() -> dict:
    v = {"python": platform.python_version(), "numpy": np.__version__}
    from .. import __version__
    v["gpunn"] = __version__
    try:
        import torch
        v["torch"] = torch.__version__
    except ImportError:
        v["torch"] = None
    try:
        import cupy
        v["cupy"] = cupy.__version__
    except ImportError:
        v["cupy"] = None
    try:
        cfg = np.show_config(mode="dicts")
        v["blas"] = cfg["Build Dependencies"]["blas"].get("name", "")
    except Exception:
        pass
    from ..ops.mkl import describe
    from ..threads import blas_spin, malloc_setting, numpy_hugepages
    v["blas_spin"] = blas_spin()
    v["numpy_hugepages"] = numpy_hugepages()
    v["malloc"] = malloc_setting()
    v["gemm_blas"] = describe()
    return v


def _commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                           capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode:
        return None
    return r.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device_name(device: str) -> str:
    if not device.startswith("cuda"):
        return _cpu_name()
    import cupy as cp
    from ..backend import resolve_device
    dev = resolve_device(device, quiet=True)
    props = cp.cuda.runtime.getDeviceProperties(dev.index)
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def run_bench(cfg: BenchConfig) -> dict:
    """Every case of ``cfg``; the JSON-ready result with metadata."""
    from ..threads import get_num_threads, set_num_threads
    if cfg.threads is not None:
        set_num_threads(cfg.threads)
    threads = get_num_threads()
    if cfg.torch:
        try:
            import torch
            torch.set_num_threads(threads)
        except ImportError:
            cfg.torch = False
    result = {"meta": {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                       "commit": _commit(), "versions": _versions(), "threads": threads,
                       "host_cpu": _cpu_name(), "quick": cfg.quick,
                       "affinity": len(os.sched_getaffinity(0))
                       if hasattr(os, "sched_getaffinity") else os.cpu_count()},
              "devices": {}, "cases": []}
    for device in cfg.devices:
        _log(cfg, f"measuring {device}: GEMM rate and memory bandwidth")
        rates = measure_device(device, quick=cfg.quick)
        result["devices"][device] = {"name": _device_name(device), **rates}
        for model in cfg.models:
            for batch in (cfg.batches or default_batches(model, cfg.quick)):
                _log(cfg, f"{device} {model} batch {batch}")
                result["cases"].append(run_case(model, device, batch, cfg, rates).as_dict())
    return result


# -- the report ---------------------------------------------------------------------------------
def _f(v, fmt="{:.2f}"):
    return "-" if v is None else fmt.format(v)


def _mib(b):
    return None if b is None else b / 2**20


def format_report(result: dict) -> str:
    """The markdown report: metadata, the side-by-side table, the floors."""
    meta = result["meta"]
    v = meta["versions"]
    lines = [f"gpunn bench, {meta['date']}, commit {meta['commit'] or '?'}"
             f"{' (--quick)' if meta.get('quick') else ''}",
             f"gpunn {v['gpunn']}, numpy {v['numpy']} ({v.get('blas', '?')}), torch "
             f"{v['torch'] or 'not installed'}, cupy {v['cupy'] or 'not installed'}, "
             f"python {v['python']}; {meta['threads']} CPU threads "
             f"({meta['affinity']} cores usable), host CPU: {meta['host_cpu']}"
             + (f"; OpenBLAS idle spin: {v['blas_spin']}" if v.get("blas_spin") else "")
             + (f"; CPU GEMMs: {v['gemm_blas']}" if v.get("gemm_blas") else "")
             + (f"; NumPy huge pages: {v['numpy_hugepages']}" if v.get("numpy_hugepages")
                else "")
             + (f"; malloc: {v['malloc']}" if v.get("malloc") else ""), ""]
    for dev, d in result["devices"].items():
        lines.append(f"- {dev}: {d['name']}; float32 GEMM {d['gemm_flops_s'] / 1e9:.0f} GFLOP/s "
                     f"(n={d['gemm_n']}), copy bandwidth {d['bandwidth_b_s'] / 1e9:.1f} GB/s")
    lines += ["", "Median step time (ms) after warm-up, interleaved rounds; ratio = median of "
              "per-round gpunn/PyTorch (< 1: gpunn faster). Peak memory: host RSS growth on the "
              "CPU, allocator peak (reserved) on a GPU. gpunn --procs: the same batch split "
              "between one process per thread (gpunn train --procs, SyncBatchNorm; rank 0's "
              "clock).", ""]
    head = ["model", "device", "batch", "gpunn ms", "torch ms", "gpunn/torch", "gpunn img/s",
            "torch img/s", "epoch s gpunn", "epoch s torch", "peak MiB gpunn", "peak MiB torch"]
    gpu = any(c["device"].startswith("cuda") for c in result["cases"])
    procs = any("gpunn-procs" in c["impls"] for c in result["cases"])
    if procs:
        head += ["gpunn --procs ms", "procs/torch"]
    if gpu:
        head += ["gpunn graph ms", "torch graph ms", "graph/graph", "gpunn graph/torch eager"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    errors = []
    for c in result["cases"]:
        g, t = c["impls"].get("gpunn", {}), c["impls"].get("torch", {})
        row = [c["model"], c["device"], str(c["batch"]), _f(g.get("step_ms")),
               _f(t.get("step_ms")), _f(c["ratios"].get("gpunn/torch")),
               _f(g.get("images_s"), "{:.0f}"), _f(t.get("images_s"), "{:.0f}"),
               _f(g.get("epoch_s"), "{:.1f}"), _f(t.get("epoch_s"), "{:.1f}"),
               _f(_mib(g.get("peak_bytes")), "{:.0f}"), _f(_mib(t.get("peak_bytes")), "{:.0f}")]
        if procs:
            row += [_f(c["impls"].get("gpunn-procs", {}).get("step_ms")),
                    _f(c["ratios"].get("gpunn-procs/torch"))]
        if gpu:
            gg, tg = c["impls"].get("gpunn-graph", {}), c["impls"].get("torch-graph", {})
            row += [_f(gg.get("step_ms")), _f(tg.get("step_ms")),
                    _f(c["ratios"].get("gpunn-graph/torch-graph")),
                    _f(c["ratios"].get("gpunn-graph/torch"))]
        lines.append("| " + " | ".join(row) + " |")
        for name, info in c["impls"].items():
            for key in ("error", "memory_error"):
                if key in info:
                    errors.append(f"- {c['model']} {c['device']} batch {c['batch']} {name}: "
                                  f"{info[key]}")
    if errors:
        lines += ["", "Not measured:"] + sorted(set(errors))
    lines += ["", "Floors: FLOPs and minimum bytes of one step (gpunn/bench/floor.py), the time "
              "each implies at the measured rates, and the gpunn step against the floor.", "",
              "| model | device | batch | GFLOP/step | MB/step | GEMM-bound ms | memory-bound ms "
              "| floor ms | gpunn / floor |", "|---|---|---|---|---|---|---|---|---|"]
    for c in result["cases"]:
        f, g = c["floor"], c["impls"].get("gpunn", {}).get("step_ms")
        lines.append(f"| {c['model']} | {c['device']} | {c['batch']} | {f['flops'] / 1e9:.3f} | "
                     f"{f['bytes'] / 1e6:.1f} | {f['flops_ms']:.3f} | {f['bytes_ms']:.3f} | "
                     f"{f['floor_ms']:.3f} | {_f(g / f['floor_ms'] if g else None, '{:.1f}x')} |")
    return "\n".join(lines) + "\n"


def write_results(result: dict, out_dir: str) -> tuple:
    """docs/benchmarks/bench-<devices>-<date>.{json,md}; returns the two paths."""
    os.makedirs(out_dir, exist_ok=True)
    tag = "-".join(d.replace(":", "") for d in result["devices"]) or "none"
    stamp = result["meta"]["date"].replace(":", "").replace("-", "")[:13]
    base = os.path.join(out_dir, f"bench-{tag}-{stamp}")
    with open(base + ".json", "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
        f.write("\n")
    with open(base + ".md", "w") as f:
        f.write(format_report(result))
    return base + ".json", base + ".md"
