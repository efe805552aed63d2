"""The CPU bodies' speed work keeps results exact: chunked conv / batch-norm / pooling against
whole-batch references, results independent of the thread count (bit for bit), the skipped
input gradient of a training step, the thread settings (--threads, GPUNN_THREADS)."""
import numpy as np
import pytest

import gpunn.threads as threads
from gpunn.layers import BatchNorm1d, BatchNorm2d, Conv2d, Linear
from gpunn.losses import CrossEntropyLoss
from gpunn.optim import SGD
from gpunn.train import TrainStep
from gpunn.zoo import build_model


@pytest.fixture
def restore_threads():
    n = threads.get_num_threads()
    yield
    threads.set_num_threads(n)


def _train(name, nthreads, steps=3, dtype=np.float64, shape=(1, 16, 16)):
    threads.set_num_threads(nthreads)
    m = build_model(name, shape, 5, seed=3, dtype=dtype)
    ts = TrainStep(m, CrossEntropyLoss(), SGD(m.parameters(), lr=0.05, momentum=0.9))
    rng = np.random.default_rng(0)
    for _ in range(steps):
        ts(rng.standard_normal((37, *shape)).astype(dtype), rng.integers(0, 5, 37))
    return {k: v.tobytes() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("name", ["model4", "cnn-bn", "resnet20", "mlp1000"])
def test_results_do_not_depend_on_the_thread_count(name, restore_threads, monkeypatch,
                                                  numpy_blas):
    # chunks are cut by shape alone and summed in chunk order: 1 and 3 threads, same bits.
    # NumPy's BLAS is held at one thread in both runs: for the GEMMs gpunn hands it whole
    # (Linear), OpenBLAS itself rounds differently with another thread count for some shapes
    # (and MKL, when installed, would take the one-thread run's products: numpy_blas)
    monkeypatch.setattr(threads, "_set_blas_threads", lambda n: None)
    monkeypatch.setattr(threads, "PARALLEL_MIN_WORK", 0)      # every region on the pool
    from threadpoolctl import threadpool_limits
    monkeypatch.setattr(threads, "_blas_count", None)
    limit = threadpool_limits(1, user_api="blas")
    shape = (3, 8, 8) if name == "resnet20" else (1, 16, 16)
    try:
        one = _train(name, 1, shape=shape)
        three = _train(name, 3, shape=shape)
    finally:
        limit.restore_original_limits()
    assert one.keys() == three.keys()
    assert all(one[k] == three[k] for k in one), [k for k in one if one[k] != three[k]]


@pytest.mark.parametrize("k,s,p", [(3, 1, "same"), (3, 1, 1), (5, 2, "same"), (1, 2, 0),
                                   (3, 2, 1), (2, 1, 0)])
@pytest.mark.parametrize("cin,cout", [(1, 6), (5, 3), (4, 9)])
def test_chunked_conv_matches_the_whole_batch_gemm(k, s, p, cin, cout, rng):
    # the CPU body (chunks, one GEMM per sample, transposed-conv or scatter input gradient)
    # against im2col + one GEMM over the whole batch + col2im, in float64
    from gpunn.ops.conv import col2im, im2col
    layer = Conv2d(cin, cout, k, stride=s, padding=p, rng=1, dtype=np.float64)
    layer.params["b"][...] = rng.standard_normal(cout)
    x = rng.standard_normal((23, cin, 11, 9))
    y = layer.forward(x)
    pad = layer._cache[2]
    col = im2col(x, k, k, (s, s), pad)
    Wm = layer.params["W"].reshape(cout, -1)
    n, _, oh, ow = y.shape
    ref = (Wm @ col + layer.params["b"][:, None]).reshape(cout, n, oh, ow).transpose(1, 0, 2, 3)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(y.shape)
    dx = layer.backward(dout)
    d = dout.transpose(1, 0, 2, 3).reshape(cout, -1)
    np.testing.assert_allclose(layer.grads["W"], (d @ col.T).reshape(layer.params["W"].shape),
                               rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(layer.grads["b"], d.sum(axis=1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, col2im(Wm.T @ d, x.shape, k, k, (s, s), pad), rtol=1e-11,
                               atol=1e-11)


@pytest.mark.parametrize("cls,shape", [(BatchNorm2d, (41, 6, 5, 7)), (BatchNorm1d, (300, 11))])
@pytest.mark.parametrize("train", [True, False])
def test_chunked_batchnorm_matches_the_formulas(cls, shape, train, rng):
    c = shape[1]
    bn = cls(c, dtype=np.float64)
    bn.params["gamma"][...] = rng.uniform(0.5, 2, c)
    bn.params["beta"][...] = rng.standard_normal(c)
    bn.buffers["running_mean"][...] = rng.standard_normal(c)
    bn.buffers["running_var"][...] = rng.uniform(0.5, 2, c)
    rm0, rv0 = bn.buffers["running_mean"].copy(), bn.buffers["running_var"].copy()
    x = rng.standard_normal(shape) * 3 + 1
    axes = (0,) if len(shape) == 2 else (0, 2, 3)
    b = (1, -1) if len(shape) == 2 else (1, -1, 1, 1)
    g, be = bn.params["gamma"].reshape(b), bn.params["beta"].reshape(b)
    y = bn.forward(x, train=train)
    if train:
        mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
        m = x.size // c
        np.testing.assert_allclose(bn.buffers["running_mean"], 0.9 * rm0 + 0.1 * mean.ravel(),
                                   rtol=1e-12)
        np.testing.assert_allclose(bn.buffers["running_var"],
                                   0.9 * rv0 + 0.1 * var.ravel() * m / (m - 1), rtol=1e-12)
    else:
        mean, var = rm0.reshape(b), rv0.reshape(b)
    xhat = (x - mean) / np.sqrt(var + bn.eps)
    np.testing.assert_allclose(y, g * xhat + be, rtol=1e-11, atol=1e-12)
    dout = rng.standard_normal(shape)
    dx = bn.backward(dout)
    np.testing.assert_allclose(bn.grads["gamma"], (dout * xhat).sum(axis=axes), rtol=1e-11)
    np.testing.assert_allclose(bn.grads["beta"], dout.sum(axis=axes), rtol=1e-12)
    dxhat = dout * g
    if train:
        ref = (dxhat - dxhat.mean(axis=axes, keepdims=True)
               - xhat * (dxhat * xhat).mean(axis=axes, keepdims=True)) / np.sqrt(var + bn.eps)
    else:
        ref = dxhat / np.sqrt(var + bn.eps)
    np.testing.assert_allclose(dx, ref, rtol=1e-10, atol=1e-12)


def test_batchnorm_float32_statistics_are_accurate(rng):
    # per-chunk means and squared deviations combined in float64: no cancellation even when
    # the mean is large next to the spread
    x = (rng.standard_normal((64, 3, 16, 16)) * 0.01 + 100).astype(np.float32)
    bn = BatchNorm2d(3, momentum=1.0)
    bn.forward(x, train=True)
    var = x.astype(np.float64).var(axis=(0, 2, 3))
    m = x.size // 3
    np.testing.assert_allclose(bn.buffers["running_var"], var * m / (m - 1), rtol=1e-4)


@pytest.mark.parametrize("name", ["model4", "mlp1000", "cnn-bn"])
def test_training_step_skips_the_input_gradient_and_nothing_else(name, monkeypatch):
    from gpunn.fuse import fuse
    m = build_model(name, (1, 12, 12), 4, seed=0, dtype=np.float64, dropout=0.0)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((6, 1, 12, 12)), rng.integers(0, 4, 6)
    loss = CrossEntropyLoss()
    loss.forward(m.forward(x, train=True), y)
    d = loss.backward()
    assert m.backward(d).shape == x.shape                 # the default still returns dL/dx
    full = [p.grad.copy() for p in m.parameters()]
    for fused in (False, True):
        if fused:
            fuse(m)
        loss.forward(m.forward(x, train=True), y)
        assert m.backward(loss.backward(), input_grad=False) is None
        for p, g in zip(m.parameters(), full):
            np.testing.assert_array_equal(p.grad, g)
        first = next(layer for layer in m.layers if layer.parameters())
        assert first.input_grad is True                   # switched off only for the call
    # TrainStep asks for no input gradient
    from gpunn.model import Sequential
    seen = []
    real = Sequential.backward
    monkeypatch.setattr(Sequential, "backward",
                        lambda self, d, **kw: seen.append(kw) or real(self, d, **kw))
    TrainStep(m, loss, SGD(m.parameters(), lr=0.1))(x, y)
    assert [kw["input_grad"] for kw in seen] == [False]


def test_linear_gradient_written_in_place(rng):
    lin = Linear(5, 3, dtype=np.float64, rng=0)
    g = lin.grads["W"]
    x = rng.standard_normal((4, 5))
    lin.forward(x)
    dout = rng.standard_normal((4, 3))
    lin.backward(dout)
    assert lin.grads["W"] is g
    np.testing.assert_allclose(g, x.T @ dout, rtol=1e-13)


def test_gemm_out_checks_the_buffer(rng):
    from gpunn.errors import ShapeError
    from gpunn.ops.gemm import gemm
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((3, 5))
    out = np.empty((4, 5))
    assert gemm(a, b, out=out) is out
    np.testing.assert_allclose(out, a @ b, rtol=1e-14)
    with pytest.raises(ShapeError, match="C-contiguous"):
        gemm(a, b, out=np.empty((5, 4)).T)
    with pytest.raises(ShapeError, match=r"\(4, 5\) float64"):
        gemm(a, b, out=np.empty((4, 5), np.float32))


def test_thread_settings(monkeypatch, restore_threads):
    monkeypatch.setenv("GPUNN_THREADS", "3")
    assert threads.default_threads() == 3
    monkeypatch.setenv("GPUNN_THREADS", "zero")
    with pytest.raises(ValueError, match="GPUNN_THREADS must be a positive integer"):
        threads.default_threads()
    monkeypatch.delenv("GPUNN_THREADS")
    import os
    assert threads.default_threads() == len(os.sched_getaffinity(0))
    assert threads.set_num_threads(2) == 2 and threads.get_num_threads() == 2
    if threads._numpy_blas():
        assert threads.blas_threads() == 2
    with pytest.raises(ValueError, match="positive"):
        threads.set_num_threads(0)


def test_parallel_chunks_order_errors_and_nesting(restore_threads, monkeypatch):
    threads.set_num_threads(3)
    ran_on = []
    import threading
    threads.parallel_chunks(lambda lo, hi: ran_on.append(threading.current_thread().name), 8, 1,
                            work=threads.PARALLEL_MIN_WORK - 1)
    assert set(ran_on) == {threading.current_thread().name}      # small work: inline
    assert threads.parallel_chunks(lambda lo, hi: (lo, hi), 10, 3) == [(0, 3), (3, 6), (6, 9),
                                                                        (9, 10)]
    # nested regions run inline in the worker instead of deadlocking the pool
    inner = threads.parallel_chunks(
        lambda lo, hi: threads.parallel_chunks(lambda a, b: b - a, 4, 1), 6, 1)
    assert inner == [[1, 1, 1, 1]] * 6
    seen = []

    def boom(lo, hi):
        seen.append(lo)
        if lo == 2:
            raise KeyError("chunk 2")
        return lo
    with pytest.raises(KeyError, match="chunk 2"):
        threads.parallel_chunks(boom, 8, 1)
    assert sorted(seen) == list(range(8))         # every chunk ran before the error surfaced
    if threads._numpy_blas():
        assert threads.blas_threads() == 3        # BLAS back to the count after the region


def test_gemm_threads_cap_small_products(restore_threads):
    if not threads._numpy_blas():
        pytest.skip("no BLAS threadpoolctl can control")
    threads.set_num_threads(4)
    with threads.gemm_threads(threads.MACS_PER_THREAD * 2):
        assert threads.blas_threads() == 2
    with threads.gemm_threads(10):
        assert threads.blas_threads() == 1
    assert threads.blas_threads() == 4
    with threads.gemm_threads(threads.MACS_PER_THREAD * 100):
        assert threads.blas_threads() == 4

    def inside(lo, hi):              # a parallel region keeps one BLAS thread per chunk
        with threads.gemm_threads(threads.MACS_PER_THREAD * 100):
            return threads.blas_threads()
    assert threads.parallel_chunks(inside, 4, 1) == [1, 1, 1, 1]
    assert threads.blas_threads() == 4


def test_train_threads_option(tmp_path, restore_threads):
    from click.testing import CliRunner

    from gpunn.cli import main
    r = CliRunner().invoke(main, ["train", "--dataset", "synthetic", "--model", "model1",
                                  "--max-steps", "2", "--val-size", "0.1", "--no-progress",
                                  "--device", "cpu", "--threads", "1", "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert threads.get_num_threads() == 1
    r = CliRunner().invoke(main, ["train", "--threads", "0", "--out", str(tmp_path / "s")])
    assert r.exit_code == 2 and "--threads" in r.output


def _probe(script, var, users_value, case) -> list:
    """Run ``script`` in a fresh Python with ``var`` unset ("gpunn first"), set to
    ``users_value`` ("the user's value"), or with NumPy imported before gpunn ("numpy
    first"); returns the lines it printed."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != var}
    if case == "the user's value":
        env[var] = users_value
    first = "import numpy" if case == "numpy first" else ""
    out = subprocess.run([sys.executable, "-c", script.format(first=first)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()


_SPIN_PROBE = """
import os, sys, ctypes
{first}
import gpunn
from threadpoolctl import threadpool_info
libs = [i["filepath"] for i in threadpool_info() if i["internal_api"] == "openblas"]
read = getattr(ctypes.CDLL(libs[0]), "openblas_thread_timeout", None) if libs else None
print(gpunn.threads.blas_spin())
print(read() if read is not None else "n/a")
print(os.environ.get("OPENBLAS_THREAD_TIMEOUT"))
"""


@pytest.mark.parametrize("case", ["gpunn first", "the user's value", "numpy first"])
def test_numpy_loads_with_a_short_openblas_spin(case):
    # OpenBLAS reads OPENBLAS_THREAD_TIMEOUT once, as NumPy loads it: importing gpunn first
    # must hand it gpunn's 22 and leave the environment as it found it; a user's own value
    # wins; a NumPy loaded before gpunn keeps the default, and the report says so
    said, read, left = _probe(_SPIN_PROBE, "OPENBLAS_THREAD_TIMEOUT", "25", case)
    expect = {"gpunn first": ("2**22 cycles", "22", "None"),
              "the user's value": ("OPENBLAS_THREAD_TIMEOUT=25 (the user's)", "25", "25"),
              "numpy first": ("NumPy was imported before gpunn", "0", "None")}[case]
    assert expect[0] in said
    if read != "n/a":                     # an OpenBLAS that says what it read
        assert read == expect[1]
    assert left == expect[2]


_HUGEPAGE_PROBE = """
import os
{first}
import gpunn
import numpy as np
print(gpunn.threads.numpy_hugepages())
print(np._core.multiarray._get_madvise_hugepage())
print(os.environ.get("NUMPY_MADVISE_HUGEPAGE"))
"""


@pytest.mark.parametrize("case", ["gpunn first", "the user's value", "numpy first"])
def test_numpy_loads_without_huge_page_advice(case):
    # NumPy reads NUMPY_MADVISE_HUGEPAGE once, as it loads: importing gpunn first turns the
    # advice off and leaves the environment as it found it; a user's own value wins; a NumPy
    # loaded before gpunn keeps its default, and the report says so
    if not hasattr(np._core.multiarray, "_get_madvise_hugepage"):
        pytest.skip("this NumPy has no huge-page switch")
    said, advice, left = _probe(_HUGEPAGE_PROBE, "NUMPY_MADVISE_HUGEPAGE", "1", case)
    expect = {"gpunn first": ("off (gpunn's NUMPY_MADVISE_HUGEPAGE=0)", "False", "None"),
              "the user's value": ("on (NUMPY_MADVISE_HUGEPAGE=1 (the user's))", "True", "1"),
              "numpy first": ("NumPy was imported before gpunn", None, "None")}[case]
    assert expect[0] in said, said
    if expect[1] is not None:
        assert advice == expect[1]
    assert left == expect[2]


@pytest.fixture
def chunk_calls(monkeypatch):
    """Every gpunn.threads.parallel_chunks call (which still runs), in call order: ``sizes``
    [(called on the main thread, chunk size)]; ``real``: the function itself, unrecorded."""
    import threading
    from types import SimpleNamespace
    calls = SimpleNamespace(sizes=[], real=threads.parallel_chunks)

    def spy(fn, n, chunk, work=None):
        calls.sizes.append((threading.current_thread() is threading.main_thread(), chunk))
        return calls.real(fn, n, chunk, work=work)
    monkeypatch.setattr(threads, "parallel_chunks", spy)
    return calls


def test_update_pieces_stay_in_cache_on_one_thread(restore_threads, chunk_calls):
    """The optimizer update takes BIG_CHUNK pieces only where the pool really runs them on
    several threads; on one thread (one thread set, a --procs rank, inside a pool worker,
    below the work threshold) CHUNK pieces, whose arrays stay in L2 (2 MiB pieces there were
    1.5x slower). Either way the values are the whole-array update's, bit for bit."""
    import threading
    from gpunn.ops import optim_update
    sizes, real = chunk_calls.sizes, chunk_calls.real
    rng = np.random.default_rng(0)
    big = threads.PARALLEL_MIN_WORK + 12345
    p0, g = rng.standard_normal(big).astype(np.float32), rng.standard_normal(big).astype(np.float32)
    expect_p, expect_v = p0.copy(), np.zeros_like(p0)
    optim_update._sgd_numpy(expect_p, g, expect_v, 0.1, 0.9, False, 0.0, False)   # whole array
    for count, n, chunk in [(1, big, optim_update.CHUNK), (2, big, optim_update.BIG_CHUNK),
                            (2, threads.PARALLEL_MIN_WORK - 1, optim_update.CHUNK)]:
        threads.set_num_threads(count)
        sizes.clear()
        p, v = p0[:n].copy(), np.zeros(n, np.float32)
        optim_update.sgd_update(p, g[:n], v, 0.1, momentum=0.9)
        assert sizes == [(True, chunk)], (count, n)
        if n == big:
            assert np.array_equal(p, expect_p) and np.array_equal(v, expect_v)
    threads.set_num_threads(2)                  # inside a pool worker: one thread, CHUNK
    both = threading.Barrier(2, timeout=10)     # one piece on each thread, at the same time

    def update_in(lo, hi):
        both.wait()
        optim_update.sgd_update(p0.copy(), g, np.zeros_like(p0), 0.1, momentum=0.9)
    sizes.clear()
    real(update_in, 2, 1)
    assert sorted(sizes) == [(False, optim_update.CHUNK), (True, optim_update.BIG_CHUNK)]
    assert optim_update.CHUNK * 4 * 4 <= 2 << 20 < optim_update.BIG_CHUNK * 4 * 4


def test_conv_chunks_grow_on_the_pool_and_never_change_the_results(restore_threads,
                                                                   chunk_calls):
    """Convolution forward takes blocks of up to PARALLEL_CHUNK_BYTES when the pool runs it
    (at least two per thread), CHUNK_BYTES on one thread: per-sample GEMMs, so the output is
    the same bits either way. A wide convolution's backward (one weight-gradient GEMM per
    chunk) cuts WIDE_CHUNK_BYTES blocks whatever the thread count, so dW is the same too."""
    from gpunn.ops import conv as convops
    seen = chunk_calls.sizes
    rng = np.random.default_rng(1)
    x = rng.standard_normal((100, 16, 28, 28)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    d = rng.standard_normal((100, 16, 28, 28)).astype(np.float32)
    per_sample = 16 * 9 * 28 * 28 * 4
    out = {}
    for count in (1, 2, 16):
        threads.set_num_threads(count)
        seen.clear()
        y, cache = convops.conv2d_forward(x, w, None, (1, 1), (1, 1, 1, 1))
        dx, dw, _ = convops.conv2d_backward(d, cache, w, (1, 1), (1, 1, 1, 1), False)
        out[count] = ([c for _, c in seen], y, dx, dw)
    assert out[1][0][0] == max(1, convops.CHUNK_BYTES // per_sample)
    assert out[2][0][0] == min(convops.PARALLEL_CHUNK_BYTES // per_sample, 100 // 4) > 1
    assert out[16][0][0] == -(-100 // 32)                # two blocks per thread at least
    wide = min(convops.WIDE_CHUNK_BYTES // per_sample, -(-100 // convops.MIN_CHUNKS))
    assert {o[0][1] for o in out.values()} == {wide} and wide > 1
    for count in (2, 16):
        for a, b in zip(out[1][1:], out[count][1:]):
            assert np.array_equal(a, b), count


def test_pool_chunks_grow_on_the_pool_and_never_change_the_results(restore_threads,
                                                                  chunk_calls):
    """Max-pooling passes take chunks of up to PARALLEL_CHUNK_BYTES on the pool (two per
    thread at least), CHUNK_BYTES on one thread; each window is computed alone, so forward
    and backward give the same bits either way (the 2x2 path and the general one)."""
    from gpunn.layers import MaxPool2d
    from gpunn.ops import pool as poolops
    seen = chunk_calls.sizes
    rng = np.random.default_rng(2)
    x = rng.standard_normal((100, 32, 28, 28)).astype(np.float32)
    per_sample = 32 * 28 * 28 * 4
    for kernel, stride in ((2, 2), (3, 2)):
        out = {}
        for count in (1, 2):
            threads.set_num_threads(count)
            seen.clear()
            layer = MaxPool2d(kernel, stride=stride)
            y = layer.forward(x, train=True)
            dx = layer.backward(np.ones_like(y) * 0.5)
            out[count] = ([c for _, c in seen], y, dx)
        assert out[1][0][0] == max(1, poolops.CHUNK_BYTES // per_sample)
        assert out[2][0][0] == min(poolops.PARALLEL_CHUNK_BYTES // per_sample, 100 // 4) > \
            out[1][0][0]
        assert np.array_equal(out[1][1], out[2][1]) and np.array_equal(out[1][2], out[2][2])


_MALLOC_PROBE = """
import resource
{first}
import gpunn
import numpy as np
print(gpunn.threads.malloc_setting())
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones(12_000_000, np.float32); del a          # 48 MB: above glibc's own mmap limit
f0 = faults()
for _ in range(10):
    a = np.ones(12_000_000, np.float32); del a
print((faults() - f0) // 10)
"""


@pytest.mark.parametrize("case", ["gpunn", "GPUNN_MALLOC=default", "the user's value"])
def test_large_arrays_are_reused_not_faulted_in_again(case, monkeypatch):
    """With gpunn's malloc thresholds a 48 MB array freed and allocated again comes back from
    the heap (no page faults); glibc's own behaviour maps and faults in all 11,719 pages each
    time. GPUNN_MALLOC=default and the user's MALLOC_* variables leave glibc alone."""
    import ctypes
    import os
    import subprocess
    import sys
    if not hasattr(ctypes.CDLL(None), "gnu_get_libc_version"):
        pytest.skip("not glibc")
    env = dict(os.environ)
    for var in ("GPUNN_MALLOC", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        env.pop(var, None)
    if case == "GPUNN_MALLOC=default":
        env["GPUNN_MALLOC"] = "default"
    elif case == "the user's value":
        env["MALLOC_TRIM_THRESHOLD_"] = str(64 << 20)
    out = subprocess.run([sys.executable, "-c", _MALLOC_PROBE.format(first="")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    said, faults = out.stdout.strip().splitlines()
    if case == "gpunn":
        assert said == "arrays up to 1 GiB kept for reuse (gpunn's mallopt)"
        assert int(faults) < 100, faults
    else:
        assert ("GPUNN_MALLOC=default" in said) if case != "the user's value" else \
            (said == f"the user's MALLOC_TRIM_THRESHOLD_={64 << 20}")
        try:                                             # 2 MiB pages for every mapping:
            with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:   # few faults
                thp_always = "[always]" in f.read()
        except OSError:
            thp_always = False
        assert thp_always or int(faults) > 5000, faults  # glibc maps and faults in afresh
