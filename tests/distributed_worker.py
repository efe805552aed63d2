"""Scenarios for tests/test_distributed.py, run as ``mpiexec -n N python distributed_worker.py
SCENARIO OUT [ARGS]`` (or as one plain process: the single-process reference).

Each writes what the test compares into the folder OUT, one file per rank. Not collected by
pytest (no test_ prefix): it is a program the tests launch.
"""
import json
import os
import signal
import sys
import time

import numpy as np

import gpunn
import gpunn.distributed as dist
from gpunn.data import DataLoader
from gpunn.train import TrainStep


def data(n=1025, features=20, classes=5, seed=0, image=False):
    rng = np.random.default_rng(seed)
    if image:
        x = rng.standard_normal((n, 2, 6, 6))
    else:
        x = rng.standard_normal((n, features))
    y = rng.integers(0, classes, n)
    return x, y


def mlp():
    return gpunn.Sequential(gpunn.Linear(20, 16, rng=1, dtype=np.float64), gpunn.ReLU(),
                            gpunn.Linear(16, 5, rng=2, dtype=np.float64))


def bn_net(sync):
    bn2, bn1 = (gpunn.SyncBatchNorm, gpunn.SyncBatchNorm) if sync else \
        (gpunn.BatchNorm2d, gpunn.BatchNorm1d)
    # no bias before a batch-norm: its gradient is zero, the bias only rounding noise
    return gpunn.Sequential(
        gpunn.Conv2d(2, 4, 3, padding=1, bias=False, rng=1, dtype=np.float64),
        bn2(4, dtype=np.float64), gpunn.ReLU(), gpunn.Flatten(),
        gpunn.Linear(144, 16, bias=False, rng=2, dtype=np.float64),
        bn1(16, dtype=np.float64), gpunn.ReLU(), gpunn.Linear(16, 5, rng=3, dtype=np.float64))


def optimizer(name, model):
    if name == "sgd":
        return gpunn.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    return gpunn.Adam(model.parameters(), lr=1e-2)


def train(model, opt, x, y, per_rank_batch, steps, comm, hook=None, **step_kw):
    """``steps`` steps at per-rank batch ``per_rank_batch``: data-parallel when comm has
    several ranks, the plain single-process loader and step otherwise."""
    loss = gpunn.CrossEntropyLoss()
    if comm.size > 1:
        dist.broadcast_model(model, comm)
        dist.broadcast_optimizer(opt, comm)
        loader = dist.ShardedLoader(x, y, per_rank_batch, comm=comm, seed=3)
        step = dist.DistributedTrainStep(model, loss, opt, comm=comm, loader=loader, **step_kw)
        model.last_step = step
    else:
        loader = DataLoader(x, y, per_rank_batch, seed=3)
        step = TrainStep(model, loss, opt)
    done = 0
    while done < steps:
        for xb, yb in loader:
            step(xb, yb)
            done += 1
            if hook is not None:
                hook(done, comm)
            if done == steps:
                break
    return model


def save(out, name, comm, arrays):
    np.savez(os.path.join(out, f"{name}-rank{comm.rank}-of{comm.size}.npz"), **arrays)


def equiv(out, per_rank_batch, steps="50"):
    comm = dist.init()
    x, y = data()
    for opt_name in ("sgd", "adam"):
        model = mlp()
        train(model, optimizer(opt_name, model), x, y, int(per_rank_batch), int(steps), comm)
        save(out, f"equiv-{opt_name}", comm, model.state_dict())


def deep_mlp():
    return gpunn.Sequential(gpunn.Linear(20, 32, rng=1, dtype=np.float64), gpunn.ReLU(),
                            gpunn.Linear(32, 16, rng=2, dtype=np.float64), gpunn.Tanh(),
                            gpunn.Linear(16, 5, rng=3, dtype=np.float64))


def buckets(out, per_rank_batch, steps="40"):
    """The gradient all-reduce in buckets of 256 bytes started during the backward pass, and in
    one piece after it (bucket_mb=0); how many buckets there were and how many started
    before the backward pass ended."""
    comm = dist.init()
    x, y = data()
    counts = {}
    for tag, mb in (("small", 1 / 4096), ("none", 0)):
        model = deep_mlp()
        train(model, optimizer("sgd", model), x, y, int(per_rank_batch), int(steps), comm,
              bucket_mb=mb)
        save(out, f"buckets-{tag}", comm, model.state_dict())
        b = getattr(getattr(model, "last_step", None), "buckets", None)
        counts[tag] = None if b is None else [len(b), b.early]
    if comm.rank == 0:
        with open(os.path.join(out, f"buckets-of{comm.size}.json"), "w") as f:
            json.dump(counts, f)


def wide_mlp():
    """A first Linear large enough (20 x 16384) for ranks that share the model to shard its
    weight gradient (gpunn/distributed/weight_shards.py); the second is too small to."""
    return gpunn.Sequential(gpunn.Linear(20, 16384, rng=1, dtype=np.float64), gpunn.ReLU(),
                            gpunn.Linear(16384, 5, rng=2, dtype=np.float64))


# per-rank sample counts of each step, for 3 ranks: the first step sets the stages' rows (10);
# then a short rank (padding rows, unequal weights), a rank over the stage (it computes its
# own gradient, the others add it), a rank without samples, all ranks over the stage
SHARD_STEPS = [(10, 10, 10), (10, 10, 9), (12, 8, 10), (1, 1, 0), (10, 10, 10),
               (11, 11, 11), (10, 10, 10), (3, 10, 7)]


def sgd_step(model, comm):
    """The training step of ``model`` with SGD: data-parallel over comm's ranks (replicas
    made equal first), or a plain one in a single process."""
    opt = optimizer("sgd", model)
    loss = gpunn.CrossEntropyLoss()
    if comm.size == 1:
        return TrainStep(model, loss, opt)
    dist.broadcast_model(model, comm)
    dist.broadcast_optimizer(opt, comm)
    return dist.DistributedTrainStep(model, loss, opt, comm=comm)


def shards(out):
    """The scripted steps above: 3 forked ranks sharing the model, or one process taking each
    step's samples at once; rank 0 writes which ranks staged their rows at each step."""
    comm = dist.init()
    x, y = data(n=sum(map(sum, SHARD_STEPS)))
    model = wide_mlp()
    step = sgd_step(model, comm)
    staged, pos = [], 0
    for counts in SHARD_STEPS:
        total = sum(counts)
        if comm.size > 1:
            lo = pos + sum(counts[:comm.rank])
            step(x[lo:lo + counts[comm.rank]], y[lo:lo + counts[comm.rank]], total=total)
            staged.append([[int(f) for f in sh.staged] for sh in step._shared.shards])
        else:
            step(x[pos:pos + total], y[pos:pos + total])
        pos += total
    save(out, "shards", comm, model.state_dict())
    if comm.rank == 0:
        # outside a step the hook stands aside: a plain backward computes the layer's dW
        first = model.layers[0]
        xb = x[:7]
        h = model.forward(xb, train=True)
        d = np.random.default_rng(5).standard_normal(h.shape)
        # the reference first: the model's backward frees what its forward saved
        dz = model.layers[2].backward(d) * (first.forward(xb) > 0)
        model.backward(d)
        report = {"staged": staged, "shards": len(step._shared.shards) if comm.size > 1 else 0,
                  "outside_a_step": bool(np.allclose(first.grads["W"], xb.T @ dz,
                                                     rtol=1e-12, atol=1e-12))}
        with open(os.path.join(out, f"shards-of{comm.size}.json"), "w") as f:
            json.dump(report, f)


def syncbn(out, per_rank_batch, steps="50"):
    comm = dist.init()
    x, y = data(image=True)
    model = bn_net(sync=comm.size > 1)
    train(model, optimizer("sgd", model), x, y, int(per_rank_batch), int(steps), comm)
    sd = model.state_dict()
    # the same keys whichever batch-norm class built it
    save(out, "syncbn", comm, sd)


def gradcheck(out):
    """Finite differences of the *global* objective L = sum_r w_r L_r through SyncBatchNorm,
    with uneven local batches (3 and 4 samples), against the layer's backward."""
    comm = dist.init()
    results = {}
    for shape in ((3, 4, 5), (3,)):
        n_local = 3 + comm.rank
        rng = np.random.default_rng(100 + comm.rank)
        x = rng.standard_normal((n_local, *shape)) * 2 + 0.5
        c = rng.standard_normal((n_local, *shape))           # L_r = mean_i sum(y_i * c_i)
        layer = gpunn.SyncBatchNorm(3, dtype=np.float64, comm=comm)
        layer.params["gamma"] = np.array([1.5, -0.7, 0.9])
        layer.params["beta"] = np.array([0.1, 0.2, -0.3])
        total = int(comm.allreduce(np.array([n_local]), "sum")[0])
        w = n_local / total

        def global_loss():
            saved = {k: v.copy() for k, v in layer.buffers.items()}
            yv = layer.forward(x, train=True)
            for k, v in saved.items():
                layer.buffers[k][...] = v
            local = float((yv * c).sum()) / n_local
            return float(comm.allreduce(np.array([w * local]), "sum")[0])

        layer.forward(x, train=True)
        layer.grad_weight = w
        dx = layer.backward(c / n_local)
        dx_global = w * dx                     # dL/dx of this rank's x
        dgamma = comm.allreduce(w * layer.grads["gamma"].copy(), "sum")
        dbeta = comm.allreduce(w * layer.grads["beta"].copy(), "sum")
        eps, worst = 1e-5, 0.0
        # every rank perturbs in turn; all ranks take part in every forward
        for owner in range(comm.size):
            count = int(comm.broadcast_object(x.size if comm.rank == owner else None, owner))
            for i in range(count):
                diff = []
                for sign in (1, -1):
                    if comm.rank == owner:
                        x.flat[i] += sign * eps
                    diff.append(global_loss())
                    if comm.rank == owner:
                        x.flat[i] -= sign * eps
                num = (diff[0] - diff[1]) / (2 * eps)
                if comm.rank == owner:
                    ana = dx_global.flat[i]
                    worst = max(worst, abs(num - ana) / max(abs(num) + abs(ana), 1e-8))
        for name, grad in (("gamma", dgamma), ("beta", dbeta)):
            p = layer.params[name]
            for k in range(3):
                diff = []
                for sign in (1, -1):
                    p[k] += sign * eps
                    diff.append(global_loss())
                    p[k] -= sign * eps
                num = (diff[0] - diff[1]) / (2 * eps)
                worst = max(worst, abs(num - grad[k]) / max(abs(num) + abs(grad[k]), 1e-8))
        worst = float(comm.allreduce(np.array([worst]), "max")[0])
        results[str(shape)] = worst
    if comm.rank == 0:
        with open(os.path.join(out, "gradcheck.json"), "w") as f:
            json.dump(results, f)


def dropout(out, tag):
    comm = dist.init()
    model = gpunn.Sequential(gpunn.Linear(20, 30, rng=1, dtype=np.float64),
                             gpunn.Dropout(0.5, seed=42), gpunn.Linear(30, 5, rng=2,
                                                                        dtype=np.float64))
    x, y = data()
    masks, last = {}, {}
    drop, drop_forward = model[1], model[1].forward

    def forward(x, **kw):                     # the mask as the forward made it (the model's
        y = drop_forward(x, **kw)             # backward frees it)
        last["mask"] = drop._mask.copy()
        return y
    drop.forward = forward

    def keep(done, comm):
        masks[f"step{done}"] = last["mask"]
    train(model, optimizer("sgd", model), x, y, 50, 3, comm, hook=keep)
    save(out, f"dropout-{tag}", comm, masks)


def die(out, how, timeout="2"):
    """Rank 1 is killed (how=kill) or stops answering (how=stall) at step 5 of 1000. The
    collective deadline becomes ``timeout`` seconds after the first step (not before: on a
    busy machine the ranks may start further apart than that)."""
    comm = dist.init()
    x, y = data()
    model = mlp()

    def fault(done, comm):
        if done == 1:
            comm.timeout = float(timeout)
        if done == 5 and comm.rank == 1:
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(120)
    train(model, optimizer("sgd", model), x, y, 10, 1000, comm, hook=fault)
    print(f"rank {comm.rank}: finished, which it must not", flush=True)


def collectives(out):
    """Every collective on arrays larger than a shared-memory slot (8 MiB: they go in pieces)
    and on objects larger than it, each op and a few dtypes; rank 0 writes what it checked."""
    comm = dist.init()
    r, n = comm.rank, comm.size
    checks = {}
    big = np.arange(3_000_000, dtype=np.float64) * (r + 1)            # 24 MB
    comm.allreduce(big, "sum")
    checks["sum"] = bool(np.array_equal(big, np.arange(3_000_000) * sum(range(1, n + 1))))
    for op, want in (("max", n - 1), ("min", 0)):
        a = np.full((7, 3), r, dtype=np.int32)
        comm.allreduce(a, op)
        checks[op] = bool((a == want).all())
    m = np.full(5, float(r), dtype=np.float32)
    comm.allreduce(m, "mean")
    checks["mean"] = bool(np.allclose(m, (n - 1) / 2))
    b = np.full(2_500_000, r, dtype=np.float32)                        # 10 MB, from rank 1
    comm.broadcast(b, root=1)
    checks["broadcast"] = bool((b == 1).all())
    payload = comm.broadcast_object({"blob": bytes(range(256)) * 40_000} if r == 1 else None, 1)
    checks["object"] = payload["blob"] == bytes(range(256)) * 40_000
    checks["allgather"] = comm.allgather_object(("rank", r)) == [("rank", k) for k in range(n)]
    try:
        comm.allreduce(np.zeros((4, 4))[:, 1], "sum")
        checks["strided"] = "accepted"
    except ValueError as e:
        checks["strided"] = str(e)
    comm.barrier()
    if r == 0:
        with open(os.path.join(out, "collectives.json"), "w") as f:
            json.dump({"size": n, "backend": comm.backend, **checks}, f)


def _shared_bytes(address, nbytes):
    """Bytes of the memory mappings overlapping [address, address + nbytes) that this
    process shares with another (/proc/self/smaps: Shared_Clean + Shared_Dirty; NumPy's
    madvise for huge pages splits a large array's mapping in several)."""
    inside, total = False, 0
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo < address + nbytes and address < hi
            elif inside and head in ("Shared_Clean:", "Shared_Dirty:"):
                total += int(line.split()[1]) * 1024
    return total


def preloaded(out):
    """gpunn train --procs's data set, loaded once before the fork (gpunn.runs.preload_data):
    every rank's data_and_model takes the arrays the parent loaded (same address, pages
    shared with the other ranks) without reading the set again; the next call reads anew."""
    from gpunn import runs
    cfg = runs.RunConfig(model="mlp1000", dataset="synthetic", seed=4, val_size=500)
    runs.preload_data(cfg)
    address = runs._preloaded[1].x_train.__array_interface__["data"][0]
    comm = dist.init()                                  # GPUNN_PROCS: the ranks fork here
    reads = []
    load = runs._load_data
    runs._load_data = lambda args: reads.append(args) or load(args)
    data, _ = runs.data_and_model(cfg)
    first = {"same_address": data.x_train.__array_interface__["data"][0] == address,
             "reads": len(reads), "nbytes": int(data.x_train.nbytes)}
    comm.barrier()                                      # every rank holds the pages now
    first["shared_bytes"] = _shared_bytes(address, first["nbytes"])
    comm.barrier()
    again, _ = runs.data_and_model(cfg)
    first["reads_after_second_call"] = len(reads)
    first["second_equal"] = bool(np.array_equal(again.x_train, data.x_train))
    with open(os.path.join(out, f"preloaded-rank{comm.rank}.json"), "w") as f:
        json.dump(first, f)
    comm.barrier()


def fake_nccl(out):
    """The NCCL bootstrap and calls over real MPI ranks, with CuPy and NCCL replaced by the
    stand-ins of tests/fake_cuda.py (their all-reduce goes through MPI on host arrays)."""
    sys.path.insert(0, os.path.dirname(__file__))
    from fake_cuda import FakeArray, FakeCupy, FakeNccl
    from gpunn.distributed.nccl import make_nccl
    comm = dist.init()
    nccl = FakeNccl(mpi=comm)
    shared = make_nccl(comm, 0, nccl=nccl, cupy=FakeCupy())      # both ranks on cuda:0
    refused = [shared is None, comm.nccl_off_reason]
    gpu = make_nccl(comm, comm.rank, nccl=nccl, cupy=FakeCupy())  # one GPU each
    x = FakeArray(np.arange(6, dtype=np.float32) + 10 * comm.rank, device=comm.rank)
    gpu.allreduce(x, "sum")
    m = FakeArray(np.full(3, float(comm.rank + 1)), device=comm.rank)
    gpu.allreduce(m, "mean")
    b = FakeArray(np.full(4, comm.rank, dtype=np.int64), device=comm.rank)
    gpu.broadcast(b, root=1)
    gpu.synchronize()
    with open(os.path.join(out, f"fake_nccl-rank{comm.rank}.json"), "w") as f:
        json.dump({"uid": list(nccl.made[0][1]), "made": [nccl.made[0][0], nccl.made[0][2]],
                   "sum": x.host.tolist(), "mean": m.host.tolist(), "bcast": b.host.tolist(),
                   "calls": nccl.calls, "refused": refused}, f)


def nccl_gpu(out):
    """On a real GPU (tests marked gpu): one MPI rank, so an NCCL communicator of one (NCCL
    refuses two ranks on one GPU). Collectives on CuPy arrays go through NCCL, and a step whose
    gradient buffers are all-reduced through it trains model4 like the plain step, bit for bit
    (a sum over one rank is the identity)."""
    import cupy
    comm = dist.init("mpi")
    dev = dist.device_for_rank("cuda", comm)
    report = {"device": str(dev)}
    for dtype in (np.float32, np.float64):
        x = cupy.arange(6, dtype=dtype)
        comm.allreduce(x, "sum")
        comm.allreduce(x, "mean")
        comm.allreduce(x, "max")
        comm.broadcast(x, 0)
        comm.synchronize()
        report[np.dtype(dtype).name] = cupy.asnumpy(x).tolist()
    report["backend"] = comm.nccl.backend
    report["nccl_off_reason"] = comm.nccl_off_reason
    # every variant halves the gradients (exact), then: nothing; one NCCL all-reduce per
    # buffer after backward; NCCL all-reduces of 2 KiB buckets started on NCCL's own stream
    # as the layers finish (gpunn/distributed/buckets.py). A bucket read before its layer's
    # kernels wrote it, or an update before its all-reduce, would change the weights.
    from gpunn.distributed.buckets import GradientBuckets
    finals = {}
    for variant in ("plain", "nccl", "buckets"):
        model = gpunn.build_model("model4", (1, 28, 28), 10, seed=0, dtype=np.float64).to(dev)
        opt = gpunn.SGD(model.parameters(), lr=0.05, momentum=0.9)
        step = TrainStep(model, gpunn.CrossEntropyLoss(), opt)
        buckets = None
        if variant == "plain":
            step.after_backward.append(
                lambda s: [g.__imul__(0.5) for g in (slot.grads for slot in s.optimizer.slots)])
        elif variant == "nccl":
            step.after_backward.append(
                lambda s: [comm.allreduce(g.__imul__(0.5), "sum", name="gradients")
                           for g in (slot.grads for slot in s.optimizer.slots)])
        else:
            buckets = GradientBuckets(comm, opt.slots, bucket_bytes=2048)
            step.after_layer = buckets.step_done
            step.after_backward.append(lambda s: buckets.finish())
        rng = np.random.default_rng(0)
        xb = cupy.asarray(rng.random((32, 1, 28, 28)))
        yb = cupy.asarray(rng.integers(0, 10, 32))
        for _ in range(20):
            if buckets is not None:
                buckets.begin(0.5)
            step(xb, yb)
        comm.synchronize()
        finals[variant] = model.state_dict()
        if buckets is not None:
            report["buckets"], report["early"] = len(buckets), buckets.early
    for variant in ("nccl", "buckets"):
        report[f"{variant}_equal"] = all(np.array_equal(finals["plain"][k], finals[variant][k])
                                         for k in finals["plain"])
    with open(os.path.join(out, "nccl_gpu.json"), "w") as f:
        json.dump(report, f)


class Data:
    """What fit() reads: train / validation / test splits."""

    def __init__(self):
        x, y = data(n=1300)
        self.x_train, self.y_train = x[:1025], y[:1025]
        self.x_val, self.y_val = x[1025:1175], y[1025:1175]
        self.x_test, self.y_test = x[1175:], y[1175:]


def fit(out, name, *settings):
    """gpunn.fit into OUT/NAME with settings ``key=value``: batch (per rank), epochs,
    max_steps, resume (1: continue OUT/NAME), global_batch (keep a run's global batch on a
    new number of ranks). Evaluations every 300 samples, a checkpoint at each."""
    kw = dict(s.split("=") for s in settings)
    comm = dist.init()
    model = mlp()
    opt = optimizer("sgd", model)
    cfg = gpunn.TrainConfig(epochs=int(kw.get("epochs", 2)), batch_size=int(kw["batch"]),
                            eval_every=300, progress=False, seed=3,
                            max_steps=int(kw["max_steps"]) if "max_steps" in kw else None,
                            global_batch=int(kw["global_batch"]) if "global_batch" in kw else None)
    run = os.path.join(out, name)
    result = gpunn.fit(model, gpunn.CrossEntropyLoss(), opt, Data(), cfg, out_dir=run,
                       device="cpu", resume=kw.get("resume") == "1")
    save(out, f"fit-{name}", comm, model.state_dict())
    with open(os.path.join(out, f"fit-{name}-history-rank{comm.rank}.json"), "w") as f:
        json.dump(result.history, f)


def guard(out, net, poison_rank, poison_step, layer, index):
    """gpunn.fit on the ranks (NonFiniteGuard on, as in gpunn train) of ``net`` (mlp, or
    wide: its first Linear's weight gradient sharded between ranks that share the model)
    with value ``index`` of Linear ``layer``'s weight gradient made NaN on rank
    ``poison_rank`` only, in its backward call number ``poison_step`` (the loss of that step
    stays finite). Each rank writes the error it stopped with, the step of the checkpoint in
    OUT/run and whether that checkpoint is all finite."""
    from gpunn.errors import NonFiniteError
    from gpunn.serialization import load_checkpoint
    comm = dist.init()
    model = mlp() if net == "mlp" else wide_mlp()
    target, calls = model.layers[int(layer)], [0]
    orig = target.backward

    def backward(dout):
        d = orig(dout)
        calls[0] += 1
        if comm.rank == int(poison_rank) and calls[0] == int(poison_step):
            shard = getattr(target.defer_weight_grad, "__self__", None)
            if shard is not None and shard.active:    # staged for the reduction's GEMM:
                shard.X[shard.rank * shard.cap, int(index)] = np.nan   # dW row `index` NaN
            else:
                target.grads["W"].reshape(-1)[int(index)] = np.nan
        return d
    target.backward = backward
    cfg = gpunn.TrainConfig(epochs=2, batch_size=50, eval_every=300, progress=False, seed=3)
    run = os.path.join(out, "run")
    try:
        gpunn.fit(model, gpunn.CrossEntropyLoss(), optimizer("sgd", model), Data(), cfg,
                  out_dir=run, device="cpu")
        err = ""
    except NonFiniteError as e:
        err = str(e)
    comm.barrier()
    ck = os.path.join(run, "checkpoint.npz")
    got = {"error": err, "checkpoint_step": None, "checkpoint_finite": None}
    if os.path.exists(ck):
        c = load_checkpoint(ck)
        got["checkpoint_step"] = int(c["state"]["step"])
        got["checkpoint_finite"] = all(bool(np.isfinite(v).all()) for v in c["model"].values())
    with open(os.path.join(out, f"guard-rank{comm.rank}.json"), "w") as f:
        json.dump(got, f)
    sys.exit(0)


def spread(out, net):
    """Two steps of a global batch of 100 (``net``: mlp, or wide with a sharded weight
    gradient), each rank recording the flat gradient buffer before the average (a hook
    put first), after the whole step, and, in the second step only, inside a plain hook
    after the average (one that is not segment_aware). One process records the gradient
    of the whole batch at the same places."""
    comm = dist.init()
    x, y = data(n=200)
    model = mlp() if net == "mlp" else wide_mlp()
    step = sgd_step(model, comm)
    opt = step.optimizer
    got = {}

    def buffer():
        return opt.slots[0].grads.copy()
    step.after_backward.insert(0, lambda s: got.__setitem__("before1", buffer()))
    lo, hi = (50 * comm.rank, 50 * comm.rank + 50) if comm.size > 1 else (0, 100)
    step(x[lo:hi], y[lo:hi], **({"total": 100} if comm.size > 1 else {}))
    got["after1"] = buffer()
    step.after_backward[0] = lambda s: got.__setitem__("before2", buffer())
    step.after_backward.append(lambda s: got.__setitem__("hook2", buffer()))
    step(x[100 + lo:100 + hi], y[100 + lo:100 + hi], **({"total": 100} if comm.size > 1 else {}))
    if comm.size > 1:
        seg = step._shared.segments[0][comm.rank]
        got["segment"] = np.array([seg.start, seg.stop])
    save(out, f"spread-{net}", comm, got)


if __name__ == "__main__":
    scenario, out, *args = sys.argv[1:]
    {"collectives": collectives, "equiv": equiv, "syncbn": syncbn, "gradcheck": gradcheck, "dropout": dropout,
     "die": die, "fake_nccl": fake_nccl, "shards": shards, "preloaded": preloaded, "buckets": buckets, "fit": fit, "nccl_gpu": nccl_gpu,
     "guard": guard, "spread": spread}[scenario](out, *args)
