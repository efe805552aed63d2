"""Stand-ins for the parts of CuPy and ``cupy.cuda.nccl`` that gpunn/distributed/nccl.py uses,
so its logic (bootstrap, dtype and op codes, pointers, in-place results, deadlines) runs
without a GPU. What only a GPU can check — NCCL itself — is in the gpu-marked tests.

A FakeArray holds a NumPy array and a made-up device pointer; FakeNccl's communicator finds
the array by its pointer and does the reduction through an MPI communicator (or alone).
"""
import itertools

import numpy as np

_ptrs = itertools.count(0x7F0000000000, 0x1000)
_by_ptr = {}


class _Mem:
    def __init__(self, ptr):
        self.ptr = ptr


class _Dev:
    def __init__(self, i):
        self.id = i


class FakeArray:
    """What NCCLComm reads from a CuPy array: data.ptr, size, dtype, device.id, and /=."""

    def __init__(self, host, device=0):
        self.host = host
        self.data = _Mem(next(_ptrs))
        self.device = _Dev(device)
        _by_ptr[self.data.ptr] = self

    size = property(lambda self: self.host.size)
    dtype = property(lambda self: self.host.dtype)
    shape = property(lambda self: self.host.shape)

    def __itruediv__(self, v):
        self.host /= v
        return self


# What the streams were asked to do, in order: ("record", stream ptr, event id),
# ("wait", stream ptr, event id), ("enter", stream ptr) / ("exit", stream ptr); NCCL calls are
# logged here too by FakeNccl (("allReduce", stream ptr) ...), so tests can check the order.
stream_log = []
_event_ids = itertools.count(1)


class FakeEvent:
    """A CUDA event; ``never`` makes it stay unfinished (a collective whose peer died)."""
    never = False

    def __init__(self, block=False, disable_timing=True):
        self.recorded = False
        self.id = next(_event_ids)

    def record(self, stream=None):
        self.recorded = True
        stream_log.append(("record", getattr(stream, "ptr", None), self.id))

    @property
    def done(self):
        return self.recorded and not FakeEvent.never


class _Stream:
    """The current (null) stream is 0x5EA; Stream() makes others with pointers of their own."""
    ptr = 0x5EA

    def wait_event(self, event):
        stream_log.append(("wait", self.ptr, event.id))

    def __enter__(self):
        stream_log.append(("enter", self.ptr))
        return self

    def __exit__(self, *a):
        stream_log.append(("exit", self.ptr))


_stream_ptrs = itertools.count(0x51DE)


class FakeStream(_Stream):
    def __init__(self, non_blocking=False):
        self.ptr = next(_stream_ptrs)


class _Cuda:
    Event = FakeEvent
    Stream = FakeStream

    def __init__(self):
        self.devices = []

    def Device(self, i):
        outer = self

        class _Ctx:
            def __enter__(self_):
                outer.devices.append(i)

            def __exit__(self_, *a):
                pass
        return _Ctx()

    @staticmethod
    def get_current_stream():
        return _Stream()


class FakeCupy:
    def __init__(self):
        self.cuda = _Cuda()


class FakeNccl:
    """The module: constants, get_unique_id, NcclCommunicator (recorded in ``made``/``calls``)."""
    available = True
    NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64, NCCL_INT32, NCCL_INT64, NCCL_UINT8 = range(6)
    NCCL_SUM, NCCL_PROD, NCCL_MAX, NCCL_MIN = range(4)

    def __init__(self, mpi=None, async_error=None):
        self.mpi = mpi                      # a gpunn MPIComm that does the real reduction
        self.made, self.calls, self.aborted = [], [], False
        self.async_error = async_error
        self._uid = tuple(np.random.default_rng().integers(-128, 128, 128).tolist())
        fake = self

        class NcclCommunicator:
            def __init__(self, ndev, uid, rank):
                fake.made.append((ndev, tuple(uid), rank))

            def allReduce(self, send, recv, count, dtype, op, stream):
                fake.calls.append(["allReduce", count, dtype, op, send == recv, stream])
                stream_log.append(("allReduce", stream))
                a = _by_ptr[recv]
                if fake.mpi is not None:
                    name = {fake.NCCL_SUM: "sum", fake.NCCL_MAX: "max", fake.NCCL_MIN: "min"}[op]
                    fake.mpi.allreduce(a.host, name)

            def bcast(self, buff, count, dtype, root, stream):
                fake.calls.append(["bcast", count, dtype, root, stream])
                stream_log.append(("bcast", stream))
                if fake.mpi is not None:
                    fake.mpi.broadcast(_by_ptr[buff].host, root)

            def check_async_error(self):
                if fake.async_error is not None:
                    raise RuntimeError(fake.async_error)

            def abort(self):
                fake.aborted = True

        self.NcclCommunicator = NcclCommunicator

    def get_unique_id(self):
        return self._uid
