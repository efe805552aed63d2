"""Data-parallel training over many processes: MPI (mpi4py) for ranks and CPU collectives,
NCCL (cupy.cuda.nccl, bootstrapped over MPI) for GPU collectives.

    mpiexec -n 4 gpunn train --model model4 --batch-size 50      # 4 ranks x 50 = global 200

or from Python, run under ``mpiexec -n N python script.py``:

    import gpunn, gpunn.distributed as dist
    comm = dist.init()                       # joins the job's ranks (a world of one without MPI)
    device = dist.device_for_rank("auto")    # local rank r -> cuda:(r mod GPUs), else the CPU
    model = gpunn.build_model("model4", seed=0).to(device)
    opt = gpunn.SGD(model.parameters(), lr=0.05, momentum=0.9)
    dist.broadcast_model(model); dist.broadcast_optimizer(opt)      # rank 0's start for all
    loader = dist.ShardedLoader(x, y, batch_size=50, seed=0, device=device)
    step = dist.DistributedTrainStep(model, gpunn.CrossEntropyLoss(), opt, loader=loader)
    for epoch in range(5):
        step.reset_metrics(device.xp)
        for xb, yb in loader:
            step(xb, yb)                     # gradients averaged over all ranks before the update

What is kept equal, and how (PyTorch DDP's semantics, with an exact short last batch):

- parameters, buffers, dropout seeds and optimizer state start as rank 0's (broadcast);
  every rank applies the same averaged gradient, so replicas stay equal bit for bit;
- each epoch's order is the same on every rank (from seed and epoch); global batch k is
  batch k of one process at the global batch size, and rank r takes its r-th piece, so
  N ranks x batch B take exactly the steps of 1 rank x batch N*B;
- the flat gradient buffer all-reduced once per step, in buckets started during the backward
  pass (``bucket_mb``, as DDP), each rank's gradient weighted by its share of the batch (a
  short last batch split unevenly is averaged exactly);
- batch-norm statistics per rank (BatchNorm1d/2d, as DDP) or over all ranks (SyncBatchNorm);
- dropout masks differ per rank (the rank is folded into the mask stream's key; rank 0 draws
  the single-process masks) and are reproducible;
- every collective has a deadline (``timeout``, GPUNN_DIST_TIMEOUT): a rank that dies makes
  the others abort with a message instead of waiting forever.

Without mpi4py everything here still works in a world of one; ``init("mpi")`` (or an MPI
launch of several ranks) then says what to install.
"""
from __future__ import annotations

from ..backend import Device, cuda_status, resolve_device
from .comm import (DEFAULT_TIMEOUT, Communicator, LocalComm, MPIComm, number_from_env,
                   timeout_from_env)
from .data import ShardedLoader, shard
from .env import INSTALL_HINT, MPINotAvailable, import_mpi, launched_by_mpi
from .evaluate import evaluate, evaluate_shard
from .run import PeerError
from .step import (DistributedTrainStep, broadcast_model, broadcast_optimizer, set_rank,
                   sync_buffers)

__all__ = ["init", "is_initialized", "world", "several", "rank", "world_size", "local_rank", "is_main",
           "allreduce", "broadcast", "broadcast_object", "allgather_object", "barrier",
           "device_for_rank", "launched_by_mpi", "DistributedTrainStep", "ShardedLoader",
           "shard", "broadcast_model", "broadcast_optimizer", "sync_buffers", "set_rank",
           "evaluate", "evaluate_shard", "Communicator", "LocalComm", "MPIComm",
           "MPINotAvailable", "PeerError", "INSTALL_HINT", "DEFAULT_TIMEOUT", "procs_from_env"]

_WORLD: Communicator | None = None
_LOCAL = LocalComm()
BACKENDS = ("auto", "mpi", "procs", "local")


def procs_from_env() -> int | None:
    """GPUNN_PROCS as a process count (None when unset)."""
    return number_from_env("GPUNN_PROCS", int, "a whole number of processes", 1)


def init(backend: str = "auto", *, procs: int | None = None,
         timeout: float | None = None) -> Communicator:
    """Join the job's ranks and return the world communicator (idempotent).

    backend: "auto" — MPI when an MPI launcher started several ranks (PMI_SIZE,
    OMPI_COMM_WORLD_SIZE, ... see gpunn/distributed/env.py), else ``procs`` processes on this
    machine when more than one is asked for (``procs`` or GPUNN_PROCS), else a world of one;
    "mpi" — MPI always (a lone process is a world of one MPI rank: what a one-rank NCCL run
    needs); "procs" — fork ``procs`` - 1 more processes here, sharing memory, no MPI
    (gpunn/distributed/shm.py; CPU only): every rank continues from this call, so call it
    before loading data and building the model, as each MPI rank runs the whole script;
    "local" — a world of one, no MPI.
    timeout: seconds any collective may take before the job is aborted (0: none); default
    GPUNN_DIST_TIMEOUT or 300.
    """
    global _WORLD
    if backend not in BACKENDS:
        raise ValueError(f"init: backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if procs is not None and (int(procs) != procs or procs < 1):
        raise ValueError(f"init: procs must be a positive whole number, got {procs!r}")
    if timeout is not None and float(timeout) < 0:
        raise ValueError(f"init: timeout must be >= 0 seconds (0: none), got {timeout}")
    if _WORLD is not None:
        if timeout is not None:
            _WORLD.timeout = float(timeout)
        return _WORLD
    if backend == "auto":
        n = procs if procs is not None else procs_from_env()
        backend = "mpi" if launched_by_mpi() else "procs" if (n or 1) > 1 else "local"
    if backend == "procs":
        from .shm import launch
        n = procs if procs is not None else procs_from_env()
        t = timeout_from_env() if timeout is None else float(timeout)
        _WORLD = launch(n or 1, timeout=t) if (n or 1) > 1 else LocalComm()
    elif backend == "local":
        _WORLD = LocalComm()
    else:
        MPI = import_mpi("gpunn.distributed.init()")
        _WORLD = MPIComm(MPI, timeout=timeout_from_env() if timeout is None else float(timeout))
    return _WORLD


def several() -> Communicator | None:
    """The world when it has more than one rank (a data-parallel run), else None."""
    comm = world()
    return comm if comm.size > 1 else None


def is_initialized() -> bool:
    return _WORLD is not None


def world() -> Communicator:
    """The communicator from :func:`init`, or a world of one when init() was not called."""
    return _WORLD if _WORLD is not None else _LOCAL


def rank() -> int:
    return world().rank


def world_size() -> int:
    return world().size


def local_rank() -> int:
    return world().local_rank


def is_main() -> bool:
    """True on rank 0, the rank that writes files and prints."""
    return world().rank == 0


def allreduce(x, op: str = "sum"):
    """Reduce NumPy or CuPy array ``x`` over all ranks in place (op: sum, mean, max, min)."""
    return world().allreduce(x, op)


def broadcast(x, root: int = 0):
    """Overwrite ``x`` in place with rank ``root``'s values."""
    return world().broadcast(x, root)


def broadcast_object(obj, root: int = 0):
    return world().broadcast_object(obj, root)


def allgather_object(obj) -> list:
    return world().allgather_object(obj)


def barrier() -> None:
    world().barrier()


def device_for_rank(device="auto", comm=None) -> Device:
    """This rank's device: "auto" or "cuda" without an index give local rank r the GPU
    r mod (GPUs on this machine) — or the CPU where CUDA is not usable ("auto"); an explicit
    "cuda:N" or "cpu" is used as given (one value per rank, e.g. through a wrapper script)."""
    comm = world() if comm is None else comm
    spec = device.strip().lower() if isinstance(device, str) else device
    if comm.backend == "shm":               # forked processes share host memory only
        dev = resolve_device("cpu" if spec == "auto" else spec, quiet=True)
        if dev.is_cuda:
            raise ValueError(f"device {device!r}: processes forked by --procs / GPUNN_PROCS "
                             f"train on the CPU only; for GPUs launch ranks with mpiexec")
        return dev
    dev = resolve_device(spec, quiet=comm.rank != 0)
    if dev.is_cuda and spec in ("auto", "cuda"):
        _, _, count = cuda_status()
        dev = Device("cuda", comm.local_rank % max(int(count), 1))
    return dev


def _reset_for_tests() -> None:
    global _WORLD
    _WORLD = None
