"""What one graphed training step launches, counted without a GPU: the emulated CUDA capture.

    python scripts/graph_census.py [--models cnn-bn,resnet20,vgg-cifar,resnet-small]
                                   [--batch N] [--by-kernel]

Builds each zoo model as `gpunn bench`'s graphed column does (float32, fused, SGD with
momentum), captures one training step with the emulated CUDA backend
(gpunn/testing/graph_emu.py records every kernel, GEMM, element-wise op, copy and fill a GPU
capture would) and prints per model: the graph's nodes (each one kernel launch on a GPU),
the bytes their array arguments span (every argument once per node, read or written: a
rough count of the memory traffic), the bytes allocated inside the capture (an upper
bound on the graph's own memory pool: the emulator never reuses a freed buffer), and the
share of each that batch-norm's forward and backward take, and the peak of device memory
in use during an eager step in steady state, beyond the parameters, optimizer state and the
batch (every buffer freed when its last reference goes, as CuPy's memory pool gets it back:
the step's working set, the layers' caches from the step before included until each layer
replaces its own). These are counts, not times:
on a GPU each node costs a launch (about 1-2 us from a graph, more from Python) and its
bytes cost time at the memory's bandwidth. The CUDA kernels run emulated one thread at a
time, so batch 128 takes a minute or two per model. Default batch: 100, or 128 for the
CIFAR models.
"""
from __future__ import annotations

import argparse
import gc
import sys
import weakref
from collections import Counter


def census(model_name: str, batch: int) -> dict:
    import numpy as np
    from gpunn.bench.steps import _batch, input_shape, LR, MOMENTUM
    from gpunn.fuse import fuse
    from gpunn.layers import norm
    from gpunn.losses import CrossEntropyLoss
    from gpunn.optim import SGD
    from gpunn.testing import emulated_cuda, to_device_arrays
    from gpunn.testing import graph_emu
    from gpunn.train import GraphedTrainStep
    from gpunn.zoo import build_model

    spans = []                                # node index ranges recorded inside batch-norm

    def counted(f):
        def run(self, *a, **k):
            rec = graph_emu._capturing()
            first = len(rec.nodes) if rec is not None else None
            out = f(self, *a, **k)
            if rec is not None:
                spans.append((first, len(rec.nodes)))
            return out
        return run

    live = {"now": 0, "peak": 0}              # device bytes allocated and not yet freed

    def tracked_new(shape, dtype, rec=None):
        a = saved_new(shape, dtype, rec)
        root = a.base
        live["now"] += root.nbytes
        live["peak"] = max(live["peak"], live["now"])
        weakref.finalize(root, _freed, root.nbytes)
        return a

    def _freed(nbytes):
        live["now"] -= nbytes

    saved = norm._BatchNorm._forward, norm._BatchNorm._backward
    saved_new = graph_emu._new
    norm._BatchNorm._forward, norm._BatchNorm._backward = map(counted, saved)
    graph_emu._new = tracked_new
    try:
        m = build_model(model_name, input_shape(model_name), 10, seed=0, dtype=np.float32)
        fuse(m)
        opt = SGD(m.parameters(), lr=LR, momentum=MOMENTUM)
        x, y = _batch(model_name, batch)
        with emulated_cuda(graphs=True):
            to_device_arrays(m, opt)
            step = GraphedTrainStep(m, CrossEntropyLoss(), opt)
            xd, yd = graph_emu.device_array(x), graph_emu.device_array(y)
            base = live["now"]                # the batch
            step(x, y)                        # warm-up: an eager step
            gc.collect()
            live["peak"] = live["now"]
            step.eager(xd, yd)                # an eager step in steady state, measured
            peak = live["peak"] - base
            step(x, y)                        # captured (then replayed once)
            cap = step._graph.capture
    finally:
        norm._BatchNorm._forward, norm._BatchNorm._backward = saved
        graph_emu._new = saved_new

    def spanned(v):
        if isinstance(v, graph_emu._View):
            return int(np.prod(v.shape)) * v.dtype.itemsize
        if isinstance(v, (tuple, list)):
            return sum(spanned(a) for a in v)
        return 0

    def node_bytes(node):
        return spanned(node.args) + spanned(tuple(node.kwargs.values()))

    in_bn = set()
    for a, b in spans:
        in_bn.update(range(a, b))
    nodes = cap.nodes
    return {
        "nodes": len(nodes), "bn_nodes": len(in_bn),
        "bytes": sum(map(node_bytes, nodes)),
        "bn_bytes": sum(node_bytes(nodes[i]) for i in in_bn),
        "pool": sum(r.nbytes for r in cap.pool),
        "peak": peak,
        "labels": Counter(n.label.split(" (")[0] for n in nodes),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="cnn-bn,resnet20,vgg-cifar,resnet-small")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--by-kernel", action="store_true", help="also list the nodes by label")
    a = ap.parse_args(argv)
    sys.path.insert(0, ".")
    from gpunn.bench.steps import CIFAR
    print(f"{'model':14s} {'batch':>5s} {'nodes':>6s} {'in BN':>6s} {'arg MB':>9s} "
          f"{'in BN':>8s} {'alloc MB':>9s} {'peak MB':>8s}")
    for name in a.models.split(","):
        batch = a.batch or (128 if name in CIFAR else 100)
        r = census(name, batch)
        print(f"{name:14s} {batch:5d} {r['nodes']:6d} {r['bn_nodes']:6d} {r['bytes'] / 1e6:9.1f} "
              f"{r['bn_bytes'] / 1e6:8.1f} {r['pool'] / 1e6:9.1f} {r['peak'] / 1e6:8.1f}",
              flush=True)
        if a.by_kernel:
            for label, k in r["labels"].most_common():
                print(f"    {k:5d}  {label}")


if __name__ == "__main__":
    main()
