"""GPU collectives: NCCL through ``cupy.cuda.nccl``, bootstrapped over MPI; or, where NCCL
cannot be used, a copy through host memory and MPI.

Bootstrap (NCCL's own recipe): rank 0 makes the NCCL unique id, MPI broadcasts it, and every
rank builds its communicator for its GPU with ``NcclCommunicator(size, uid, rank)``. Every
rank must agree on NCCL or host staging, so availability is all-gathered first: one rank
without NCCL sends every rank down the host path (with the reason in ``nccl_off_reason``).

NCCL calls are queued on a stream of the communicator's own (after the work the caller's
stream has queued, which then waits for them on the device) and return at once; they finish
on the GPU later. To keep the step free of host synchronisation and still put a deadline on a
collective, each call records a CUDA event, and later calls *query* (never wait on) the
events still pending: an event that stays unfinished past the timeout means a rank has died
(its peers' NCCL kernels spin forever), and the job is aborted with a message. At most
``max_pending`` collectives are left outstanding: past that, the oldest one is waited for
(with the deadline), which also bounds how far the host runs ahead. :meth:`NCCLComm.synchronize`
waits for all of them (with the deadline): call it before reading results on the host, since
a plain device synchronisation has no deadline.

The NCCL rule that matters here: one rank per GPU. Two ranks of one communicator on the same
GPU hang or fail, so data parallelism on one GPU is a one-rank NCCL communicator.
"""
from __future__ import annotations

import os
import time
from collections import deque

import numpy as np

from .comm import DONE, _what

__all__ = ["NCCLComm", "HostStaging", "make_nccl", "nccl_status"]

_DTYPES = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64",
           "int32": "NCCL_INT32", "int64": "NCCL_INT64", "uint8": "NCCL_UINT8"}
_OPS = {"sum": "NCCL_SUM", "mean": "NCCL_SUM", "max": "NCCL_MAX", "min": "NCCL_MIN"}


def nccl_status(nccl=None):
    """(usable, reason): can this process use NCCL through CuPy?"""
    if os.environ.get("GPUNN_NCCL", "").strip() == "0":
        return False, "GPUNN_NCCL=0"
    if nccl is None:
        try:
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")      # CuPy warns when libnccl is missing
                from cupy.cuda import nccl
        except Exception as e:                        # noqa: BLE001 (any import failure)
            return False, f"cupy.cuda.nccl cannot be imported ({type(e).__name__}: {e})"
    if not getattr(nccl, "available", False):
        return False, ("CuPy cannot load libnccl (install nvidia-nccl-cu12 or -cu13, which "
                       "the gpunn[cuda12] / [cuda13] extras bring)")
    return True, ""


def make_nccl(mpi, device_id: int, *, nccl=None, cupy=None):
    """An :class:`NCCLComm` over the ranks of ``mpi`` (an MPIComm) for GPU ``device_id``, or
    None when some rank cannot use NCCL, or two ranks share a GPU (``mpi.nccl_off_reason``
    then says which and why; the GPU arrays go through host memory instead). Every rank must
    call this at the same time (it is a collective)."""
    import socket
    ok, reason = nccl_status(nccl)
    everyone = mpi.allgather_object((ok, reason, socket.gethostname(), int(device_id)))
    off = [f"rank {r}: {why}" for r, (good, why, _, _) in enumerate(everyone) if not good]
    seen = {}
    for r, (_, _, host, dev) in enumerate(everyone):
        if (host, dev) in seen:             # NCCL hangs or fails with two ranks on one GPU
            off.append(f"ranks {seen[host, dev]} and {r} share cuda:{dev} on {host} (NCCL "
                       f"needs one GPU per rank: start at most as many ranks per machine as "
                       f"it has GPUs)")
        seen.setdefault((host, dev), r)
    if off:
        mpi.nccl_off_reason = "; ".join(off)
        return None
    if nccl is None:
        from cupy.cuda import nccl
    if cupy is None:
        import cupy
    return NCCLComm(mpi, device_id, nccl=nccl, cupy=cupy)


class NCCLComm:
    """NCCL all-reduce and broadcast of CuPy arrays, in place, on the communicator's stream.

    Every collective runs on one stream of its own (``self.stream``), as PyTorch's NCCL
    process group does: it starts after the work queued so far on the caller's current stream
    (a CUDA event the stream waits for) and the caller's stream waits for its end when the
    handle's ``wait()`` is called (for :meth:`allreduce` and :meth:`broadcast`, at once). Both
    waits are on the device: the host never blocks. One stream for all of them keeps NCCL's
    calls in the order they were made, the same on every rank, while the compute stream
    goes on with the backward pass under an all-reduce started with :meth:`iallreduce`.
    """

    backend = "nccl"

    def __init__(self, mpi, device_id: int, *, nccl, cupy, max_pending: int = 16):
        self.mpi, self.nccl, self.cupy = mpi, nccl, cupy
        self.device_id = int(device_id)
        self.rank, self.size = mpi.rank, mpi.size
        self.max_pending = int(max_pending)
        uid = nccl.get_unique_id() if mpi.rank == 0 else None
        uid = mpi.broadcast_object(uid, root=0)
        with cupy.cuda.Device(self.device_id):
            self.comm = nccl.NcclCommunicator(self.size, uid, self.rank)
            self.stream = cupy.cuda.Stream(non_blocking=True)
        self._pending = deque()             # (event, what, t_enqueued)

    def _codes(self, x, op):
        name = np.dtype(x.dtype).name
        if name not in _DTYPES:
            raise TypeError(f"NCCL collectives take {', '.join(_DTYPES)} arrays, got {name}")
        return getattr(self.nccl, _DTYPES[name]), getattr(self.nccl, _OPS[op])

    def _check_device(self, x, what):
        if x.device.id != self.device_id:
            raise ValueError(f"{what}: the array is on cuda:{x.device.id} but this rank's NCCL "
                             f"communicator is for cuda:{self.device_id} (one GPU per rank)")

    def allreduce(self, x, op: str = "sum", *, name: str = ""):
        self.iallreduce(x, op, name=name).wait()
        return x

    def iallreduce(self, x, op: str = "sum", *, name: str = ""):
        """Queue the all-reduce of ``x`` on the NCCL stream; the handle's ``wait()`` makes the
        then-current stream wait for it (on the device)."""
        self._check_device(x, "allreduce")
        dtype, nop = self._codes(x, op)
        what = _what("NCCL allreduce", x, name)
        self._before(what)
        with self.cupy.cuda.Device(self.device_id):
            self._follow_current()
            if x.size:
                self.comm.allReduce(x.data.ptr, x.data.ptr, x.size, dtype, nop, self.stream.ptr)
            if op == "mean":
                with self.stream:
                    x /= x.dtype.type(self.size)
            return _StreamHandle(self, self._after(what))

    def broadcast(self, x, root: int = 0, *, name: str = ""):
        self._check_device(x, "broadcast")
        dtype, _ = self._codes(x, "sum")
        what = _what(f"NCCL broadcast from rank {root}", x, name)
        self._before(what)
        with self.cupy.cuda.Device(self.device_id):
            self._follow_current()
            if x.size:
                self.comm.bcast(x.data.ptr, x.size, dtype, int(root), self.stream.ptr)
            _StreamHandle(self, self._after(what)).wait()
        return x

    def _follow_current(self):
        """The NCCL stream waits for what the current stream has queued (the data's writes)."""
        ready = self.cupy.cuda.Event(block=False, disable_timing=True)
        ready.record(self.cupy.cuda.get_current_stream())
        self.stream.wait_event(ready)

    # -- deadlines without host synchronisation --------------------------------------------
    def _after(self, what):
        """An event at the end of the NCCL stream's queue, watched for the deadline."""
        ev = self.cupy.cuda.Event(block=False, disable_timing=True)
        ev.record(self.stream)
        self._pending.append((ev, what, time.monotonic()))
        return ev

    def _before(self, what):
        """Forget finished collectives; abort on one past its deadline; wait for the oldest
        when too many are outstanding."""
        self._check_async(what)
        now = time.monotonic()
        while self._pending and self._pending[0][0].done:
            self._pending.popleft()
        for ev, old, t in self._pending:
            if self.mpi.timeout and now - t > self.mpi.timeout and not ev.done:
                self._abort(old, now - t)
        while len(self._pending) >= self.max_pending:
            self._wait_oldest()

    def _wait_oldest(self):
        ev, what, t = self._pending[0]
        nap = 20e-6
        while not ev.done:
            self._check_async(what)
            waited = time.monotonic() - t
            if self.mpi.timeout and waited > self.mpi.timeout:
                self._abort(what, waited)
            time.sleep(nap)
            nap = min(nap * 2, 0.005)
        self._pending.popleft()

    def synchronize(self) -> None:
        """Wait (with the deadline) until every collective queued so far has finished."""
        while self._pending:
            self._wait_oldest()

    def _check_async(self, what):
        try:
            self.comm.check_async_error()
        except Exception as e:                        # noqa: BLE001 (NcclError and friends)
            self._abort_nccl()
            self.mpi.abort(f"gpunn.distributed: rank {self.rank} of {self.size}: NCCL reported "
                           f"an error before {what}: {e} -- another rank has probably died; "
                           f"aborting all ranks")

    def _abort(self, what, waited):
        self._abort_nccl()
        self.mpi.abort(self.mpi._timeout_message(what, waited))

    def _abort_nccl(self):
        try:
            self.comm.abort()                         # frees the GPU from the spinning kernels
        except Exception:                             # noqa: BLE001 (we are aborting anyway)
            pass

    def __repr__(self):
        return f"NCCLComm(rank={self.rank}, size={self.size}, cuda:{self.device_id})"


class _StreamHandle:
    """An NCCL collective in flight: ``wait()`` makes the current stream wait for it (on the
    device; the host goes on), ``test()`` asks whether the GPU has finished it."""

    def __init__(self, comm, event):
        self.comm, self.event = comm, event

    def test(self) -> bool:
        return bool(self.event.done)

    def wait(self) -> None:
        with self.comm.cupy.cuda.Device(self.comm.device_id):
            self.comm.cupy.cuda.get_current_stream().wait_event(self.event)


class HostStaging:
    """GPU arrays through host memory and MPI: the fallback when NCCL cannot be used."""

    backend = "mpi (host staging)"

    def __init__(self, mpi):
        self.mpi = mpi

    def allreduce(self, x, op: str = "sum", *, name: str = ""):
        import cupy
        host = cupy.asnumpy(x)
        self.mpi.allreduce(host, op, name=name)
        x.set(host)
        return x

    def iallreduce(self, x, op: str = "sum", *, name: str = ""):
        self.allreduce(x, op, name=name)
        return DONE

    def broadcast(self, x, root: int = 0, *, name: str = ""):
        import cupy
        host = cupy.asnumpy(x)
        self.mpi.broadcast(host, root, name=name)
        x.set(host)
        return x

    def synchronize(self) -> None:
        pass
