"""What the library needs so a training step can be captured into a CUDA graph and replayed.

A CUDA graph replays the kernels of one capture with the arguments they had then. Most of a
training step is the same every time (shapes, buffers, constants), but a few numbers the host
owns change from step to step: each Dropout layer's step count (its mask's key), the
optimizer's learning rate (a schedule) and Adam's bias corrections (its step count). Such a
number reaches an op as a :class:`HostValue`, a getter the op can read at any time:

- eagerly, the op's CUDA body reads its value and passes it by value, exactly as before
  (``float()`` / ``int()`` of a HostValue is its current value, so NumPy bodies need nothing);
- inside a graph-style step (:func:`graph_step`: the graphed step's warm-up and its capture)
  the CUDA body asks :func:`step_values` for a one-element device array holding it and
  launches the kernel's ``_dyn`` twin, which reads it from there. The graphed step rewrites
  every such array from its getter before each replay (:meth:`StepValues.refresh`), so a
  replay computes with the numbers the eager step would have used, computed by the same
  host code, bit for bit.

Which value the getter gives at refresh time: the graphed step refreshes after it has
advanced the host's counters for the step about to run (as the Python step would have), so
a value read *before* its owner's increment (Dropout reads ``step`` then adds one) is off by
the increment. :meth:`StepValues.finish` measures that offset at the end of the capture for
integer bases and applies it at every refresh; a float base (a learning rate) must not change
inside a step.

:class:`CudaCapture` captures on a CUDA device (``backend.graph_capture()``); the tests'
emulated CUDA has its own capture with the same interface (gpunn/testing/graph_emu.py).
"""
from __future__ import annotations

import contextlib
import contextvars

import numpy as np

__all__ = ["HostValue", "StepValues", "GraphCaptureError", "graph_step", "step_values",
           "CudaCapture"]


class GraphCaptureError(RuntimeError):
    """A step cannot be captured into a CUDA graph; the message says why."""


class HostValue:
    """A host number read through ``getter()`` when needed; ``fn`` maps it to what the kernel
    takes (a Dropout step count to its key, Adam's step count to a bias correction).

    ``float(v)``, ``int(v)`` and ``operator.index(v)`` give the current value, so a HostValue
    can go wherever the op took a number before.
    """

    __slots__ = ("getter", "fn")

    def __init__(self, getter, fn=None):
        self.getter, self.fn = getter, fn

    def derive(self, fn) -> "HostValue":
        """The same base, mapped through ``fn`` (after any earlier map)."""
        if self.fn is None:
            return HostValue(self.getter, fn)
        inner = self.fn
        return HostValue(self.getter, lambda v: fn(inner(v)))

    def base(self):
        return self.getter()

    def value(self, offset=0):
        b = self.getter()
        if offset:
            b = b + offset
        return self.fn(b) if self.fn is not None else b

    def __float__(self):
        return float(self.value())

    def __int__(self):
        return int(self.value())

    __index__ = __int__

    def __repr__(self):
        try:
            return f"HostValue({self.value()!r})"
        except Exception as e:          # pragma: no cover - a broken getter
            return f"HostValue(<{type(e).__name__}>)"


def _number(v):
    return v.value() if isinstance(v, HostValue) else v


class StepValues:
    """The per-step numbers a graph-style step's kernels read from device memory.

    ``capture`` is the capture in progress (None for an eager graph-style run, which writes
    each array at once). Entries: ``[HostValue or constant, array, dtype, base at use,
    offset, last value written]``.
    """

    def __init__(self, capture=None):
        self.capture = capture
        self.entries: list = []
        self.finished = False

    def device(self, b, v, dtype):
        """A one-element device array (``b.xp``) of ``dtype`` holding ``v`` for the kernels of
        this step; registered so :meth:`refresh` keeps it right at every replay."""
        if self.finished:
            raise GraphCaptureError("step values are fixed once the capture is finished")
        dtype = np.dtype(dtype)
        arr = b.xp.empty(1, dtype=dtype)
        now = dtype.type(_number(v))
        if self.capture is None:
            arr.fill(now)
        else:
            self.capture.prefill(arr, now)      # no graph node: refresh() writes it per replay
        base = v.base() if isinstance(v, HostValue) else None
        self.entries.append([v, arr, dtype, base, 0, None])
        return arr

    def finish(self) -> None:
        """At the end of the step (host counters advanced as the Python step does): each
        integer base's offset between its value at use and its value now."""
        for e in self.entries:
            v, base = e[0], e[3]
            if not isinstance(v, HostValue):
                continue
            now = v.base()
            if isinstance(base, (int, np.integer)) and not isinstance(base, bool):
                e[4] = int(base) - int(now)
            elif base != now:
                raise GraphCaptureError(f"a per-step value changed within the captured step "
                                        f"({base!r} at use, {now!r} at its end); only integer "
                                        "counters may")
        self.finished = True

    def refresh(self) -> int:
        """Write every value whose getter now gives another number; returns how many were
        written (each a one-element fill on the current stream, ordered before the replay)."""
        n = 0
        for e in self.entries:
            v, arr, dtype, _, offset, last = e
            now = dtype.type(v.value(offset) if isinstance(v, HostValue) else v)
            if last is None or now != last or (now != now):
                arr.fill(now)
                e[5] = now
                n += 1
        return n


_current = contextvars.ContextVar("gpunn_graph_step", default=None)


def step_values():
    """The :class:`StepValues` of the graph-style step running now, or None (eager)."""
    return _current.get()


@contextlib.contextmanager
def graph_step(values: StepValues):
    """Run the ops inside as a graph-style step: their per-step numbers go to ``values``."""
    token = _current.set(values)
    try:
        yield values
    finally:
        _current.reset(token)


class CudaCapture:
    """Captures the work issued inside ``with`` into a CUDA graph on one device.

    - the capture runs on a stream of its own (non-blocking, as capture requires); the graph is
      launched on the caller's current stream, so it is ordered with everything else there;
    - every allocation inside comes from a memory pool of its own (:attr:`pool`): the blocks
      the graph's kernels use are never handed to anyone else, including the blocks Python
      frees after the capture, for as long as this object lives;
    - GEMMs must come from a capturable BLAS (gpunn/cublas.py): checked on entry.
    """

    def __init__(self, backend):
        import cupy
        self.backend = backend
        self.graph = None
        with cupy.cuda.Device(backend.index):
            self.pool = cupy.cuda.MemoryPool()
            self.stream = cupy.cuda.Stream(non_blocking=True)
        self._ctx = None

    def __enter__(self):
        import cupy
        blas = self.backend.blas
        if not getattr(blas, "capturable", False):
            raise GraphCaptureError(f"GEMMs on {self.backend.name} cannot be captured: "
                                    f"{getattr(blas, 'reason', type(blas).__name__)}")
        # the capture stream starts after the work already queued on the current one
        self.stream.wait_event(cupy.cuda.get_current_stream().record())
        self._ctx = contextlib.ExitStack()
        self._ctx.enter_context(cupy.cuda.Device(self.backend.index))
        self._ctx.enter_context(self.stream)
        self._ctx.enter_context(cupy.cuda.using_allocator(self.pool.malloc))
        self.stream.begin_capture()
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            graph = self.stream.end_capture()
        except Exception:
            if exc_type is None:
                raise
            graph = None                  # the capture already failed: report that error
        finally:
            self._ctx.close()
        if exc_type is None:
            self.graph = graph
        return False

    def prefill(self, arr, value) -> None:
        """Nothing: a capture executes nothing; StepValues.refresh writes before each replay."""

    def launch(self) -> None:
        import cupy
        self.graph.launch(stream=cupy.cuda.get_current_stream())

    def synchronize(self) -> None:
        import cupy
        cupy.cuda.get_current_stream().synchronize()
