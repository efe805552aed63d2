"""Communicators: a world of one process (no MPI), and MPI through mpi4py with a deadline on
every collective.

Both have the same small interface, so code written for many ranks runs unchanged alone:

    rank, size, local_rank, local_size, timeout
    allreduce(x, op="sum")      x: NumPy or CuPy array, reduced in place over all ranks; returns x
    iallreduce(x, op="sum")     the same, started now and finished by the returned handle's
                                wait() (test(): done yet?); x must not be touched until then
    broadcast(x, root=0)        x overwritten in place with root's values; returns x
                                (both take name="...": what a timeout message calls the call)
    broadcast_object(obj, root=0) -> root's obj on every rank (pickled)
    allgather_object(obj)       -> [obj of rank 0, obj of rank 1, ...]
    barrier()
    abort(message)              print message, end every rank of the job

A collective that does not finish within ``timeout`` seconds means another rank has died or
stopped: MPI itself would wait forever, so each collective is started non-blocking
(``Iallreduce``, ``Ibcast``, ...) and polled with ``Test`` until it completes or the deadline
passes; then this rank prints what it was waiting for and calls ``MPI_Abort``, which ends the
whole job. CuPy arrays go through NCCL (gpunn/distributed/nccl.py) when it is available, and
are staged through host memory and MPI otherwise.
"""
from __future__ import annotations

import os
import pickle
import sys
import time

import numpy as np

from ..backend import is_cuda_array

__all__ = ["Communicator", "LocalComm", "MPIComm", "DEFAULT_TIMEOUT", "timeout_from_env",
           "OPS", "DONE"]

DEFAULT_TIMEOUT = 300.0          # seconds; a checkpoint write on rank 0 must fit in it
OPS = ("sum", "mean", "max", "min")


def number_from_env(name: str, kind, what: str, minimum, meaning: str = ""):
    """Environment variable ``name`` as ``kind`` (int or float) of at least ``minimum``, or
    None when unset; a clear ValueError naming it otherwise. ``what``: the unit, for the
    message ("a number of seconds"); ``meaning``: what the minimum means, if anything."""
    v = os.environ.get(name, "").strip()
    if not v:
        return None
    try:
        x = kind(v)
    except ValueError:
        raise ValueError(f"{name} must be {what}, got {v!r}") from None
    if x < minimum:
        raise ValueError(f"{name} must be >= {minimum}{f' ({meaning})' if meaning else ''}, "
                         f"got {x}")
    return x


def timeout_from_env(default: float = DEFAULT_TIMEOUT) -> float:
    """GPUNN_DIST_TIMEOUT (seconds; 0 = wait forever) or ``default``."""
    t = number_from_env("GPUNN_DIST_TIMEOUT", float, "a number of seconds", 0, "0: no timeout")
    return float(default) if t is None else t


def _check_op(op, x):
    if op not in OPS:
        raise ValueError(f"allreduce: op must be one of {', '.join(OPS)}, got {op!r}")
    if op == "mean" and np.dtype(x.dtype).kind != "f":
        raise TypeError(f"allreduce: op='mean' needs a floating-point array, got {x.dtype} "
                        f"(use op='sum' and divide)")


def _check_buffer(x, what):
    shape = getattr(x, "shape", None)
    if shape is None:
        raise TypeError(f"{what}: expected a NumPy or CuPy array, got {type(x).__name__}")
    flags = getattr(x, "flags", None)
    if flags is not None and not flags.c_contiguous:
        raise ValueError(f"{what}: the array must be C-contiguous (it is reduced in place); "
                         f"got a strided view of shape {tuple(shape)}")


class Communicator:
    """The interface (see the module docstring); ``size == 1`` runs every collective as a
    no-op, so the base class is also the world of one."""

    rank = 0
    size = 1
    local_rank = 0
    local_size = 1
    timeout = 0.0
    backend = "local"

    def allreduce(self, x, op: str = "sum", *, name: str = ""):
        _check_buffer(x, "allreduce")
        _check_op(op, x)
        return x

    def iallreduce(self, x, op: str = "sum", *, name: str = ""):
        """A non-blocking :meth:`allreduce`: a handle whose ``wait()`` finishes it. Here,
        and for communicators without one of their own, it runs to the end at once."""
        self.allreduce(x, op, name=name)
        return DONE

    def broadcast(self, x, root: int = 0, *, name: str = ""):
        _check_buffer(x, "broadcast")
        self._check_root(root)
        return x

    def broadcast_object(self, obj, root: int = 0):
        self._check_root(root)
        return obj

    def allgather_object(self, obj) -> list:
        return [obj]

    def barrier(self) -> None:
        pass

    def shared_training(self, model, optimizer, rows: int = 0):
        """Ranks that share memory may train one copy of the model (gpunn/distributed/shm.py);
        None: every rank keeps its own and the gradients are all-reduced."""
        return None

    def synchronize(self) -> None:
        """Wait (with the deadline) for collectives still running on a GPU; a no-op on the
        CPU, where every collective has finished when it returns."""

    def abort(self, message: str, code: int = 1):
        _say(message)
        sys.exit(code)

    def _timeout_message(self, what, waited):
        return (f"gpunn.distributed: rank {self.rank} of {self.size}: {what} did not complete "
                f"within {self.timeout:g} s (waited {waited:.1f} s): another rank has died or "
                f"stopped responding. Aborting all ranks. (The timeout is set by "
                f"GPUNN_DIST_TIMEOUT, gpunn.distributed.init(timeout=...) or "
                f"gpunn train --dist-timeout.)")

    def _check_root(self, root):
        if not 0 <= int(root) < self.size:
            raise ValueError(f"root must be a rank in [0, {self.size}), got {root}")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __repr__(self):
        return (f"{type(self).__name__}(rank={self.rank}, size={self.size}, "
                f"local_rank={self.local_rank}, backend={self.backend!r})")


class LocalComm(Communicator):
    """One process, no MPI: every collective returns its input."""


class _Done:
    """The handle of a collective that has already finished."""

    def test(self) -> bool:
        return True

    def wait(self) -> None:
        pass


DONE = _Done()


class _MPIRequest:
    """The handle of an MPI non-blocking collective: ``test()`` lets MPI progress it (MPICH
    moves a non-blocking collective along only inside MPI calls), ``wait()`` finishes it with
    the communicator's deadline; ``after`` runs once it is done (op="mean"'s division)."""

    def __init__(self, comm, request, what, after=None):
        self.comm, self.request, self.what, self.after = comm, request, what, after

    def test(self) -> bool:
        if self.request is None:
            return True
        try:
            done = self.request.Test()
        except self.comm.MPI.Exception as e:
            self.comm._failed(self.what, e)
            return False
        if done:
            self._finish()
        return bool(done)

    def wait(self) -> None:
        if self.request is not None:
            self.comm._wait(self.request, self.what)
            self._finish()

    def _finish(self):
        self.request = None
        if self.after is not None:
            self.after, after = None, self.after
            after()


def _what(kind: str, x, name: str) -> str:
    """How a timeout message names a collective: its purpose (``name``) and its buffer."""
    return f"{name} ({kind} of {x.size} {x.dtype} values)" if name else \
        f"{kind} of {x.size} {x.dtype} values"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


_MPI_OPS = {"sum": "SUM", "mean": "SUM", "max": "MAX", "min": "MIN"}


class MPIComm(Communicator):
    """MPI_COMM_WORLD (or ``comm``) through mpi4py; every collective has a deadline.

    ``timeout`` seconds (0: none) bounds each collective, counted from when this rank enters
    it; a rank that arrives late because it was busy (say, rank 0 writing a checkpoint) is
    fine as long as it arrives within that time.
    """

    backend = "mpi"

    def __init__(self, MPI, comm=None, *, timeout: float = DEFAULT_TIMEOUT):
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.timeout = float(timeout)
        # ranks on this machine: the ones that share memory with this one
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.nccl = None                     # gpunn.distributed.nccl.NCCLComm, made on first use
        self.nccl_off_reason = None

    # -- waiting with a deadline --------------------------------------------------------------
    def _wait(self, request, what: str) -> None:
        """Poll ``request`` until done; past the deadline, abort the job saying ``what``.

        A short spin first (the others are usually right there), then yielding the core for
        up to 10 ms (a rank that waits must not slow one that works on the same core), then
        naps of at most 1 ms (a long wait, e.g. for rank 0 writing a checkpoint)."""
        t0 = time.monotonic()
        spins, nap = 0, 50e-6
        try:
            while not request.Test():
                spins += 1
                if spins < 100:
                    continue
                waited = time.monotonic() - t0
                if self.timeout and waited > self.timeout:
                    self.abort(self._timeout_message(what, waited))
                if waited < 0.01:
                    os.sched_yield()
                else:
                    time.sleep(nap)
                    nap = min(nap * 2, 0.001)
        except self.MPI.Exception as e:
            self._failed(what, e)

    def _failed(self, what, e):
        self.abort(f"gpunn.distributed: rank {self.rank} of {self.size}: {what} failed: "
                   f"{e.Get_error_string().strip()} -- another rank has probably died; "
                   f"aborting all ranks")

    def abort(self, message: str, code: int = 1):
        _say(message)
        # mpiexec forwards a rank's stderr through its proxy, which MPI_Abort may kill before
        # the message is through: give it a moment (we are ending the job anyway)
        time.sleep(1.0)
        self.comm.Abort(code)

    # -- collectives on arrays ----------------------------------------------------------------
    def allreduce(self, x, op: str = "sum", *, name: str = ""):
        self.iallreduce(x, op, name=name).wait()
        return x

    def iallreduce(self, x, op: str = "sum", *, name: str = ""):
        _check_buffer(x, "allreduce")
        _check_op(op, x)
        if is_cuda_array(x):
            return self._gpu(x).iallreduce(x, op, name=name)
        req = self.comm.Iallreduce(self.MPI.IN_PLACE, x, op=getattr(self.MPI, _MPI_OPS[op])) \
            if x.size else None
        after = (lambda: x.__itruediv__(x.dtype.type(self.size))) if op == "mean" else None
        return _MPIRequest(self, req, _what("allreduce", x, name), after)

    def broadcast(self, x, root: int = 0, *, name: str = ""):
        _check_buffer(x, "broadcast")
        self._check_root(root)
        if is_cuda_array(x):
            return self._gpu(x).broadcast(x, root, name=name)
        if x.size:
            self._wait(self.comm.Ibcast(x, root=int(root)),
                       _what(f"broadcast from rank {root}", x, name))
        return x

    def _gpu(self, x):
        """The NCCL communicator for x's GPU, or a host-staging stand-in when NCCL cannot be
        used (reason kept in ``nccl_off_reason``)."""
        from .nccl import HostStaging, make_nccl
        if self.nccl is None:
            self.nccl = make_nccl(self, x.device.id)
            if self.nccl is None:
                self.nccl = HostStaging(self)
                if self.rank == 0:
                    _say(f"gpunn.distributed: GPU collectives go through host memory and MPI "
                         f"(slower than NCCL): {self.nccl_off_reason}")
        return self.nccl

    # -- collectives on Python objects --------------------------------------------------------
    def broadcast_object(self, obj, root: int = 0):
        self._check_root(root)
        payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL) if self.rank == root \
            else b""
        n = np.array([len(payload)], dtype=np.int64)
        self._wait(self.comm.Ibcast(n, root=int(root)), f"broadcast of an object's size "
                                                       f"from rank {root}")
        buf = np.frombuffer(payload, dtype=np.uint8).copy() if self.rank == root \
            else np.empty(int(n[0]), dtype=np.uint8)
        if n[0]:
            self._wait(self.comm.Ibcast(buf, root=int(root)),
                       f"broadcast of a {int(n[0])}-byte object from rank {root}")
        return obj if self.rank == root else pickle.loads(buf.tobytes())

    def allgather_object(self, obj) -> list:
        payload = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL),
                                dtype=np.uint8).copy()
        sizes = np.zeros(self.size, dtype=np.int64)
        self._wait(self.comm.Iallgather(np.array([payload.size], dtype=np.int64), sizes),
                   "allgather of object sizes")
        out = np.empty(int(sizes.sum()), dtype=np.uint8)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self._wait(self.comm.Iallgatherv(payload, [out, sizes, offsets, self.MPI.BYTE]),
                   f"allgather of {int(sizes.sum())} bytes of objects")
        return [pickle.loads(out[o:o + s].tobytes()) for o, s in zip(offsets, sizes)]

    def barrier(self) -> None:
        self._wait(self.comm.Ibarrier(), "barrier")

    def synchronize(self) -> None:
        if self.nccl is not None:
            self.nccl.synchronize()
