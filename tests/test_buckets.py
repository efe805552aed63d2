"""The gradient all-reduce in buckets started during the backward pass
(gpunn/distributed/buckets.py), without MPI: the plan, the moment each bucket starts, and the
step's arithmetic through a stand-in world of two identical ranks. The same with real ranks,
bit for bit against one all-reduce after backward: tests/test_distributed.py."""
import numpy as np
import pytest

import gpunn
from gpunn.distributed import DistributedTrainStep
from gpunn.distributed.buckets import plan_buckets
from gpunn.distributed.comm import Communicator
from gpunn.parameter import Parameter, pack_parameters
from gpunn.train import TrainStep


class Mirror(Communicator):
    """Rank 0 of two ranks that hold the same gradients: a sum is twice this rank's values
    (exact in binary floating point). ``log`` records each all-reduce's start and wait."""
    size = 2

    def __init__(self):
        self.log = []

    def allreduce(self, x, op="sum", *, name=""):
        x *= 2
        return x

    def iallreduce(self, x, op="sum", *, name=""):
        x *= 2
        self.log.append(("start", x.size, name))
        log, n = self.log, x.size

        class Handle:
            def test(self):
                return False

            def wait(self):
                log.append(("wait", n))
        return Handle()


def mlp():
    return gpunn.Sequential(gpunn.Linear(20, 32, rng=1, dtype=np.float64), gpunn.ReLU(),
                            gpunn.Linear(32, 16, rng=2, dtype=np.float64), gpunn.Tanh(),
                            gpunn.Linear(16, 5, rng=3, dtype=np.float64))


def batches(n=6, size=24, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((size, 20)), rng.integers(0, 5, size)) for _ in range(n)]


def test_buckets_cover_each_buffer_once_in_whole_parameters_from_the_end():
    rng = np.random.default_rng(0)
    p64 = [Parameter(rng.standard_normal(s)) for s in [(300,), (7,), (50, 10), (3,), (1000,)]]
    p32 = [Parameter(rng.standard_normal(s).astype(np.float32)) for s in [(11,), (400,)]]
    flats = pack_parameters(p64 + p32)
    assert len(flats) == 2
    buckets = plan_buckets(flats, bucket_bytes=2000, first_bytes=100)
    # the last buffer first, each from its end towards its start, touching, covering all
    assert [b.flat for b in buckets][0] is flats[1]
    for flat in flats:
        mine = [b for b in buckets if b.flat is flat]
        assert mine[0].hi == flat.total and mine[-1].lo == 0
        assert all(a.lo == b.hi for a, b in zip(mine, mine[1:]))
        assert sum(len(b.params) for b in mine) == len(flat.params)
        for b in mine:                                 # whole parameters, inside the range
            for p in b.params:
                i = flat.params.index(p)
                assert b.lo <= flat.offsets[i] and flat.offsets[i] + p.size <= b.hi
    assert buckets[0].nbytes >= 100 and len(buckets[0].params) == 1     # the small first one
    # each bucket reaches the cap unless it ends at its buffer's start
    assert all(b.nbytes >= 2000 or b.lo == 0 for b in buckets[1:])
    assert [len(b.params) for b in buckets] == [1, 1, 1, 2, 2]   # 400 | 11 | 1000 | 3+500 | 7+300


def test_a_bucket_starts_as_soon_as_its_layers_have_run_their_backward():
    """The last layer's gradients are all-reduced while the first layer still computes its
    backward: the log holds a start before the first layer's backward, and every wait after
    the backward pass."""
    model, comm = mlp(), Mirror()
    opt = gpunn.SGD(model.parameters(), lr=0.1)
    step = DistributedTrainStep(model, gpunn.CrossEntropyLoss(), opt, comm=comm,
                                bucket_mb=1 / 4096)
    for i, layer in enumerate(model.layers):
        def logged(dout, layer=layer, i=i, backward=type(layer).backward):
            comm.log.append(("backward", i))
            return backward(layer, dout)
        layer.backward = logged
    x, y = batches(1)[0]
    step(x, y, total=2 * len(x))
    events = [e[:2] for e in comm.log]
    assert events == [("backward", 4), ("start", 85), ("backward", 3), ("backward", 2),
                      ("start", 528), ("backward", 1), ("backward", 0), ("start", 32),
                      ("start", 640), ("wait", 85), ("wait", 528), ("wait", 32), ("wait", 640)]
    assert comm.log[1][2] == "the gradient all-reduce (step 1 of this process), bucket 0 of 4"
    assert len(step.buckets) == 4 and step.buckets.early == 4


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("bucket_mb", [1 / 4096, 0.001, 25, 0])
def test_the_bucketed_step_is_the_plain_step_of_the_global_batch(opt, bucket_mb):
    """Each rank's gradient weighted 1/2 and summed over two equal ranks is the plain step's
    gradient: a bucket reduced twice, or an element left out, would change the weights."""
    def make():
        m = mlp()
        o = gpunn.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4) if opt == "sgd" \
            else gpunn.Adam(m.parameters(), lr=1e-2)
        return m, o
    ref, ref_opt = make()
    plain = TrainStep(ref, gpunn.CrossEntropyLoss(), ref_opt)
    model, o = make()
    step = DistributedTrainStep(model, gpunn.CrossEntropyLoss(), o, comm=Mirror(),
                                bucket_mb=bucket_mb)
    for x, y in batches():
        plain(x, y)
        step(x, y, total=2 * len(x))
    assert (step.buckets is None) == (bucket_mb == 0)
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert np.array_equal(a, b), k


def test_a_rank_without_samples_starts_the_same_collectives_in_the_same_order():
    """A short last batch can leave a rank without a sample: it runs no backward pass, and
    must still start exactly the collectives of the others (MPI and NCCL match them by
    order), or the job would hang or mix up buffers."""
    logs = []
    for n in (8, 0):
        model, comm = mlp(), Mirror()
        step = DistributedTrainStep(model, gpunn.CrossEntropyLoss(),
                                    gpunn.SGD(model.parameters(), lr=0.1), comm=comm,
                                    bucket_mb=1 / 4096)
        x, y = batches(1, size=8)[0]
        step(x[:n], y[:n], total=9)
        logs.append([e for e in comm.log if e[0] == "start"])
    assert logs[0] == logs[1] and len(logs[0]) == 4


def test_a_model_that_does_not_report_its_layers_all_reduces_after_backward():
    class Wrapped(gpunn.Layer):
        def __init__(self):
            super().__init__()
            self.inner = mlp()

        def children(self):
            return [self.inner]

        def forward(self, x, *, train=None):
            return self.inner.forward(x, train=train)

        def backward(self, dout):
            return self.inner.backward(dout)

    model, comm = Wrapped(), Mirror()
    step = DistributedTrainStep(model, gpunn.CrossEntropyLoss(),
                                gpunn.SGD(model.parameters(), lr=0.1), comm=comm)
    x, y = batches(1)[0]
    step(x, y, total=2 * len(x))
    assert step.buckets is None and comm.log == []        # the blocking all-reduce instead


@pytest.mark.parametrize("bad", [-1, float("nan")])
def test_a_bad_bucket_size_is_refused(bad):
    model = mlp()
    with pytest.raises(ValueError, match="bucket_mb must be >= 0"):
        DistributedTrainStep(model, gpunn.CrossEntropyLoss(),
                             gpunn.SGD(model.parameters(), lr=0.1), comm=Mirror(), bucket_mb=bad)


@pytest.mark.parametrize("name", ["cnn-bn", "resnet-small"])
def test_fused_and_residual_models_start_every_bucket_during_backward_and_train_alike(name):
    """Fused steps (Conv2d+ReLU, ReLU+MaxPool2d: gpunn.fuse) and residual blocks report their
    parameters through the steps that run them: every bucket starts before the backward pass
    ends, and the step is the plain step of the global batch, bit for bit."""
    from gpunn.fuse import fuse, fused_pairs

    def make():
        m = fuse(gpunn.build_model(name, (1, 12, 12), 10, seed=0, dtype=np.float64))
        return m, gpunn.SGD(m.parameters(), lr=0.05, momentum=0.9)
    ref, ref_opt = make()
    plain = TrainStep(ref, gpunn.CrossEntropyLoss(), ref_opt)
    model, opt = make()
    assert fused_pairs(model)
    step = DistributedTrainStep(model, gpunn.CrossEntropyLoss(), opt, comm=Mirror(),
                                bucket_mb=1 / 1024)
    rng = np.random.default_rng(1)
    for _ in range(3):
        x, y = rng.standard_normal((8, 1, 12, 12)), rng.integers(0, 10, 8)
        plain(x, y)
        step(x, y, total=16)
    assert len(step.buckets) > 2 and step.buckets.early == len(step.buckets)
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert np.array_equal(a, b), k
