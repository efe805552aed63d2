"""The graphed training step, verified without a GPU: the emulated CUDA records one captured
step (kernels, GEMMs, element-wise ops, copies, fills) and replays the recording on every
later batch (gpunn/testing/graph_emu.py). It must give the eager emulated step's weights bit
for bit in float64, and a replay must fail when a buffer the recording uses was freed."""
import numpy as np
import pytest

from gpunn.backend import DeviceError
from gpunn.graphs import GraphCaptureError, StepValues
from gpunn.losses import CrossEntropyLoss
from gpunn.optim import SGD, Adam
from gpunn.testing import (CaptureError, StaleBufferError, device_array, emulated_cuda,
                           to_device_arrays)
from gpunn.train import GraphedTrainStep, TrainStep
from gpunn.zoo import build_model

SHAPE = (1, 12, 12)
N, BATCH, EPOCHS = 44, 8, 2          # 6 batches an epoch, the last one short (4)


def _batches():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, *SHAPE))
    y = rng.integers(0, 5, size=N)
    for e in range(EPOCHS):
        perm = np.random.default_rng(100 + e).permutation(N)
        for i in range(0, N, BATCH):
            yield e, x[perm[i:i + BATCH]], y[perm[i:i + BATCH]]


def _setup(name, opt, dropout):
    m = build_model(name, SHAPE, 5, seed=3, dtype=np.float64, dropout=dropout)
    if opt == "sgd":
        o = SGD(m.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-3)
    else:
        o = Adam(m.parameters(), lr=2e-3, weight_decay=1e-3)
    return m, o


def _train(name, opt, dropout, graphed, *, between=None):
    """EPOCHS epochs; the lr changes at each epoch start (as a schedule would)."""
    m, o = _setup(name, opt, dropout)
    losses, metrics = [], []
    with emulated_cuda(graphs=graphed):
        if graphed:
            to_device_arrays(m, o)
            step = GraphedTrainStep(m, CrossEntropyLoss(), o)
        else:
            step = TrainStep(m, CrossEntropyLoss(), o)
        epoch = -1
        for k, (e, xb, yb) in enumerate(_batches()):
            if e != epoch:
                if epoch >= 0:
                    metrics.append(step.metrics())
                step.reset_metrics(np)
                o.lr = 0.01 / (1 + e)
                epoch = e
            if between is not None:
                between(k, m, o, step)
            losses.append(float(step(xb, yb)))
        metrics.append(step.metrics())
    return losses, metrics, m.state_dict(), o.state_dict(), getattr(step, "stats", None)


def _assert_same(a, b):
    assert a[0] == b[0], "losses differ"
    assert a[1] == b[1], "running loss / accuracy differ"
    for k in a[2]:
        assert a[2][k].tobytes() == b[2][k].tobytes(), f"weights {k} differ"
    for k, v in a[3].items():
        if isinstance(v, np.ndarray):
            assert v.tobytes() == np.asarray(b[3][k]).tobytes(), f"optimizer {k} differs"
        else:
            assert v == b[3][k], k


CASES = [("model4", "sgd", None), ("model4", "adam", 0.3), ("cnn-bn", "sgd", None)]


@pytest.mark.parametrize("name,opt,dropout", CASES)
def test_graphed_step_gives_the_eager_weights_bit_for_bit(name, opt, dropout):
    eager = _train(name, opt, dropout, graphed=False)
    graphed = _train(name, opt, dropout, graphed=True)
    _assert_same(eager, graphed)
    stats = graphed[4]
    # one warm-up, one capture, every other full batch replayed, the short ones eager
    assert stats == {"warmup": 1, "capture": 1, "replay": 2 * 5 - 1, "eager": 2}, stats


def test_the_comparison_sees_a_graph_that_freezes_per_step_values(monkeypatch):
    """A graph whose per-step values (dropout key, lr) stayed those of its first replay, as
    kernel arguments baked in at capture would: the weights then differ, so the exact
    comparison above really checks the per-step values."""
    eager = _train("model4", "sgd", 0.3, graphed=False)
    refresh = StepValues.refresh

    def first_time_only(self):
        if getattr(self, "_written", False):
            return 0
        self._written = True
        return refresh(self)
    monkeypatch.setattr(StepValues, "refresh", first_time_only)
    frozen = _train("model4", "sgd", 0.3, graphed=True)
    assert eager[0][:2] == frozen[0][:2]          # warm-up and first replay: the same
    assert eager[0] != frozen[0]


def test_the_comparison_sees_a_stale_static_input(monkeypatch):
    eager = _train("model4", "sgd", None, graphed=False)

    def replay_without_copy(self, xb, yb):
        g = self._graph
        g.values.refresh()
        g.capture.launch()
        return g.loss
    monkeypatch.setattr(GraphedTrainStep, "_replay", replay_without_copy)
    stale = _train("model4", "sgd", None, graphed=True)
    assert eager[0] != stale[0]


def test_replaced_buffers_are_noticed_and_captured_again():
    """Optimizer state swapped for equal copies after the capture: the step notices before
    the next replay, captures again, and stays exact."""
    def swap(k, m, o, step):
        if k == 3:
            o.state = {b: [a.copy() for a in arrs] for b, arrs in o.state.items()}
    eager = _train("model4", "sgd", None, graphed=False, between=swap)
    graphed = _train("model4", "sgd", None, graphed=True, between=swap)
    _assert_same(eager, graphed)
    assert graphed[4]["capture"] == 2 and graphed[4]["warmup"] == 2


def test_a_buffer_freed_before_replay_fails_the_replay(monkeypatch):
    """If the graphed step neither held nor checked the arrays it was captured against (both
    disabled here), the replay would use the freed momentum buffer: the emulated replay
    refuses, where a GPU would write into memory given to someone else."""
    monkeypatch.setattr(GraphedTrainStep, "bindings_changed", lambda self: False)
    monkeypatch.setattr(GraphedTrainStep, "_bindings", lambda self: [])

    def swap(k, m, o, step):
        if k == 3:
            o.state = {b: [a.copy() for a in arrs] for b, arrs in o.state.items()}
    with pytest.raises(StaleBufferError, match="freed or reallocated after the capture"):
        _train("model4", "sgd", None, graphed=True, between=swap)


def test_the_capture_keeps_its_own_memory_and_a_replay_needs_it():
    m, o = _setup("model4", "sgd", None)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((BATCH, *SHAPE)), rng.integers(0, 5, size=BATCH)
    with emulated_cuda(graphs=True):
        to_device_arrays(m, o)
        step = GraphedTrainStep(m, CrossEntropyLoss(), o)
        step(x, y)
        step(x, y)                              # captured and replayed
        cap = step._graph.capture
        assert cap.pool and any(lbl.startswith("cuBLAS gemm") for lbl in cap.labels())
        assert any(lbl.startswith("kernel conv_output_forward") for lbl in cap.labels())
        step(x, y)
        del step._graph.loss, m.layers[0]._cache     # what else still refers to the pool
        cap.pool.clear()                            # the private pool handed back: a bug
        import gc
        gc.collect()
        with pytest.raises(StaleBufferError):
            step(x, y)


def test_host_synchronisation_inside_the_step_is_refused():
    m, o = _setup("model2", "sgd", None)
    x = np.random.default_rng(2).standard_normal((BATCH, *SHAPE))
    y = np.arange(BATCH) % 5

    def sync_hook(step):
        float(step.loss)
    sync_hook.graph_safe = True
    with emulated_cuda(graphs=True):
        to_device_arrays(m, o)
        step = GraphedTrainStep(m, CrossEntropyLoss(), o)
        step.after_backward.append(sync_hook)
        step(x, y)                                  # warm-up: eager, a sync is allowed
        with pytest.raises(CaptureError, match="host synchronisation"):
            step(x, y)


def test_hooks_must_be_graph_safe():
    m, o = _setup("model2", "sgd", None)
    x = np.random.default_rng(2).standard_normal((BATCH, *SHAPE))
    y = np.arange(BATCH) % 5
    with emulated_cuda(graphs=True):
        to_device_arrays(m, o)
        step = GraphedTrainStep(m, CrossEntropyLoss(), o)
        step.after_backward.append(lambda s: None)
        step(x, y)
        with pytest.raises(GraphCaptureError, match="graph_safe"):
            step(x, y)


def test_host_arrays_inside_the_capture_are_refused():
    with emulated_cuda(graphs=True) as b:
        a = device_array(np.ones(3))
        with pytest.raises(CaptureError, match="host array"):
            with b.graph_capture():
                a += np.ones(3)


def test_the_cpu_has_no_graphs():
    m, o = _setup("model2", "sgd", None)
    with pytest.raises(DeviceError, match="CUDA device"):
        GraphedTrainStep(m, CrossEntropyLoss(), o)
    with emulated_cuda():                           # the plain emulated CUDA cannot capture
        with pytest.raises(DeviceError, match="CUDA device"):
            GraphedTrainStep(m, CrossEntropyLoss(), o)


def test_fit_with_graph_trains_like_fit_without():
    """The whole loop (evaluation, checkpoints, the non-finite guard's hook captured with the
    step, a cosine schedule) through fit(graph=True) on the emulated device."""
    from types import SimpleNamespace

    from gpunn.optim import CosineAnnealingLR
    from gpunn.train import TrainConfig, fit
    rng = np.random.default_rng(4)
    x = rng.standard_normal((60, *SHAPE))
    y = rng.integers(0, 5, size=60)
    data = SimpleNamespace(x_train=x[:44], y_train=y[:44], x_val=x[44:52], y_val=y[44:52],
                           x_test=x[52:], y_test=y[52:])
    out = []
    for graphed in (False, True):
        m, o = _setup("model4", "sgd", 0.2)
        sched = CosineAnnealingLR(o, T_max=2)
        cfg = TrainConfig(epochs=2, batch_size=8, eval_every=16, progress=False, seed=2,
                          graph=graphed)
        with emulated_cuda(graphs=graphed):
            if graphed:
                to_device_arrays(m, o)
            res = fit(m, CrossEntropyLoss(), o, data, cfg, device="cpu", scheduler=sched,
                      log=lambda msg: None)
        out.append((res.history, m.state_dict()))
    (h0, s0), (h1, s1) = out
    assert {k: v for k, v in h0.items() if k != "seconds"} == \
        {k: v for k, v in h1.items() if k != "seconds"}
    for k in s0:
        assert s0[k].tobytes() == s1[k].tobytes(), k


def test_cli_graph_on_the_cpu_says_why(tmp_path):
    from click.testing import CliRunner

    from gpunn.cli import main
    r = CliRunner().invoke(main, ["train", "--dataset", "synthetic", "--model", "model2",
                                  "--epochs", "1", "--max-steps", "2", "--no-progress",
                                  "--device", "cpu", "--graph", "--out", str(tmp_path / "g")])
    assert r.exit_code == 2, r.output
    assert "CUDA graphs need the model on a CUDA device" in r.output


@pytest.mark.parametrize("name,upd", [("model4", "sgd_momentum_update_dyn"),
                                      ("cnn-bn", "adam_update_dyn")])
def test_the_captured_step_updates_every_parameter_in_one_launch(name, upd):
    """The optimizer updates the model's one flat parameter buffer with one kernel: the
    captured step holds a single update node, over every parameter."""
    m, o = _setup(name, "sgd" if upd.startswith("sgd") else "adam", None)
    x = np.random.default_rng(5).standard_normal((BATCH, *SHAPE))
    y = np.arange(BATCH) % 5
    with emulated_cuda(graphs=True):
        to_device_arrays(m, o)
        step = GraphedTrainStep(m, CrossEntropyLoss(), o)
        step(x, y)
        step(x, y)
        labels = step._graph.capture.labels()
    updates = [lbl for lbl in labels if "update" in lbl]
    assert updates == [f"kernel {upd}_f64"], updates
    assert len(o.slots) == 1 and o.slots[0].size >= m.num_parameters()


def test_parity_graph_rows_on_the_emulated_side():
    """`gpunn parity`'s graph rows (the same function a GPU runs for 200 steps)."""
    from gpunn.parity import Side, graph_parity
    row = graph_parity(Side("emulated"), "model4", steps=12, batch=8, size=12)
    assert row.ok and row.forward == 0 and row.backward == 0, row
    assert row.launches == 11                 # one warm-up, then every step replayed


def test_a_run_starting_with_a_short_batch_still_gets_its_graph():
    """A resumed epoch may start at its short last batch: that shape warms up, the full
    batches after it warm up and capture their own graph; results stay exact."""
    rng = np.random.default_rng(6)
    xs = [rng.standard_normal((4 if i == 0 else BATCH, *SHAPE)) for i in range(6)]
    ys = [rng.integers(0, 5, size=len(x)) for x in xs]
    finals = []
    for graphed in (False, True):
        m, o = _setup("model4", "sgd", 0.3)
        with emulated_cuda(graphs=graphed):
            if graphed:
                to_device_arrays(m, o)
            step = (GraphedTrainStep if graphed else TrainStep)(m, CrossEntropyLoss(), o)
            for x, y in zip(xs, ys):
                step(x, y)
        finals.append(m.state_dict())
    assert step.stats == {"warmup": 2, "capture": 1, "replay": 4}, step.stats
    for k in finals[0]:
        assert finals[0][k].tobytes() == finals[1][k].tobytes(), k


def test_graph_census_counts_a_step():
    """scripts/graph_census.py (the GPU path's launch and memory counts without a GPU): one
    model's row, with batch-norm's share found and the step's memory seen."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "scripts" / "graph_census.py"
    spec = importlib.util.spec_from_file_location("graph_census", path)
    census = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(census)
    r = census.census("cnn-bn", 4)
    assert r["labels"]["kernel batchnorm_normalise_f32"] == 1
    assert 0 < r["bn_nodes"] < r["nodes"] == sum(r["labels"].values())
    assert 0 < r["bn_bytes"] < r["bytes"] and r["peak"] > 0 and r["pool"] > 0
