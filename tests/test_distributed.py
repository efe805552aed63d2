"""Data-parallel training (gpunn.distributed).

The first part needs no MPI: sharding, the world of one, SyncBatchNorm alone, launch
detection, the missing-mpi4py message, and the NCCL wrapper's logic against stand-ins for
CuPy and NCCL (tests/fake_cuda.py). The second part launches real ranks with the mpiexec
installed beside this interpreter (``pip install 'gpunn[mpi]'``: mpi4py and MPICH), running
the scenarios of tests/distributed_worker.py; it is skipped, with the reason, where mpi4py
or mpiexec is missing.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpunn
import gpunn.distributed as dist
from gpunn.data import DataLoader
from gpunn.distributed import LocalComm, ShardedLoader, shard
from gpunn.distributed.env import launched_by_mpi
from gpunn.errors import ShapeError
from gpunn.ops.random import rank_seed
from gpunn.train import TrainStep

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from distributed_worker import mlp  # noqa: E402
import fake_cuda  # noqa: E402
from fake_cuda import FakeArray, FakeCupy, FakeEvent, FakeNccl  # noqa: E402


class Rank(LocalComm):
    """A communicator that only says which rank it is (sharding needs nothing more)."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size


# -- sharding ---------------------------------------------------------------------------------
def test_shard_splits_as_evenly_as_possible():
    assert [shard(10, 3, r) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [shard(1, 2, r) for r in range(2)] == [(0, 1), (1, 1)]
    assert [shard(4, 2, r) for r in range(2)] == [(0, 2), (2, 4)]
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        shard(5, 2, 2)


@pytest.mark.parametrize("n,batch,world,global_batch", [(103, 10, 3, None), (100, 25, 2, None),
                                                         (61, 7, 3, 20), (5, 1, 4, None)])
def test_the_ranks_pieces_make_the_single_process_batch(n, batch, world, global_batch):
    x = np.arange(n * 2, dtype=np.float64).reshape(n, 2)
    y = np.arange(n)
    loaders = [ShardedLoader(x, y, batch, comm=Rank(r, world), global_batch=global_batch,
                             seed=7) for r in range(world)]
    g = loaders[0].global_batch
    assert g == (global_batch or batch * world)
    ref = DataLoader(x, y, g, seed=7)
    assert all(len(lo) == len(ref) for lo in loaders)
    for epoch in (0, 1):
        per_rank = [list(lo.batches(epoch)) for lo in loaders]
        for k, (xb, yb) in enumerate(ref.batches(epoch)):
            pieces = [per_rank[r][k] for r in range(world)]
            np.testing.assert_array_equal(np.concatenate([p[1] for p in pieces]), yb)
            np.testing.assert_array_equal(np.concatenate([p[0] for p in pieces]), xb)
            sizes = [len(p[1]) for p in pieces]
            assert max(sizes) - min(sizes) <= 1      # as even as possible
        assert loaders[0].last_total == len(yb)      # the global size of the last batch
    # resuming mid-epoch gives the same pieces
    rest = list(loaders[-1].batches(1, start=1))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(rest, per_rank[-1][1:]))


def test_smallest_shard_and_epochs():
    x, y = np.zeros((21, 1)), np.arange(21)
    lo = ShardedLoader(x, y, 5, comm=Rank(1, 2))         # global 10: 10, 10, 1
    assert lo.smallest_shard() == 0 and lo.total_of(2) == 1
    assert ShardedLoader(x, y, 4, comm=Rank(0, 2)).smallest_shard() == 2   # 8, 8, 5
    a, b = [yb.copy() for _, yb in lo], [yb.copy() for _, yb in lo]   # epochs 0 and 1
    assert lo.epoch == 2 and not all(np.array_equal(p, q) for p, q in zip(a, b))
    with pytest.raises(ValueError, match="give batch_size"):
        ShardedLoader(x, y, comm=Rank(0, 2))
    assert ShardedLoader(x, y, global_batch=10, comm=Rank(0, 3)).batch_size == 4


# -- a world of one: no MPI -------------------------------------------------------------------
def test_world_of_one_collectives_are_identities():
    comm = dist.world()
    assert (comm.rank, comm.size, dist.rank(), dist.world_size(), dist.is_main()) == \
        (0, 1, 0, 1, True)
    a = np.arange(4.0)
    assert comm.allreduce(a, "mean") is a and np.array_equal(a, np.arange(4.0))
    assert comm.broadcast(a) is a and comm.broadcast_object({"k": 1}) == {"k": 1}
    assert comm.allgather_object(3) == [3]
    with pytest.raises(ValueError, match="op must be one of"):
        comm.allreduce(a, "prod")
    with pytest.raises(TypeError, match="floating-point"):
        comm.allreduce(np.arange(3), "mean")
    with pytest.raises(ValueError, match="C-contiguous"):
        comm.allreduce(np.zeros((4, 4))[:, 1])
    assert dist.device_for_rank("cpu").kind == "cpu"


def _model_with_dropout():
    return gpunn.Sequential(gpunn.Linear(6, 12, rng=1, dtype=np.float64), gpunn.ReLU(),
                            gpunn.Dropout(0.3, seed=5),
                            gpunn.Linear(12, 3, rng=2, dtype=np.float64))


def test_distributed_step_alone_is_the_plain_step_bit_for_bit():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((70, 6)), rng.integers(0, 3, 70)
    finals = []
    for distributed in (False, True):
        model = _model_with_dropout()
        opt = gpunn.SGD(model.parameters(), lr=0.1, momentum=0.9)
        loss = gpunn.CrossEntropyLoss()
        if distributed:
            loader = ShardedLoader(x, y, 16, seed=1)
            step = dist.DistributedTrainStep(model, loss, opt, loader=loader)
        else:
            loader = DataLoader(x, y, 16, seed=1)
            step = TrainStep(model, loss, opt)
        for _ in range(3):
            for xb, yb in loader:
                step(xb, yb)
        finals.append(model.state_dict())
        assert step.metrics()[0] > 0
    for k in finals[0]:
        np.testing.assert_array_equal(finals[0][k], finals[1][k], err_msg=k)


def test_dropout_rank_is_folded_into_the_stream():
    assert rank_seed(123, 0) == 123
    seeds = {rank_seed(123, r) for r in range(8)}
    assert len(seeds) == 8
    layer = gpunn.Dropout(0.5, seed=9)
    x = np.ones((4, 50))
    m0 = layer.forward(x, train=True)
    layer.host_state["step"] = 0
    layer.rank = 1
    m1 = layer.forward(x, train=True)
    assert not np.array_equal(m0, m1)
    assert "rank" not in layer.host_state                # not saved: ranks may change on resume
    dist.set_rank(gpunn.Sequential(layer), 0)
    layer.host_state["step"] = 0
    np.testing.assert_array_equal(layer.forward(x, train=True), m0)


def test_convert_sync_batchnorm_keeps_the_layers_state():
    """Every BatchNorm1d/2d becomes a SyncBatchNorm in place: the same Parameters (still in the
    flat buffer the optimizer updates), running statistics and settings."""
    m = gpunn.build_model("cnn-bn", (1, 8, 8), 10, seed=0)
    bn = m[2]
    gamma, flat = bn.params["gamma"], m.parameters()[2].flat
    bn.buffers["running_mean"][...] = 0.25
    assert gpunn.SyncBatchNorm.convert_sync_batchnorm(m) == 1
    assert type(m[2]) is gpunn.SyncBatchNorm and m[2] is bn
    assert bn.params["gamma"] is gamma and m.parameters()[2].flat is flat
    assert (bn.buffers["running_mean"] == 0.25).all() and bn.eps == 1e-5
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    m.forward(x, train=True)                                   # alone: plain batch-norm
    assert gpunn.SyncBatchNorm.convert_sync_batchnorm(m) == 0


@pytest.mark.parametrize("args,message", [
    (["--procs", "2", "--device", "cuda"], "runs on the CPU only"),
    (["--procs", "2", "--distributed"], "does not combine with --distributed"),
])
def test_procs_refuses_what_it_cannot_do(tmp_path, args, message):
    r = gpunn_cli(0, *TRAIN[:-2], "--max-steps", 1, "--out", tmp_path / "r", *args,
                  check=False, timeout=60)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not (tmp_path / "r").exists()


def test_a_bad_gpunn_procs_says_so(tmp_path):
    r = gpunn_cli(0, *TRAIN, "--max-steps", 1, "--out", tmp_path / "r", check=False,
                  timeout=60, env={"GPUNN_PROCS": "two"})
    assert r.returncode == 2 and "GPUNN_PROCS must be a whole number" in r.stderr, r.stderr


@pytest.mark.parametrize("shape,ref", [((9, 3, 4, 5), gpunn.BatchNorm2d),
                                       ((9, 3), gpunn.BatchNorm1d)])
def test_sync_batchnorm_alone_is_batchnorm(shape, ref):
    rng = np.random.default_rng(3)
    a, b = gpunn.SyncBatchNorm(3, dtype=np.float64), ref(3, dtype=np.float64)
    for layer in (a, b):
        layer.params["gamma"] = np.array([1.5, -0.5, 2.0])
    for _ in range(2):
        x, d = rng.standard_normal(shape) * 3 + 1, rng.standard_normal(shape)
        np.testing.assert_allclose(a.forward(x, train=True), b.forward(x, train=True),
                                   rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(a.backward(d), b.backward(d), rtol=1e-12, atol=1e-13)
        for k in ("gamma", "beta"):
            np.testing.assert_allclose(a.grads[k], b.grads[k], rtol=1e-13, atol=1e-13)
    for k in ("running_mean", "running_var"):
        np.testing.assert_allclose(a.buffers[k], b.buffers[k], rtol=1e-13)
    np.testing.assert_allclose(a.forward(x, train=False), b.forward(x, train=False), rtol=1e-13)
    with pytest.raises(ShapeError, match="with 3 channels"):
        a.forward(rng.standard_normal((2, 4, 5, 5)), train=True)


# -- launching ------------------------------------------------------------------------------
@pytest.mark.parametrize("env,launched", [
    ({}, False), ({"PMI_RANK": "0", "PMI_SIZE": "1"}, False), ({"PMI_SIZE": "4"}, True),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, True), ({"MV2_COMM_WORLD_SIZE": "3"}, True),
    ({"PMIX_RANK": "0"}, True), ({"SLURM_NTASKS": "4", "SLURM_PROCID": "0"}, False)])
def test_launch_detection(env, launched):
    assert launched_by_mpi(env) is launched


def test_asking_for_mpi_without_mpi4py_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)      # makes `import mpi4py` fail
    monkeypatch.setenv("PMI_SIZE", "2")
    dist._reset_for_tests()
    try:
        with pytest.raises(dist.MPINotAvailable, match=r"pip install 'gpunn\[mpi\]'.*"):
            dist.init()
        with pytest.raises(dist.MPINotAvailable, match="PMI_SIZE=2"):
            dist.init("mpi")
        monkeypatch.delenv("PMI_SIZE")
        assert isinstance(dist.init(), LocalComm)          # no launch: a world of one, no MPI
    finally:
        dist._reset_for_tests()


# -- the NCCL wrapper's logic, without a GPU ------------------------------------------------------
def _nccl(mpi=None, **kw):
    from gpunn.distributed.nccl import NCCLComm
    nccl, cupy = FakeNccl(), FakeCupy()
    return NCCLComm(mpi or LocalComm(), 0, nccl=nccl, cupy=cupy, **kw), nccl, cupy


def test_nccl_bootstrap_and_calls():
    comm, nccl, cupy = _nccl()
    assert nccl.made == [(1, nccl.get_unique_id(), 0)] and cupy.cuda.devices == [0]
    x = FakeArray(np.ones(5, dtype=np.float32))
    side = comm.stream.ptr
    assert side != 0x5EA                                   # a stream of its own
    assert comm.allreduce(x, "mean") is x
    assert nccl.calls == [["allReduce", 5, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, True, side]]
    comm.broadcast(FakeArray(np.zeros(3, np.float64)), root=0)
    assert nccl.calls[-1] == ["bcast", 3, nccl.NCCL_FLOAT64, 0, side]
    comm.allreduce(FakeArray(np.zeros(2, np.int64)), "max")
    assert nccl.calls[-1][2:4] == [nccl.NCCL_INT64, nccl.NCCL_MAX]
    with pytest.raises(TypeError, match="NCCL collectives take"):
        comm.allreduce(FakeArray(np.zeros(2, np.complex64)))
    with pytest.raises(ValueError, match="cuda:1 but this rank's NCCL communicator is for cuda:0"):
        comm.allreduce(FakeArray(np.zeros(2, np.float32), device=1))
    comm.synchronize()
    assert not comm._pending


def test_nccl_runs_on_its_own_stream_between_two_device_waits():
    """The all-reduce starts after what the compute stream queued before it (the gradients'
    writes) and the compute stream waits for its end only at ``wait()``: in between, work
    queued on the compute stream (the rest of the backward pass) runs beside it. No host
    wait anywhere."""
    comm, nccl, _ = _nccl()
    side, compute = comm.stream.ptr, 0x5EA
    fake_cuda.stream_log.clear()
    x = FakeArray(np.ones(4, dtype=np.float32))
    handle = comm.iallreduce(x, "mean")
    log = list(fake_cuda.stream_log)
    (rec, s0, ready), (wait, s1, ready2), call = log[:3]
    assert (rec, s0, wait, s1, ready2) == ("record", compute, "wait", side, ready)
    assert call == ("allReduce", side)
    assert ("enter", side) in log and ("exit", side) in log  # the mean's division there too
    assert log[-1][:2] == ("record", side)                 # the end of the collective
    assert not any(e[0] == "wait" and e[1] == compute for e in log)   # not waited for yet
    done = log[-1][2]
    handle.wait()
    assert fake_cuda.stream_log[-1] == ("wait", compute, done)
    assert handle.test()


def test_nccl_collective_past_its_deadline_aborts_with_a_message(capsys, monkeypatch):
    mpi = LocalComm()
    mpi.timeout = 0.05
    comm, nccl, _ = _nccl(mpi, max_pending=2)
    monkeypatch.setattr(FakeEvent, "never", True)         # the peer never answers
    comm.allreduce(FakeArray(np.ones(4, np.float32)), name="the gradient all-reduce")
    with pytest.raises(SystemExit):
        comm.synchronize()
    err = capsys.readouterr().err
    assert "the gradient all-reduce (NCCL allreduce of 4 float32 values) did not complete " \
           "within 0.05 s" in err and "another rank has died" in err
    assert nccl.aborted                                    # the NCCL communicator was aborted


def test_nccl_bounds_the_collectives_in_flight(monkeypatch):
    comm, _, _ = _nccl(max_pending=2)
    monkeypatch.setattr(FakeEvent, "never", True)
    comm.allreduce(FakeArray(np.ones(1, np.float32)))
    comm.allreduce(FakeArray(np.ones(1, np.float32)))      # two in flight: not waited for
    assert len(comm._pending) == 2
    monkeypatch.setattr(FakeEvent, "never", False)
    comm.allreduce(FakeArray(np.ones(1, np.float32)))      # the third waits for the oldest
    assert len(comm._pending) == 1


def test_nccl_async_error_aborts(capsys):
    comm, nccl, _ = _nccl()
    nccl.async_error = "NCCL error: remote process exited"
    with pytest.raises(SystemExit):
        comm.allreduce(FakeArray(np.ones(1, np.float32)))
    assert "NCCL reported an error" in capsys.readouterr().err and nccl.aborted


def test_without_nccl_every_rank_stages_through_the_host(monkeypatch):
    from gpunn.distributed.nccl import make_nccl, nccl_status
    mpi = LocalComm()
    off = FakeNccl()
    off.available = False
    assert make_nccl(mpi, 0, nccl=off, cupy=FakeCupy()) is None
    assert "libnccl" in mpi.nccl_off_reason and "nvidia-nccl" in mpi.nccl_off_reason
    monkeypatch.setenv("GPUNN_NCCL", "0")
    assert nccl_status(FakeNccl()) == (False, "GPUNN_NCCL=0")


# -- real ranks ---------------------------------------------------------------------------------
def _mpiexec():
    """The mpiexec installed beside this interpreter (the mpich wheel puts it in the venv's
    bin), else one on PATH; None without mpi4py, whatever is on PATH."""
    if importlib.util.find_spec("mpi4py") is None:
        return None
    for name in ("mpiexec", "mpirun"):
        p = Path(sys.executable).parent / name         # not resolved: a venv's bin, not the base's
        if p.exists():
            return str(p)
    return shutil.which("mpiexec")


MPIEXEC = _mpiexec()
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason=(
    "mpi4py and an mpiexec beside this Python are needed: pip install 'gpunn[mpi]'"))
ENV = {**os.environ, "GPUNN_DEVICE": "cpu", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
       "MKL_NUM_THREADS": "1", "GPUNN_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}


def _run(ranks, cmd, *, timeout, env, check, launcher="mpi"):
    """Run ``cmd`` on ``ranks`` ranks (0: one plain process): MPI ranks under mpiexec, or
    processes the program forks itself (launcher "procs": GPUNN_PROCS)."""
    env = {**ENV, **(env or {})}
    if ranks and launcher == "mpi":
        cmd = [MPIEXEC, "-n", str(ranks), *cmd]
    elif ranks:
        env["GPUNN_PROCS"] = str(ranks)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}"
    return r


def launch(ranks, *args, timeout=120, env=None, check=True, launcher="mpi"):
    """Run ``distributed_worker.py args`` on ``ranks`` ranks (0: one plain process)."""
    return _run(ranks, [sys.executable, str(HERE / "distributed_worker.py"), *map(str, args)],
                timeout=timeout, env=env, check=check, launcher=launcher)


# Both launchers run the same scenarios: MPI ranks (mpiexec), and processes forked on this
# machine sharing memory (gpunn train --procs / GPUNN_PROCS: nothing to install)
@pytest.fixture(params=[pytest.param("procs"), pytest.param("mpi", marks=needs_mpi)])
def launcher(request):
    return request.param


def load(out, name, rank, size):
    return dict(np.load(out / f"{name}-rank{rank}-of{size}.npz"))


def rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def test_collectives_on_real_ranks(tmp_path, launcher):
    """Arrays and objects larger than the forked ranks' 8 MiB slots (moved in pieces), every
    op, a broadcast from rank 1, and a strided buffer refused with a message."""
    launch(2, "collectives", tmp_path, launcher=launcher)
    got = json.loads((tmp_path / "collectives.json").read_text())
    assert got.pop("backend") == {"procs": "shm", "mpi": "mpi"}[launcher]
    assert "must be C-contiguous" in got.pop("strided")
    assert got == {"size": 2, "sum": True, "max": True, "min": True, "mean": True,
                   "broadcast": True, "object": True, "allgather": True}


def test_two_ranks_take_the_steps_of_one_process_at_twice_the_batch(tmp_path, launcher):
    """float64, no batch-norm: 2 ranks x 50 == 1 process x 100 after 50 steps (1025 samples:
    every epoch ends on a batch of 25, split 13 + 12 and weighted exactly), for SGD with
    momentum and weight decay and for Adam; and the two replicas are equal bit for bit."""
    launch(2, "equiv", tmp_path, 50, 50, launcher=launcher)
    launch(0, "equiv", tmp_path, 100, 50)
    start = mlp().state_dict()
    for opt in ("sgd", "adam"):
        r0, r1 = load(tmp_path, f"equiv-{opt}", 0, 2), load(tmp_path, f"equiv-{opt}", 1, 2)
        one = load(tmp_path, f"equiv-{opt}", 0, 1)
        assert set(r0) == set(one)
        for k in one:
            assert np.array_equal(r0[k], r1[k]), f"{opt} {k}: the replicas drifted apart"
            assert rel(r0[k], one[k]) <= 1e-12, f"{opt} {k}: {rel(r0[k], one[k])}"
            assert rel(one[k], start[k]) > 1e-3, f"{k} did not train"


def test_three_forked_ranks_take_the_steps_of_one_process(tmp_path):
    """An odd number of ranks sharing the model (segments of unequal length, a reduction in
    rank order through scratch): 3 x 34 == 1 x 102 after 30 steps, replicas bit-identical."""
    launch(3, "equiv", tmp_path, 34, 30, launcher="procs", env={"GPUNN_DIST_TIMEOUT": "60"})
    launch(0, "equiv", tmp_path, 102, 30)
    for opt in ("sgd", "adam"):
        ranks = [load(tmp_path, f"equiv-{opt}", r, 3) for r in range(3)]
        one = load(tmp_path, f"equiv-{opt}", 0, 1)
        for k in one:
            assert all(np.array_equal(ranks[0][k], x[k]) for x in ranks[1:]), (opt, k)
            assert rel(ranks[0][k], one[k]) <= 1e-12, (opt, k, rel(ranks[0][k], one[k]))


def test_sharded_weight_gradients_are_the_single_process_gradients(tmp_path):
    """Forked ranks sharing the model compute a large Linear's weight gradient a share of rows
    each, over every rank's samples (gpunn/distributed/weight_shards.py). Through uneven
    ranks, a rank over the stage's rows (it computes its own, the others add it), a rank
    without samples and all ranks over the stage: 3 ranks == 1 process after every scripted
    step, to 1e-12 in float64, replicas bit for bit; and outside a step the layer computes its
    own weight gradient again."""
    import distributed_worker as worker
    launch(3, "shards", tmp_path, launcher="procs", env={"GPUNN_DIST_TIMEOUT": "60"})
    launch(0, "shards", tmp_path)
    got = json.loads((tmp_path / "shards-of3.json").read_text())
    assert got["shards"] == 1 and got["outside_a_step"]
    # which ranks staged (1) or computed their own gradient (0), per step
    assert [s[0] for s in got["staged"]] == [
        [1, 1, 1], [1, 1, 1], [0, 1, 1], [1, 1, 0], [1, 1, 1], [0, 0, 0], [1, 1, 1], [1, 1, 1]]
    assert len(got["staged"]) == len(worker.SHARD_STEPS)
    ranks = [load(tmp_path, "shards", r, 3) for r in range(3)]
    one = load(tmp_path, "shards", 0, 1)
    start = worker.wide_mlp().state_dict()
    for k in one:
        assert all(np.array_equal(ranks[0][k], x[k]) for x in ranks[1:]), k
        assert rel(ranks[0][k], one[k]) <= 1e-12, (k, rel(ranks[0][k], one[k]))
        assert rel(one[k], start[k]) > 1e-4, f"{k} did not train"


def test_forked_ranks_without_the_shared_arena_all_reduce_instead(tmp_path):
    """GPUNN_SHM_ARENA_BYTES=0 (or a system that refuses the mapping): every rank keeps its own
    model and the gradients go through the slots' all-reduce; the same steps, the same bits
    on both replicas."""
    launch(2, "equiv", tmp_path, 50, 20, launcher="procs", env={"GPUNN_SHM_ARENA_BYTES": "0"})
    launch(0, "equiv", tmp_path, 100, 20)
    for opt in ("sgd", "adam"):
        r0, r1 = load(tmp_path, f"equiv-{opt}", 0, 2), load(tmp_path, f"equiv-{opt}", 1, 2)
        one = load(tmp_path, f"equiv-{opt}", 0, 1)
        for k in one:
            assert np.array_equal(r0[k], r1[k]), (opt, k)
            assert rel(r0[k], one[k]) <= 1e-12, (opt, k, rel(r0[k], one[k]))


@pytest.mark.parametrize("how", [pytest.param("mpi", marks=needs_mpi), "procs"])
def test_gradient_buckets_started_during_backward_are_the_one_all_reduce(tmp_path, how):
    """The gradient all-reduce in 256-byte buckets started as the backward pass goes (four
    per step, every one before the backward pass ends) gives the same bits as one all-reduce
    after it, on both ranks, and the single process's weights at twice the batch (1025
    samples: short last batches weighted exactly). Forked ranks without the shared arena
    all-reduce like MPI ranks; with it they share one model and have no buckets at all."""
    env = {"GPUNN_SHM_ARENA_BYTES": "0"} if how == "procs" else None
    launch(2, "buckets", tmp_path, 50, 40, launcher=how, env=env)
    launch(0, "buckets", tmp_path, 100, 40)
    counts = json.loads((tmp_path / "buckets-of2.json").read_text())
    assert counts["none"] is None
    n, early = counts["small"]
    assert n == 4 and early == n, counts
    one = load(tmp_path, "buckets-none", 0, 1)
    for k in one:
        a, b = load(tmp_path, "buckets-small", 0, 2)[k], load(tmp_path, "buckets-small", 1, 2)[k]
        whole = load(tmp_path, "buckets-none", 0, 2)[k]
        assert np.array_equal(a, b) and np.array_equal(a, whole), k
        assert rel(a, one[k]) <= 1e-12, (k, rel(a, one[k]))
    launch(2, "buckets", tmp_path, 50, 2, launcher="procs")   # the shared model: no buckets
    assert json.loads((tmp_path / "buckets-of2.json").read_text()) == \
        {"small": None, "none": None}


def test_forked_ranks_share_the_data_set_loaded_before_the_fork(tmp_path):
    """gpunn train --procs loads the data set once, before forking: no rank reads it again,
    and the pages are shared between the ranks (N ranks: the data set's memory once)."""
    launch(2, "preloaded", tmp_path, launcher="procs")
    for r in range(2):
        got = json.loads((tmp_path / f"preloaded-rank{r}.json").read_text())
        assert got["same_address"] and got["reads"] == 0, got
        assert got["shared_bytes"] >= got["nbytes"] // 2, got
        assert got["reads_after_second_call"] == 1 and got["second_equal"], got


def test_gpunn_train_procs_loads_the_data_before_forking(tmp_path, monkeypatch):
    """The CLI preloads the run's data set (a new run and a resumed one) before the fork."""
    from click.testing import CliRunner
    from gpunn import runs
    from gpunn.cli import main
    seen = []

    def init(backend, **kw):
        seen.append((backend, runs._preloaded))
        raise SystemExit(7)
    monkeypatch.setattr("gpunn.distributed.init", init)
    args = ["train", "--model", "mlp1000", "--dataset", "synthetic", "--seed", "5", "--procs",
            "2", "--out", str(tmp_path / "r")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 7 and not (tmp_path / "r").exists(), r.output
    backend, (key, data) = seen.pop()
    assert backend == "procs" and key[0] == "synthetic" and key[3] == 5
    assert data.x_train.shape[1:] == (1, 28, 28)
    runs._preloaded = None


def test_sync_batchnorm_on_two_ranks_is_batchnorm_on_the_joined_batch(tmp_path, launcher):
    """Conv + SyncBatchNorm (4-d) + Linear + SyncBatchNorm (2-d), 2 ranks x 50, against the
    same network with BatchNorm2d/1d in one process at batch 100: weights and running
    statistics after 50 steps."""
    launch(2, "syncbn", tmp_path, 50, 50, launcher=launcher)
    launch(0, "syncbn", tmp_path, 100, 50)
    r0, r1, one = (load(tmp_path, "syncbn", 0, 2), load(tmp_path, "syncbn", 1, 2),
                   load(tmp_path, "syncbn", 0, 1))
    assert {"1.running_mean", "5.running_var"} <= set(one)
    for k in one:
        assert np.array_equal(r0[k], r1[k]), k
        assert rel(r0[k], one[k]) <= 1e-12, f"{k}: {rel(r0[k], one[k])}"


def test_sync_batchnorm_gradient_of_the_global_objective(tmp_path, launcher):
    """Central differences of the all-ranks loss (every rank runs every perturbed forward)
    against the hand-written backward, local batches of 3 and 4."""
    launch(2, "gradcheck", tmp_path, launcher=launcher)
    worst = json.loads((tmp_path / "gradcheck.json").read_text())
    assert set(worst) == {"(3, 4, 5)", "(3,)"}
    assert max(worst.values()) < 1e-6, worst


def test_dropout_masks_differ_per_rank_and_repeat(tmp_path, launcher):
    launch(2, "dropout", tmp_path, "a", launcher=launcher)
    launch(2, "dropout", tmp_path, "b", launcher=launcher)
    launch(0, "dropout", tmp_path, "a")
    a0, a1 = load(tmp_path, "dropout-a", 0, 2), load(tmp_path, "dropout-a", 1, 2)
    b0, b1 = load(tmp_path, "dropout-b", 0, 2), load(tmp_path, "dropout-b", 1, 2)
    alone = load(tmp_path, "dropout-a", 0, 1)
    assert set(a0) == {"step1", "step2", "step3"}
    for k in a0:
        assert not np.array_equal(a0[k], a1[k])            # different units per rank
        assert np.array_equal(a0[k], b0[k]) and np.array_equal(a1[k], b1[k])   # reproducible
        assert np.array_equal(a0[k], alone[k])             # rank 0 = one process


def test_a_killed_rank_ends_the_job(tmp_path, launcher):
    r = launch(2, "die", tmp_path, "kill", check=False, timeout=60, launcher=launcher)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "finished" not in out
    assert "signal 9" in out or "KILLED" in out.upper(), out


def test_a_rank_that_stops_answering_times_out_with_a_message(tmp_path, launcher):
    r = launch(2, "die", tmp_path, "stall", 2, check=False, timeout=60, launcher=launcher)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "finished" not in out
    # MPI all-reduces the gradient buffer; forked ranks sum it in their shared memory
    kind = "allreduce" if launcher == "mpi" else "shared reduction"
    assert f"rank 0 of 2: the gradient all-reduce (step 6 of this process) ({kind} of 421 " \
           f"float64 values) did not complete within 2 s" in out, out
    assert "another rank has died or stopped responding. Aborting all ranks" in out


@needs_mpi
def test_nccl_bootstrap_over_mpi_with_stand_ins(tmp_path):
    """Rank 0's unique id reaches every rank, each builds its communicator (size, uid, rank),
    and the results of the collectives (done through MPI by the stand-in) are in place."""
    launch(2, "fake_nccl", tmp_path)
    got = [json.loads((tmp_path / f"fake_nccl-rank{r}.json").read_text()) for r in (0, 1)]
    assert got[0]["uid"] == got[1]["uid"]
    assert [g["made"] for g in got] == [[2, 0], [2, 1]]
    for g in got:
        assert g["refused"][0] and "ranks 0 and 1 share cuda:0" in g["refused"][1]
        assert g["sum"] == [10.0, 12.0, 14.0, 16.0, 18.0, 20.0]
        assert g["mean"] == [1.5, 1.5, 1.5] and g["bcast"] == [1, 1, 1, 1]


def _history_equal(a, b):
    assert a.keys() == b.keys() and a["samples"] == b["samples"] and a["step"] == b["step"]
    for k in a:
        if k in ("seconds",):
            continue
        for u, v in zip(a[k], b[k]):
            assert (u is None and v is None) or abs(u - v) <= 1e-12 * max(1.0, abs(v)), (k, u, v)


def _fit_result(out, name, size):
    return (load(out, f"fit-{name}", 0, size),
            json.loads((out / f"fit-{name}-history-rank0.json").read_text()))


def test_fit_on_two_ranks_is_fit_on_one_process_at_twice_the_batch(tmp_path, launcher):
    """gpunn.fit under 2 ranks: sharded evaluation rows, checkpoints by rank 0, the same
    history and weights as one process at the global batch; every rank gets the same rows."""
    launch(2, "fit", tmp_path, "two", "batch=50", "epochs=2", launcher=launcher)
    launch(0, "fit", tmp_path, "one", "batch=100", "epochs=2")
    (w2, h2), (w1, h1) = _fit_result(tmp_path, "two", 2), _fit_result(tmp_path, "one", 1)
    _history_equal(h2, h1)
    assert h1["samples"] == [300, 600, 900, 1025, 1325, 1625, 1925, 2050]
    _history_equal(json.loads((tmp_path / "fit-two-history-rank1.json").read_text()), h2)
    for k in w1:
        assert rel(w2[k], w1[k]) <= 1e-12, k
    assert (tmp_path / "two" / "checkpoint.npz").exists()


@pytest.mark.parametrize("first,then", [(2, 0), (0, 2)], ids=["2 ranks then 1", "1 then 2 ranks"])
def test_resume_on_another_number_of_ranks(tmp_path, first, then, launcher):
    """A run stopped mid-epoch (step 7 of 11) resumes on the other number of ranks with the
    run's global batch (100) and ends where an uninterrupted run ends."""
    batch = {2: "batch=50", 0: "batch=100"}
    launch(first, "fit", tmp_path, "run", batch[first], "max_steps=7", launcher=launcher)
    # on 2 ranks, 50 each; on 1 rank the run's global batch of 2 x 50, as gpunn train does
    again = ["batch=50"] if then else ["batch=50", "global_batch=100"]
    launch(then, "fit", tmp_path, "run", *again, "epochs=2", "resume=1", launcher=launcher)
    launch(0, "fit", tmp_path, "ref", "batch=100", "epochs=2")
    (w, h), (w_ref, h_ref) = (_fit_result(tmp_path, "run", then or 1),
                              _fit_result(tmp_path, "ref", 1))
    assert h["step"][:4] == [3, 6, 7, 9]               # the evaluation at the stop is kept
    _history_equal({k: v[:2] + v[3:] for k, v in h.items()}, h_ref)
    for k in w_ref:
        assert rel(w[k], w_ref[k]) <= 1e-12, k


@needs_mpi
def test_the_scaling_benchmark_runs(monkeypatch):
    """gpunn bench --ranks N's measurement, at its smallest (no speed is asserted)."""
    from gpunn.distributed.bench import format_scaling, run_scaling
    monkeypatch.setattr(os, "environ", {**os.environ, "PYTHONPATH": ENV["PYTHONPATH"]})
    res = run_scaling(("model1",), batch=20, ranks=2, steps=1, rounds=1, repeats=1)
    (row,) = res["rows"]
    assert set(row["configs"]) == {"1 rank x 1 thread", "1 rank x 2 threads",
                                   "2 ranks x 1 thread", "2 forked processes x 1 thread",
                                   "2 independent processes"}
    assert row["configs"]["2 forked processes x 1 thread"]["global_batch"] == 40
    assert row["configs"]["2 independent processes"]["global_batch"] == 40
    assert row["configs"]["2 ranks x 1 thread"]["global_batch"] == 40
    assert row["configs"]["1 rank x 1 thread"]["grad_mb"] == pytest.approx(7850 * 4 / 1e6,
                                                                           rel=0.01)
    assert all(c["images_per_s"] > 0 for c in row["configs"].values())
    assert "| model1 |" in format_scaling(res)


@needs_mpi
@pytest.mark.gpu
def test_nccl_on_one_gpu_with_one_rank(tmp_path):
    """The real NCCL path (a lent GPU): collectives on CuPy arrays through NCCL, and a step
    all-reducing its gradient buffers through it, after backward or in buckets on NCCL's own
    stream during backward, trains like the plain step, bit for bit."""
    launch(0, "nccl_gpu", tmp_path, env={"GPUNN_DEVICE": ""})
    got = json.loads((tmp_path / "nccl_gpu.json").read_text())
    assert got["backend"] == "nccl", got["nccl_off_reason"]
    for dtype in ("float32", "float64"):
        assert got[dtype] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert got["nccl_equal"] and got["buckets_equal"]
    assert got["buckets"] > 2 and got["early"] == got["buckets"]


# -- gpunn train under mpiexec ------------------------------------------------------------------
TRAIN = ["train", "--dataset", "synthetic", "--model", "model2", "--dtype", "float64",
         "--eval-every", "2000", "--val-size", "0.1", "--no-progress", "--device", "cpu"]


def gpunn_cli(ranks, *args, check=True, env=None, timeout=180, launcher="mpi"):
    return _run(ranks, [sys.executable, "-m", "gpunn.cli", *map(str, args)], timeout=timeout,
                env=env, check=check, launcher=launcher)


def weights(run):
    w = np.load(run / "weights.npz")
    return {k: w[k] for k in w.files if w[k].dtype.kind == "f"}


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    for k in wb:
        assert rel(wa[k], wb[k]) <= 1e-12, (k, rel(wa[k], wb[k]))


def test_gpunn_train_on_two_ranks_writes_one_run(tmp_path, launcher):
    """mpiexec -n 2 gpunn train: rank 0 alone writes the run and reports; the weights are
    those of one process at twice the batch."""
    two = gpunn_cli(2, *TRAIN, "--batch-size", 50, "--epochs", 1, "--out", tmp_path / "two", launcher=launcher)
    gpunn_cli(0, *TRAIN, "--batch-size", 100, "--epochs", 1, "--out", tmp_path / "one")
    assert two.stdout.count("test accuracy") == 1 and two.stderr.count("[eval] epoch 1.00") == 1
    assert_same_weights(tmp_path / "two", tmp_path / "one")
    cfg = json.loads((tmp_path / "two" / "config.json").read_text())
    assert cfg["ranks"] == 2 and cfg["batch_size"] == 50
    assert "x 2 ranks" in (tmp_path / "two" / "report.md").read_text()
    for f in ("checkpoint.npz", "metrics.csv", "metrics.json", "history.json", "curves.png"):
        assert (tmp_path / "two" / f).exists(), f
    assert not (tmp_path / "two" / ".gpunn.lock").exists()     # released by rank 0


def test_gpunn_train_sync_bn_on_two_ranks_is_batchnorm_on_the_global_batch(tmp_path, launcher):
    """--sync-bn: cnn-bn (batch-norm after a convolution, no dropout) on 2 x 50 ends with the
    weights and running statistics of one process at 100; without it (per-rank statistics,
    PyTorch DDP's default) the weights differ."""
    args = [a if a != "model2" else "cnn-bn" for a in TRAIN] + ["--dropout", "0", "--epochs", 1,
                                                               "--max-steps", 30]
    gpunn_cli(2, *args, "--batch-size", 50, "--sync-bn", "--out", tmp_path / "sync",
              launcher=launcher)
    gpunn_cli(2, *args, "--batch-size", 50, "--out", tmp_path / "per-rank", launcher=launcher)
    gpunn_cli(0, *args, "--batch-size", 100, "--out", tmp_path / "one")
    # 1e-10, not 1e-12: 30 steps of a 4.9M-parameter network whose first layer's gradient
    # goes through batch-norm's normalisation, which amplifies the rounding of sums taken in
    # another order (the 1e-12 check of SyncBatchNorm itself is the scenario above)
    sync, w, one = (weights(tmp_path / d) for d in ("sync", "per-rank", "one"))
    assert sync.keys() == one.keys() and one
    assert max(rel(sync[k], one[k]) for k in one) <= 1e-10
    assert max(rel(w[k], one[k]) for k in one) > 1e-6
    assert json.loads((tmp_path / "sync" / "config.json").read_text())["sync_bn"] is True


@pytest.mark.parametrize("first,then", [(2, 0), (0, 2)], ids=["2 ranks then 1", "1 then 2 ranks"])
def test_gpunn_train_resumes_on_another_number_of_ranks(tmp_path, first, then, launcher):
    """A 2-rank run (2 x 50) resumed by one process trains at its global batch of 100, and a
    one-process run (100) resumed on 2 ranks at 2 x 50: both end as the uninterrupted run."""
    run = tmp_path / "run"
    gpunn_cli(first, *TRAIN, "--batch-size", 50 if first else 100, "--epochs", 1, "--out", run, launcher=launcher)
    again = gpunn_cli(then, "train", "--resume", run, "--epochs", 2, "--no-progress", launcher=launcher)
    assert "keeps the global batch of 100" in again.stderr, again.stderr
    gpunn_cli(0, *TRAIN, "--batch-size", 100, "--epochs", 2, "--out", tmp_path / "ref")
    assert_same_weights(run, tmp_path / "ref")
    h = json.loads((run / "history.json").read_text())
    assert h["samples"][-1] == 10800
    assert json.loads((run / "config.json").read_text())["ranks"] == (2 if first else 1)


def test_a_refused_run_directory_stops_every_rank_with_one_message(tmp_path, launcher):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "config.json").write_text("{}")
    r = gpunn_cli(2, *TRAIN, "--batch-size", 50, "--epochs", 1, "--out", out, check=False,
                  timeout=60, launcher=launcher)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("holds a run") == 1, r.stderr


def test_an_mpi_launch_without_mpi4py_says_what_to_install(tmp_path):
    code = ("import sys; sys.modules['mpi4py'] = None; from gpunn.cli import main; "
            f"main({['train', '--dataset', 'synthetic', '--out', str(tmp_path / 'r')]!r})")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, env={**ENV, "PMI_SIZE": "2", "PMI_RANK": "0"})
    assert r.returncode == 2, r.stderr
    assert "needs mpi4py and an MPI library" in r.stderr and "pip install 'gpunn[mpi]'" in r.stderr
    assert "PMI_SIZE=2" in r.stderr and not (tmp_path / "r").exists()


def test_ctrl_c_stops_every_rank_at_the_same_step_and_resumes(tmp_path, launcher):
    """Ctrl-C to mpiexec reaches the ranks at slightly different moments; they agree to stop
    after the same step (else one would wait in the next all-reduce for the deadline), rank 0
    writes the checkpoint once, the job exits 130, and one process resumes the run to its end
    (that a resume is exact on another number of ranks is tested above)."""
    import signal
    import time
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "gpunn.cli", *TRAIN, "--batch-size", "50",
           "--epochs", "100", "--eval-every", "500", "--out", str(run)]
    env = dict(ENV)
    if launcher == "mpi":                 # mpiexec forwards the signal to every rank
        cmd = [MPIEXEC, "-n", "2", *cmd]
    else:                                 # only rank 0 (the parent) gets it here
        env["GPUNN_PROCS"] = "2"
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env)
    deadline = time.monotonic() + 60
    while not (run / "checkpoint.npz").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, out + err
    assert err.count("interrupted: checkpoint written") == 1, err
    assert "did not complete" not in err
    from gpunn.serialization import load_checkpoint
    step = int(load_checkpoint(run / "checkpoint.npz")["state"]["step"])
    again = gpunn_cli(0, "train", "--resume", run, "--max-steps", step + 20, "--no-progress")
    assert "keeps the global batch of 100" in again.stderr
    assert json.loads((run / "history.json").read_text())["step"][-1] == step + 20


@pytest.mark.parametrize("net", ["mlp", "wide"])
def test_forked_ranks_hold_their_own_segment_of_the_average_unless_a_hook_reads_it_all(
        tmp_path, net):
    """Ranks sharing one model (--procs) need only their own segment of the averaged
    gradient for the update, so that is all the reduction writes into each rank's buffer
    (the rest keeps the rank's own gradient: no copy of the other segments); a hook after
    the average that is not segment_aware gets the whole average on every rank, as after an
    all-reduce: equal on both ranks and to one process's gradient of the whole batch.
    ``wide``: a weight gradient computed already summed by the reduction's GEMM."""
    launch(2, "spread", tmp_path, net, launcher="procs")
    launch(0, "spread", tmp_path, net)
    r0, r1 = load(tmp_path, f"spread-{net}", 0, 2), load(tmp_path, f"spread-{net}", 1, 2)
    one = load(tmp_path, f"spread-{net}", 0, 1)
    for r in (r0, r1):
        lo, hi = r["segment"]
        own = np.zeros(r["after1"].size, bool)
        own[lo:hi] = True
        assert rel(r["after1"][own], one["after1"][own]) <= 1e-12
        assert np.array_equal(r["after1"][~own], r["before1"][~own])
        assert not np.allclose(r["after1"][~own], one["after1"][~own])
        assert rel(r["hook2"], one["hook2"]) <= 1e-12
    assert np.array_equal(r0["hook2"], r1["hook2"])
    assert 0 < r0["segment"][1] == r1["segment"][0] < r0["after1"].size


@pytest.mark.parametrize("launcher_", ["procs", pytest.param("mpi", marks=needs_mpi)])
@pytest.mark.parametrize("net, rank, layer, index, name", [
    ("mlp", 1, 0, 3, "'0.W', of layer 0 Linear(20, 16"),       # rank 0's segment, from rank 1
    ("mlp", 0, 2, 70, "'2.W', of layer 2 Linear(16, 5"),       # rank 1's segment, from rank 0
    ("wide", 1, 0, 3, "'0.W', of layer 0 Linear(20, 16384"),   # sharded rows of rank 0
    ("wide", 0, 0, 19, "'0.W', of layer 0 Linear(20, 16384"),  # sharded rows of rank 1
])
def test_a_non_finite_gradient_on_one_rank_stops_every_rank_at_that_step(
        tmp_path, launcher_, net, rank, layer, index, name):
    """gpunn.fit over ranks with the non-finite guard on (as gpunn train --procs runs): a NaN
    put into one rank's gradient at step 3, whose loss is finite, stops every rank at step 3
    with the layer named, before the checkpoint that step 3 would write (evaluations every
    300 samples). Forked ranks hold only their own segment of the averaged gradient, so the
    reduction looks for NaN/inf as it sums and tells every rank; before this, the guard read
    a buffer the ranks no longer wrote, saw nothing, and a checkpoint of NaN weights was
    written at step 3 as 'intact and loadable'."""
    launch(2, "guard", tmp_path, net, rank, 3, layer, index, launcher=launcher_)
    for r in (0, 1):
        got = json.loads((tmp_path / f"guard-rank{r}.json").read_text())
        assert "non-finite values at step 3 (epoch 1, batch 3 of 11)" in got["error"], got
        assert "the loss is finite" in got["error"] and name in got["error"]
        assert got["checkpoint_step"] is None
