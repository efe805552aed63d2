"""The training step captured once into a CUDA graph and replayed for every batch.

:class:`GraphedTrainStep` has :class:`~gpunn.train.step.TrainStep`'s interface (``step(xb, yb)``,
``reset_metrics``, ``metrics``, ``model`` / ``loss_fn`` / ``optimizer`` / ``after_backward`` /
``loss``) and runs the very same step body, :meth:`TrainStep.__call__` (forward, loss,
backward, hooks, optimizer update, the running loss and accuracy on the device), in three ways:

1. **warm-up** (the first batch of the graph's shape): the body runs eagerly as a graph-style
   step (gpunn/graphs.py): it trains on that batch like any step, and on the way compiles every
   kernel the capture will launch (the _dyn twins included), makes the cuBLAS handle and its
   workspace, and allocates the optimizer's state and the metric sums;
2. **capture** (the second batch): the batch is copied into static input and label buffers
   and the body runs on them inside ``backend.graph_capture()``: on a GPU nothing executes,
   every kernel, GEMM, copy and fill becomes a node of one graph, and every allocation comes
   from the capture's own memory pool, which the graph keeps (so no block it uses is ever
   handed to anyone else); the host state the Python body changed (Dropout step counts, the
   optimizer's step count, the samples seen) is put back and its per-step change remembered;
3. **replay** (that batch and every later one of that shape): copy the batch into the static
   buffers, advance the host state by the remembered change (exactly what the Python body
   would have done), rewrite the per-step numbers the graph reads from device memory (the
   Dropout keys, lr, Adam's bias corrections: gpunn.graphs.StepValues.refresh, nothing when
   they did not change), launch the graph on the current stream. No allocation, no host
   synchronisation: the step returns the graph's loss, a device scalar.

A batch of another shape (the short last batch of an epoch) runs the body eagerly: a graph
has fixed shapes, and padding would change the mean loss and the batch-norm statistics, so
eager is the exact choice. Anything the graph was captured against that is replaced
afterwards (``model.to()``, a parameter buffer or optimizer state swapped, a hyper-parameter
other than lr changed) is noticed before the next replay (:meth:`bindings_changed`): the
graph is dropped and the next batches warm up and capture again.

Hooks in ``after_backward`` run inside the captured step, so each must be graph-safe (its
work on the device, updated in place): a hook whose function or object has
``graph_safe = True`` (gpunn's non-finite guard) is captured with the step; any other hook
(an MPI gradient all-reduce) makes the step refuse to capture, with the reason.

On the CPU there is nothing to capture: the constructor refuses a model whose parameters are
not on a CUDA device (or on the tests' emulated CUDA with graphs). docs/GRAPHS.md has the
design, what the CPU emulation checks, and what a GPU must confirm.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from ..backend import CudaBackend, DeviceError, backend_of
from ..graphs import GraphCaptureError, StepValues, graph_step
from .step import TrainStep

__all__ = ["GraphedTrainStep", "GraphCaptureError"]


def _graph_safe(hook) -> bool:
    return bool(getattr(hook, "graph_safe", False)
                or getattr(getattr(hook, "__self__", None), "graph_safe", False))


class _Captured:
    """One capture and what its replays need."""

    def __init__(self, key, capture, values, static_x, static_y, loss, delta, bindings):
        self.key, self.capture, self.values = key, capture, values
        self.static_x, self.static_y, self.loss = static_x, static_y, loss
        self.delta, self.bindings = delta, bindings


class GraphedTrainStep:
    """``step(xb, yb)``: one optimisation step, replayed from a CUDA graph (module docstring).

    xb: (N, ...) inputs and yb: (N,) labels on the model's device. The loss a replay returns
    is the graph's own output array, overwritten by the next replay (as PyTorch's graphed
    outputs are): copy it to keep it. ``stats`` counts the steps run each way:
    ``{"eager", "warmup", "capture", "replay"}``.
    """

    def __init__(self, model, loss_fn, optimizer):
        params = model.parameters()
        if not params:
            raise GraphCaptureError("GraphedTrainStep: the model has no parameters to train")
        self.backend = backend_of(params[0].data)
        if not (isinstance(self.backend, CudaBackend) or getattr(self.backend, "graphs", False)):
            raise DeviceError(f"GraphedTrainStep: CUDA graphs need the model on a CUDA device; "
                              f"its parameters are on the {self.backend.name} backend")
        self.eager = TrainStep(model, loss_fn, optimizer)
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.after_backward = self.eager.after_backward      # one list: hooks see one step
        self.stats: Counter = Counter()
        self._graph: _Captured | None = None
        self._warm: set = set()            # batch shapes warmed up (their next batch captures)

    # -- TrainStep's interface ---------------------------------------------------------------
    @property
    def loss_sum(self):
        return self.eager.loss_sum

    @property
    def correct(self):
        return self.eager.correct

    @property
    def seen(self):
        return self.eager.seen

    @property
    def loss(self):
        return self.eager.loss

    def reset_metrics(self, xp=None) -> None:
        """Zero the running sums in place (the graph adds into these very arrays)."""
        e = self.eager
        if e.loss_sum is None:
            xp = self.backend.xp
            e.loss_sum = xp.zeros((), dtype=np.float64)
            e.correct = xp.zeros((), dtype=np.int64)
        else:
            e.loss_sum.fill(0)
            e.correct.fill(0)
        e.seen = 0

    def metrics(self) -> tuple:
        return self.eager.metrics()

    def samples_in(self, xb) -> int:
        return self.eager.samples_in(xb)

    def agree_stop(self, requested: bool) -> bool:
        return self.eager.agree_stop(requested)

    # -- the step ----------------------------------------------------------------------------
    def __call__(self, xb, yb):
        if self.eager.loss_sum is None:
            self.reset_metrics()
        key = (tuple(xb.shape), np.dtype(xb.dtype), tuple(yb.shape), np.dtype(yb.dtype))
        g = self._graph
        if g is not None and self.bindings_changed():
            self.invalidate()
            g = None
        if g is not None:
            if key == g.key:
                return self._replay(xb, yb)
            self.stats["eager"] += 1
            return self.eager(xb, yb)
        if key not in self._warm:          # the first batch of a shape warms up; the
            self._warm.add(key)            # second of a shape is captured
            self.stats["warmup"] += 1
            with graph_step(StepValues()):
                return self.eager(xb, yb)
        self._capture(xb, yb, key)
        return self._replay(xb, yb)

    def invalidate(self) -> None:
        """Drop the graph (after waiting for its last replay); the next batches warm up and
        capture again."""
        if self._graph is not None:
            self._graph.capture.synchronize()
        self._graph = None
        self._warm.clear()

    # -- capture and replay --------------------------------------------------------------------
    def _host_state(self) -> dict:
        state = {("step", "seen"): self.eager.seen, ("optimizer", "t"): self.optimizer.t}
        for i, layer in enumerate(self.model.walk()):
            for k, v in layer.host_state.items():
                state[(i, k)] = v
        return state

    def _set_host_state(self, state: dict) -> None:
        layers = list(self.model.walk())
        for (where, k), v in state.items():
            if where == "step":
                self.eager.seen = v
            elif where == "optimizer":
                self.optimizer.t = v
            else:
                layers[where].host_state[k] = v

    def _targets(self, delta: dict) -> list:
        """The host counters a replay advances, as ``(holder, key, change)``."""
        layers = list(self.model.walk())
        out = []
        for (where, k), d in delta.items():
            if where == "step":
                out.append((self.eager, "seen", d))
            elif where == "optimizer":
                out.append((self.optimizer, "t", d))
            else:
                out.append((layers[where].host_state, k, d))
        return out

    def _bindings(self) -> list:
        """``(holder, key, object)`` for everything the graph's pointers depend on (it must
        still be ``holder[key]`` / ``holder.key``), and the hyper-parameters but lr (baked in)."""
        out, flats = [], {}
        for p in self.model.parameters():
            if p.flat is not None:
                flats[id(p.flat)] = p.flat
            else:
                out += [(p, "data", p.data), (p, "grad", p.grad)]
        for f in flats.values():
            out += [(f, "values", f.values), (f, "grads", f.grads)]
        for layer in self.model.walk():
            out += [(layer.buffers, k, a) for k, a in layer.buffers.items()]
        opt = self.optimizer
        out.append((opt, "state", opt.state))
        for name, arrs in opt.state.items():
            out.append((opt.state, name, arrs))
            out += [(arrs, j, a) for j, a in enumerate(arrs)]
        out += [(self.eager, "loss_sum", self.eager.loss_sum),
                (self.eager, "correct", self.eager.correct)]
        hyper = {k: v for k, v in opt.hyper.items() if k != "lr"}
        return [out, hyper]

    def bindings_changed(self) -> bool:
        """True when an array the graph was captured against was replaced (``model.to()``, a
        new optimizer state, ...), or a hyper-parameter other than lr changed. A few identity
        checks: no walk over the model."""
        items, hyper = self._graph.bindings
        for holder, key, obj in items:
            now = holder[key] if isinstance(holder, (dict, list)) else getattr(holder, key, None)
            if now is not obj:
                return True
        opt_hyper = self.optimizer.hyper
        return any(opt_hyper.get(k) != v for k, v in hyper.items()) or \
            len(opt_hyper) != len(hyper) + 1

    def _capture(self, xb, yb, key) -> None:
        unsafe = [h for h in self.after_backward if not _graph_safe(h)]
        if unsafe:
            raise GraphCaptureError(
                f"GraphedTrainStep: after_backward hooks run inside the captured step and "
                f"these are not marked graph_safe: {', '.join(map(repr, unsafe))} (a "
                f"data-parallel all-reduce, say); train with the eager TrainStep")
        b = self.backend
        xp = b.xp
        # static buffers, allocated outside the capture and kept by this object
        sx = xp.empty(xb.shape, dtype=xb.dtype)
        sy = xp.empty(yb.shape, dtype=yb.dtype)
        sx[...] = xb
        sy[...] = yb
        before = self._host_state()
        cap = b.graph_capture()
        values = StepValues(cap)
        with cap:
            with graph_step(values):
                loss = self.eager(sx, sy)
        values.finish()
        after = self._host_state()
        delta = {}
        for k, v in after.items():
            v0 = before.get(k)
            if v != v0:
                if not isinstance(v, (int, np.integer)) or not isinstance(v0, (int, np.integer)):
                    raise GraphCaptureError(f"GraphedTrainStep: the step changed host state "
                                            f"{k} from {v0!r} to {v!r}; only integer counters "
                                            "can advance in a replayed step")
                delta[k] = int(v) - int(v0)
        self._set_host_state(before)                 # the capture ran nothing
        self._graph = _Captured(key, cap, values, sx, sy, loss, self._targets(delta),
                                self._bindings())
        self.stats["capture"] += 1

    def _replay(self, xb, yb):
        g = self._graph
        if xb is not g.static_x:
            g.static_x[...] = xb
        if yb is not g.static_y:
            g.static_y[...] = yb
        for holder, k, d in g.delta:                 # what the Python body would have done
            if isinstance(holder, dict):
                holder[k] += d
            else:
                setattr(holder, k, getattr(holder, k) + d)
        g.values.refresh()
        g.capture.launch()
        self.stats["replay"] += 1
        self.eager.loss = g.loss
        return g.loss
