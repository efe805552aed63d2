"""gpunn bench: the PyTorch twins are the same networks, the floors count what they say, the
quick form runs end to end (no speed assertion), and the GPU-only code paths run on fakes."""
import json
import types

import numpy as np
import pytest

from gpunn.bench import floor as floor_mod
from gpunn.bench.runner import Case, format_report, _time_interleaved, BenchConfig
from gpunn.bench.steps import Step, Unavailable, make_step
from gpunn.zoo import MODELS, build_model

def _torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("name", list(MODELS))
def test_torch_twin_is_the_same_network(name):
    torch = _torch()
    from gpunn.bench.torch_twin import to_torch
    from gpunn.losses import CrossEntropyLoss
    shape = (3, 16, 16) if name in ("vgg-cifar", "resnet20") else (1, 16, 16)
    m = build_model(name, shape, 10, seed=2, dtype=np.float64, dropout=0.0)
    t = to_torch(m, shape)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, *shape))
    y = rng.integers(0, 10, 4)
    # training mode: batch-norm on batch statistics; the gradients of every parameter agree
    logits = m.forward(x, train=True)
    loss = CrossEntropyLoss()
    loss.forward(logits, y)
    m.backward(loss.backward())
    t.train()
    tl = t(torch.from_numpy(x))
    torch.nn.functional.cross_entropy(tl, torch.from_numpy(y)).backward()
    np.testing.assert_allclose(tl.detach().numpy(), logits, rtol=1e-10, atol=1e-12)
    tparams = [p for p in t.parameters()]
    assert len(tparams) == len(m.parameters())
    for p, q in zip(m.parameters(), tparams):
        g = q.grad.numpy()
        g = g.T if p.grad.ndim == 2 else g          # Linear: (in, out) vs torch's (out, in)
        np.testing.assert_allclose(g, p.grad, rtol=1e-8, atol=1e-12, err_msg=p.name)
    # evaluation mode: the running statistics were updated alike
    m.eval()
    t.eval()
    np.testing.assert_allclose(t(torch.from_numpy(x)).detach().numpy(), m.forward(x),
                               rtol=1e-10, atol=1e-12)


def test_floor_of_model4_by_hand():
    m = build_model("model4", (1, 28, 28), 10)
    rates = {"gemm_flops_s": 1e11, "bandwidth_b_s": 1e10}
    f = floor_mod.model_floor(m, (1, 28, 28), 100, rates)
    # conv1 (first layer: forward + dW only), conv2, fc1, fc2 (forward, dW, dx)
    macs = [8 * 1 * 9 * 28 * 28, 8 * 8 * 9 * 14 * 14, 392 * 32, 32 * 10]
    assert f.flops == 2.0 * 100 * (2 * macs[0] + 3 * sum(macs[1:]))
    acts = 100 * (8 * 28 * 28 + 8 * 14 * 14 + 8 * 14 * 14 + 8 * 7 * 7 + 32 + 10)
    assert f.bytes == 4 * (100 * 784 + 4 * acts + 8 * m.num_parameters())
    assert f.ms == max(1e3 * f.flops / 1e11, 1e3 * f.bytes / 1e10)


def test_device_rates_are_measured():
    r = floor_mod.measure_device("cpu", quick=True)
    assert r["gemm_flops_s"] > 1e8 and r["bandwidth_b_s"] > 1e8


def test_quick_bench_end_to_end(tmp_path):
    # the quick form, shrunk to seconds: one model, a tiny batch, memory in child processes
    from click.testing import CliRunner
    from gpunn.cli import main
    r = CliRunner().invoke(main, ["bench", "--quick", "--models", "cnn-bn", "--batch", "8",
                                  "--seconds", "0.05", "--device", "cpu", "--out",
                                  str(tmp_path), "--json", "--procs", "2"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["meta"]["threads"] >= 1 and "commit" in res["meta"]     # None outside git
    assert [(c["model"], c["batch"]) for c in res["cases"]] == [("cnn-bn", 8)]
    for c in res["cases"]:
        g = c["impls"]["gpunn"]
        assert g["step_ms"] > 0 and g["rounds"] >= 3 and g["images_s"] > 0
        assert g["epoch_s"] == pytest.approx(g["step_ms"] / 1e3 * 7500)
        assert g["peak_bytes"] > 0, g
        assert c["floor"]["flops"] > 0 and c["floor"]["floor_ms"] > 0
        p = c["impls"]["gpunn-procs"]                 # 2 forked processes x 4 samples
        assert p["step_ms"] > 0 and p["rounds"] >= 3 and "peak_bytes" not in p
        try:
            import torch  # noqa: F401
        except ImportError:
            assert "torch" not in c["impls"]
        else:
            assert c["impls"]["torch"]["step_ms"] > 0 and "gpunn/torch" in c["ratios"]
            assert "gpunn-procs/torch" in c["ratios"]
    written = sorted(p.suffix for p in tmp_path.iterdir())
    assert written == [".json", ".md"]
    md = next(tmp_path.glob("*.md")).read_text()
    assert "| cnn-bn | cpu | 8 |" in md and "Floors" in md and "gpunn --procs ms" in md


def test_procs_column_leaves_the_other_columns_their_threads(monkeypatch):
    # the gpunn --procs step splits the threads between its processes; the bench's own
    # process times the gpunn and PyTorch columns too, which must keep the full count (they
    # ran at one thread of two before: cnn-bn's gpunn column 56 ms instead of 44)
    import sys
    if not sys.platform.startswith("linux"):
        pytest.skip("--procs forks: Linux only")
    import gpunn.threads as threads
    from gpunn.distributed import DistributedTrainStep
    before = threads.get_num_threads()
    inside = []
    call = DistributedTrainStep.__call__

    def counting(self, *a, **k):
        inside.append(threads.get_num_threads())
        return call(self, *a, **k)
    monkeypatch.setattr(DistributedTrainStep, "__call__", counting)
    threads.set_num_threads(2)
    try:
        s = make_step("gpunn-procs", "model1", 8, "cpu", procs=2)
        assert threads.get_num_threads() == 2            # after the fork, for the others
        s.run()
        s.run()
        assert inside == [1, 1]                          # rank 0 steps with its share
        assert threads.get_num_threads() == 2
        s.close()
        assert threads.get_num_threads() == 2
    finally:
        threads.set_num_threads(before)


def test_bench_errors_name_the_problem():
    from click.testing import CliRunner
    from gpunn.backend import cuda_available
    from gpunn.cli import main
    r = CliRunner().invoke(main, ["bench", "--models", "model9", "--no-save"])
    assert r.exit_code == 2 and "model9" in r.output
    r = CliRunner().invoke(main, ["bench", "--batch", "1", "--no-save"])
    assert r.exit_code == 2 and ">= 2" in r.output
    if not cuda_available():
        r = CliRunner().invoke(main, ["bench", "--device", "cuda", "--no-save"])
        assert r.exit_code == 2 and "CUDA is not usable" in r.output


def test_graph_steps_need_cuda():
    with pytest.raises(Unavailable, match="CUDA"):
        make_step("gpunn-graph", "model1", 4, "cpu")
    _torch()
    with pytest.raises(Unavailable, match="CUDA"):
        make_step("torch-graph", "model1", 4, "cpu")
    with pytest.raises(ValueError, match="unknown implementation"):
        make_step("jax", "model1", 4, "cpu")


def test_profile_rows_cover_the_step():
    from gpunn.bench.profile import format_profile, profile_step
    from gpunn.fuse import fuse
    p = profile_step("model4", 8, "cpu", steps=3, warmup=1)
    # the steps gpunn train runs: fused Conv2d+ReLU and Linear+ReLU pairs
    assert len(p["rows"]) == len(fuse(build_model("model4"))._steps()) == 7
    text = format_profile(p)
    assert "Fused(Conv2d(1, 8" in text and "optimizer update" in text


# -- the GPU code paths, on fakes ---------------------------------------------------------------
def test_gpu_rounds_batch_several_steps_between_syncs():
    calls = {"run": 0, "sync": 0}

    def run():
        calls["run"] += 1

    def sync():
        calls["sync"] += 1
    cfg = BenchConfig(seconds=0.01, min_rounds=4, warmup=1)
    times = _time_interleaved({"gpunn": Step(run, sync), "torch": Step(run, sync)}, cfg, True)
    assert len(times["gpunn"]) == len(times["torch"]) >= 4
    # a step this fast gets many steps per round (>= 20 ms of work between two syncs)
    assert calls["run"] > 10 * calls["sync"]


def test_gpu_peak_reads_each_allocator(monkeypatch):
    from gpunn.bench import memory
    pool = types.SimpleNamespace(freed=0, total_bytes=lambda: 123456)
    pool.free_all_blocks = lambda: setattr(pool, "freed", pool.freed + 1)
    dev = types.SimpleNamespace(synchronize=lambda: None)
    fake_cupy = types.SimpleNamespace(get_default_memory_pool=lambda: pool,
                                      cuda=types.SimpleNamespace(Device=lambda: dev))
    monkeypatch.setitem(__import__("sys").modules, "cupy", fake_cupy)
    steps = []

    def make():
        s = Step(lambda: steps.append(1), lambda: None, lambda: steps.append("closed"))
        return s
    assert memory.gpu_peak("gpunn", make, steps=2) == 123456
    assert pool.freed == 1 and steps == [1, 1, "closed"]
    torch = _torch()
    for name, value in (("synchronize", None), ("empty_cache", None),
                        ("reset_peak_memory_stats", None), ("max_memory_reserved", 777)):
        monkeypatch.setattr(torch.cuda, name, lambda *a, v=value: v)
    assert memory.gpu_peak("torch-graph", make, steps=1) == 777


def test_report_has_graph_columns_for_gpu_cases():
    case = Case("model4", "cuda", 100)
    case.impls = {"gpunn": {"step_ms": 1.0, "images_s": 1e5, "epoch_s": 0.6, "peak_bytes": 2**20},
                  "gpunn-graph": {"step_ms": 0.4}, "torch": {"step_ms": 2.0},
                  "torch-graph": {"error": "PyTorch sees no CUDA device"}}
    case.ratios = {"gpunn/torch": 0.5, "gpunn-graph/torch": 0.2}
    case.floor = {"flops": 1e8, "bytes": 1e7, "flops_ms": 0.01, "bytes_ms": 0.02,
                  "floor_ms": 0.02}
    result = {"meta": {"date": "2026-01-01T00:00:00", "commit": "abc", "threads": 16,
                       "affinity": 16, "host_cpu": "x", "versions": {
                           "gpunn": "0", "numpy": "2", "torch": "2.13", "cupy": "14",
                           "python": "3.11"}},
              "devices": {"cuda": {"name": "NVIDIA H200", "gemm_flops_s": 5e13,
                                   "bandwidth_b_s": 4e12, "gemm_n": 4096}},
              "cases": [case.as_dict()]}
    text = format_report(result)
    assert "gpunn graph ms" in text and "| 0.40 |" in text and "| 0.20 |" in text
    assert "torch-graph: PyTorch sees no CUDA device" in text
    assert "NVIDIA H200" in text and "50000 GFLOP/s" in text
