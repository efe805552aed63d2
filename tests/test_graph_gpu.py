"""The graphed step and the fused layers on a real GPU (pytest -m gpu; skipped without one).
docs/GRAPHS.md, "What a GPU must confirm". Their CPU twins are tests/test_graph_step.py and
tests/test_fuse.py, which run in the default suite through the emulated CUDA."""
import numpy as np
import pytest

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("model,opt", [("model4", "sgd"), ("cnn-bn", "sgd"), ("model4", "adam")])
def test_graphed_step_trains_like_the_eager_one_on_the_gpu(model, opt):
    from gpunn.parity import GRAPH_TOL, Side, graph_parity
    row = graph_parity(Side("cuda"), model, steps=200, optimizer=opt)
    assert row.launches >= 190, row                     # really replayed
    assert row.forward <= GRAPH_TOL and row.backward <= GRAPH_TOL, row


def test_replays_allocate_nothing():
    import cupy
    from gpunn.losses import CrossEntropyLoss
    from gpunn.optim import SGD
    from gpunn.train import GraphedTrainStep
    from gpunn.zoo import build_model
    m = build_model("cnn-bn", (1, 28, 28), 10, seed=0).to("cuda")
    step = GraphedTrainStep(m, CrossEntropyLoss(), SGD(m.parameters(), lr=0.01, momentum=0.9))
    rng = np.random.default_rng(0)
    x = cupy.asarray(rng.standard_normal((100, 1, 28, 28)).astype(np.float32))
    y = cupy.asarray(rng.integers(0, 10, size=100))
    for _ in range(3):
        step(x, y)
    cupy.cuda.get_current_stream().synchronize()
    pool = cupy.get_default_memory_pool()
    used, total = pool.used_bytes(), pool.total_bytes()
    for _ in range(20):
        step(x, y)
    cupy.cuda.get_current_stream().synchronize()
    assert (pool.used_bytes(), pool.total_bytes()) == (used, total)
    assert step.stats["replay"] >= 21
    assert np.isfinite(float(step.loss))


def test_fused_model_matches_the_unfused_on_the_gpu():
    import cupy
    from gpunn.fuse import fuse
    from gpunn.losses import CrossEntropyLoss
    from gpunn.optim import SGD
    from gpunn.zoo import build_model
    finals = []
    for fused in (False, True):
        m = build_model("model4", (1, 16, 16), 5, seed=1, dtype=np.float64).to("cuda")
        if fused:
            fuse(m)
        opt = SGD(m.parameters(), lr=0.05, momentum=0.9)
        loss = CrossEntropyLoss()
        rng = np.random.default_rng(2)
        for _ in range(5):
            x = cupy.asarray(rng.standard_normal((8, 1, 16, 16)))
            y = cupy.asarray(rng.integers(0, 5, size=8))
            loss.forward(m.forward(x, train=True), y)
            m.backward(loss.backward())
            opt.step()
        finals.append(m.state_dict())
    for k in finals[0]:
        np.testing.assert_array_equal(finals[0][k], finals[1][k])
