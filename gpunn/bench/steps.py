"""Training steps to time: gpunn's and PyTorch's, eager and graphed, on one device.

Every step is one SGD-momentum update (lr 0.01, momentum 0.9) of a zoo model on a fixed
synthetic batch already on the device, with the loss and the accuracy count accumulated on the
device (what ``gpunn train``'s TrainStep does each step; the PyTorch step does the same, so
neither pays a host sync the other skips). ``make_step`` returns a :class:`Step`: ``run()``
does one step, ``sync()`` waits for the device, ``close()`` frees what it holds.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["IMPLS", "Step", "make_step", "input_shape", "Unavailable"]

CIFAR = ("vgg-cifar", "resnet20")
IMPLS = ("gpunn", "gpunn-procs", "gpunn-graph", "torch", "torch-graph")
LR, MOMENTUM = 0.01, 0.9


class Unavailable(Exception):
    """This implementation cannot run here (no torch, no graph capture, ...): say why."""


def input_shape(model: str) -> tuple:
    return (3, 32, 32) if model in CIFAR else (1, 28, 28)


@dataclass
class Step:
    run: object
    sync: object
    close: object = None
    notes: list = field(default_factory=list)


def _batch(model, batch, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((batch, *input_shape(model)), dtype=np.float32)
    y = rng.integers(0, 10, batch).astype(np.int64)
    return x, y


def make_step(impl: str, model: str, batch: int, device: str, procs: int | None = None) -> Step:
    """A ready (built, on ``device``, not yet warmed up) step of ``impl`` in IMPLS
    (``procs``: gpunn-procs's process count; None: one per gpunn thread)."""
    if impl in ("gpunn", "gpunn-graph"):
        return _gpunn_step(model, batch, device, graph=impl == "gpunn-graph")
    if impl == "gpunn-procs":
        return _gpunn_procs_step(model, batch, device, procs)
    if impl in ("torch", "torch-graph"):
        return _torch_step(model, batch, device, graph=impl == "torch-graph")
    raise ValueError(f"unknown implementation {impl!r}; choose one of {', '.join(IMPLS)}")


# -- gpunn --------------------------------------------------------------------------------------
def _gpunn_step(model, batch, device, graph):
    from ..backend import resolve_device, synchronize, to_device
    from ..fuse import fuse
    from ..losses import CrossEntropyLoss
    from ..optim import SGD
    from ..train import TrainStep
    from ..zoo import build_model

    dev = resolve_device(device, quiet=True)
    if graph and not dev.is_cuda:
        raise Unavailable("CUDA graphs need a CUDA device")
    m = build_model(model, input_shape(model), 10, seed=0).to(dev)
    fuse(m)                                  # as gpunn train runs it (gpunn/runs.py)
    opt = SGD(m.parameters(), lr=LR, momentum=MOMENTUM)
    ts = TrainStep(m, CrossEntropyLoss(), opt)
    x, y = _batch(model, batch)
    x, y = to_device(x, dev), to_device(y, dev)
    run = lambda: ts(x, y)                                   # noqa: E731
    if graph:
        run = _graphed(ts, x, y)

    def close():
        nonlocal m, opt, ts, x, y
        m = opt = ts = x = y = None
    return Step(run, lambda: synchronize(dev), close)


def _gpunn_procs_step(model, batch, device, procs=None):
    """gpunn train --procs: the batch split between ``procs`` forked processes (default: one
    per gpunn thread) that share the model (gpunn/distributed/shm.py). This process is rank 0;
    each ``run()`` tells the others to take the step with it (a broadcast of one int)."""
    from ..backend import resolve_device
    from ..distributed import DistributedTrainStep, broadcast_model, broadcast_optimizer
    from ..distributed.data import shard
    from ..distributed.shm import launch
    from ..fuse import fuse
    from ..layers.norm import SyncBatchNorm
    from ..losses import CrossEntropyLoss
    from ..optim import SGD
    from ..threads import get_num_threads, set_num_threads
    from ..zoo import build_model

    if resolve_device(device, quiet=True).is_cuda:
        raise Unavailable("--procs is CPU only (GPUs: mpiexec, with NCCL)")
    threads = get_num_threads()
    procs = int(procs or threads)
    if procs < 2:
        raise Unavailable("one process: nothing to split between processes")
    if batch < procs:
        raise Unavailable(f"a batch of {batch} cannot be split between {procs} processes")
    comm = launch(procs)                        # splits the threads between the processes
    share = get_num_threads()
    if comm.rank == 0:
        # this process times the other implementations too, at the full count: it takes
        # its share only while it steps as rank 0 (run() below)
        set_num_threads(threads)
    try:
        m = build_model(model, input_shape(model), 10, seed=0)
        SyncBatchNorm.convert_sync_batchnorm(m, comm)   # the whole batch's statistics
        fuse(m)
        opt = SGD(m.parameters(), lr=LR, momentum=MOMENTUM)
        broadcast_model(m, comm)
        broadcast_optimizer(opt, comm)
        ts = DistributedTrainStep(m, CrossEntropyLoss(), opt, comm=comm)
        x, y = _batch(model, batch)
        lo, hi = shard(batch, comm.size, comm.rank)
        x, y = x[lo:hi], y[lo:hi]
    except BaseException as e:
        if comm.rank:
            print(f"gpunn bench: rank {comm.rank}: {type(e).__name__}: {e}", flush=True)
            comm.finish(1)
        raise
    cmd = np.zeros(1, dtype=np.int64)
    if comm.rank:                                   # a child: step when told, until told not
        while True:
            comm.broadcast(cmd, name="the bench's step command")
            if cmd[0] == 0:
                comm.finish(0)
            ts(x, y, total=batch)

    def run():
        cmd[0] = 1
        comm.broadcast(cmd, name="the bench's step command")
        set_num_threads(share)
        try:
            ts(x, y, total=batch)
        finally:
            set_num_threads(threads)

    def close():
        cmd[0] = 0
        comm.broadcast(cmd, name="the bench's step command")
        comm.finish()
    return Step(run, lambda: None, close, notes=[f"{procs} processes x batch "
                                                 f"{hi - lo} (SyncBatchNorm)"])


def _graphed(ts, x, y):
    """The graphed form of TrainStep ``ts`` (gpunn.train's GraphedTrainStep, where this gpunn
    has it), replayed on the static batch."""
    try:
        from ..train import GraphedTrainStep
    except ImportError:
        raise Unavailable("this gpunn has no graphed training step (gpunn.train."
                          "GraphedTrainStep)") from None
    g = GraphedTrainStep(ts.model, ts.loss_fn, ts.optimizer)
    return lambda: g(x, y)


# -- PyTorch ------------------------------------------------------------------------------------
def _torch_step(model, batch, device, graph):
    try:
        import torch
    except ImportError:
        raise Unavailable("PyTorch is not installed (pip install torch)") from None
    from ..zoo import build_model
    from .torch_twin import to_torch

    cuda = str(device).startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise Unavailable("PyTorch sees no CUDA device")
    if graph and not cuda:
        raise Unavailable("CUDA graphs need a CUDA device")
    tdev = torch.device(device if cuda else "cpu")
    if cuda:
        # cuDNN on (autotuned), TF32 off for convolutions and GEMMs: gpunn computes float32
        torch.backends.cudnn.enabled = True
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    shape = input_shape(model)
    net = to_torch(build_model(model, shape, 10, seed=0), shape).to(tdev)
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    lossf = torch.nn.CrossEntropyLoss()
    xn, yn = _batch(model, batch)
    x, y = torch.from_numpy(xn).to(tdev), torch.from_numpy(yn).to(tdev)
    loss_sum = torch.zeros((), dtype=torch.float64, device=tdev)
    correct = torch.zeros((), dtype=torch.int64, device=tdev)

    def step():
        opt.zero_grad(set_to_none=not graph)
        logits = net(x)
        loss = lossf(logits, y)
        loss.backward()
        opt.step()
        loss_sum.add_(loss.detach() * batch)
        correct.add_((logits.detach().argmax(1) == y).sum())

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    run = step
    if graph:
        # the recipe of torch.cuda.graphs: warm up on a side stream, capture one step, replay
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            step()
        run = g.replay

    def close():
        nonlocal net, opt, x, y, run
        net = opt = x = y = run = None
        if cuda:
            torch.cuda.empty_cache()
    return Step(run, sync, close)
