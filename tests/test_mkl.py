"""Intel MKL for the CPU products gpunn runs on one thread (gpunn/ops/mkl.py): the choice
(GPUNN_BLAS) and its errors everywhere; with MKL installed (the mkl extra, which the test extra
brings), that the products it takes are the right ones and right, and that a model trains
through it as through NumPy's BLAS."""
import re

import numpy as np
import pytest

import gpunn
from gpunn.ops import mkl
from gpunn.ops.gemm import gemm
from gpunn.threads import get_num_threads, parallel_chunks, set_num_threads


@pytest.fixture(autouse=True)
def fresh_choice():
    """Each test decides GPUNN_BLAS (monkeypatch) and loads the library anew; afterwards the
    next test starts from the environment's choice again."""
    mkl._reset()
    threads = get_num_threads()
    yield
    mkl._reset()
    set_num_threads(threads)


def _installed() -> bool:
    import os
    old = os.environ.pop("GPUNN_BLAS", None)
    try:
        mkl._reset()
        return mkl._find("mkl")[0] is not False
    except ImportError:
        return False
    finally:
        if old is not None:
            os.environ["GPUNN_BLAS"] = old
        mkl._reset()


needs_mkl = pytest.mark.skipif(not _installed(), reason="MKL is not installed "
                                                        "(pip install 'gpunn[mkl]')")


def _spy(monkeypatch):
    """Count the products MKL computes."""
    calls = []
    real = mkl.gemm

    def counted(a, b, transb=False, out=None):
        calls.append((a.shape, b.shape, transb))
        return real(a, b, transb, out)
    monkeypatch.setattr(mkl, "gemm", counted)
    return calls


def _operands(rng, m, k, n, ta, tb, dt):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dt)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dt)
    return a, b


# -- the choice, with or without MKL ------------------------------------------------------------
def test_a_bad_gpunn_blas_names_the_variable(monkeypatch):
    monkeypatch.setenv("GPUNN_BLAS", "atlas")
    set_num_threads(1)
    a = np.ones((200, 300), np.float32)               # 12M multiply-adds: one MKL may take
    with pytest.raises(ValueError, match=r"GPUNN_BLAS must be one of auto, mkl, openblas .*"
                                         r"got 'atlas'"):
        gemm(a, a.T.copy())


def test_forcing_mkl_where_it_is_missing_says_how_to_install_it(monkeypatch):
    monkeypatch.setenv("GPUNN_BLAS", "mkl")
    monkeypatch.setattr(mkl, "_candidates", lambda: [])
    with pytest.raises(ImportError, match=r"GPUNN_BLAS=mkl: MKL is not installed "
                                           r"\(pip install 'gpunn\[mkl\]'\)"):
        mkl.library()


def test_forcing_mkl_from_a_file_that_is_not_it_names_the_file(monkeypatch, tmp_path):
    bad = tmp_path / "libmkl_rt.so.2"
    bad.write_bytes(b"not a shared library")
    monkeypatch.setenv("GPUNN_BLAS", "mkl")
    monkeypatch.setattr(mkl, "_candidates", lambda: [str(bad)])
    with pytest.raises(ImportError, match=r"MKL did not load: .*libmkl_rt\.so\.2"):
        mkl.library()


def test_auto_without_mkl_is_numpy_and_says_why(monkeypatch):
    monkeypatch.delenv("GPUNN_BLAS", raising=False)
    monkeypatch.setattr(mkl, "_candidates", lambda: [])
    monkeypatch.setattr(mkl, "_intel_cpu", lambda: True)
    assert mkl.library() is None
    assert "MKL not used: MKL is not installed" in mkl.describe()


def test_auto_leaves_other_cpus_to_numpy(monkeypatch):
    monkeypatch.delenv("GPUNN_BLAS", raising=False)
    monkeypatch.setattr(mkl, "_intel_cpu", lambda: False)
    assert mkl.library() is None
    assert "not an Intel CPU (GPUNN_BLAS=mkl to use MKL anyway)" in mkl.describe()


def test_a_numpy_built_on_mkl_keeps_its_own(monkeypatch):
    monkeypatch.setenv("GPUNN_BLAS", "mkl")
    monkeypatch.setattr(mkl, "_numpy_uses_mkl", lambda: True)
    assert mkl.library() is None
    assert "MKL not used: NumPy's own BLAS is MKL already" in mkl.describe()


def test_openblas_is_numpys_product_bit_for_bit(monkeypatch):
    monkeypatch.setenv("GPUNN_BLAS", "openblas")
    set_num_threads(1)
    calls = _spy(monkeypatch)
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        for tb in (False, True):
            a, b = _operands(rng, 50, 300, 40, False, tb, dt)
            got = gemm(a, b, transb=tb)
            want = a @ (b.T if tb else b)
            assert got.tobytes() == want.tobytes()
    assert calls == [] and "GPUNN_BLAS=openblas" in mkl.describe()


# -- with MKL -----------------------------------------------------------------------------------
@needs_mkl
@pytest.mark.parametrize("dt,tol", [(np.float32, 2e-5), (np.float64, 1e-13)])
def test_mkl_takes_the_one_thread_products_and_computes_them(monkeypatch, dt, tol):
    monkeypatch.setenv("GPUNN_BLAS", "mkl")
    monkeypatch.setattr(mkl, "MIN_MACS", 0)          # the edge shapes through MKL too
    set_num_threads(1)
    calls = _spy(monkeypatch)
    rng = np.random.default_rng(1)
    shapes = [(1, 1, 1), (3, 5, 7), (50, 784, 100), (33, 1, 9), (6, 40, 1)]
    for (m, k, n) in shapes:
        for ta in (False, True):
            for tb in (False, True):
                a, b = _operands(rng, m, k, n, ta, tb, dt)
                want = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b)
                out = np.full((m, n), np.nan, dt)
                before = len(calls)
                got = gemm(a, b, transa=ta, transb=tb, out=out)
                assert got is out and got.dtype == dt
                scale = np.abs(a).max() * np.abs(b).max() * k
                assert np.abs(got - want).max() <= tol * scale, (m, k, n, ta, tb)
                # op(a) = a.T (the weight gradient) stays with NumPy's BLAS
                assert len(calls) == before + (0 if ta else 1), (m, k, n, ta, tb)
    assert re.match(r"Intel MKL \d[\w.]* \(sequential\)", mkl.describe()), mkl.describe()


@needs_mkl
def test_mkl_leaves_multithreaded_tiny_non_contiguous_and_integer_products(monkeypatch):
    monkeypatch.setenv("GPUNN_BLAS", "mkl")
    calls = _spy(monkeypatch)
    rng = np.random.default_rng(2)
    big_a = rng.standard_normal((100, 2000)).astype(np.float32)
    big_b = rng.standard_normal((2000, 500)).astype(np.float32)       # 100M multiply-adds
    set_num_threads(2)
    np.testing.assert_allclose(gemm(big_a, big_b), big_a @ big_b, rtol=1e-4, atol=1e-3)
    assert calls == []                                # two BLAS threads: NumPy's
    one_thread = rng.standard_normal((50, 784)).astype(np.float32)     # 3.9M multiply-adds
    gemm(one_thread, np.ascontiguousarray(big_b[:784, :100]))
    assert len(calls) == 1                            # one thread's worth, even at two
    tiny = rng.standard_normal((10, 20)).astype(np.float32)
    np.testing.assert_array_equal(gemm(tiny, tiny.T.copy()), tiny @ tiny.T)
    assert len(calls) == 1                            # below MIN_MACS: the call costs more
    set_num_threads(1)
    strided = big_a[:, ::2]
    np.testing.assert_array_equal(gemm(strided, big_b[:1000]), strided @ big_b[:1000])
    ints = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(gemm(ints, ints.T), ints @ ints.T)
    assert len(calls) == 1
    # inside a parallel region every product is a one-thread product
    set_num_threads(2)
    parts = [None, None]
    parallel_chunks(lambda lo, hi: parts.__setitem__(lo // 50, gemm(big_a[lo:hi], big_b)),
                    100, 50, work=10 ** 9)
    np.testing.assert_allclose(np.concatenate(parts), big_a @ big_b, rtol=1e-4, atol=1e-3)
    assert len(calls) == 3


@needs_mkl
def test_a_model_trains_through_mkl_as_through_numpys_blas(monkeypatch):
    """float64 mlp1000 for 5 SGD steps, one thread: the same weights within rounding (the
    products that went to MKL are the forward and input-gradient ones)."""
    set_num_threads(1)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 1, 28, 28))
    y = rng.integers(0, 10, 64)
    finals = {}
    for blas in ("openblas", "mkl"):
        monkeypatch.setenv("GPUNN_BLAS", blas)
        mkl._reset()
        calls = _spy(monkeypatch)
        model = gpunn.build_model("mlp1000", (1, 28, 28), 10, seed=0, dtype=np.float64)
        opt = gpunn.SGD(model.parameters(), lr=0.05, momentum=0.9)
        step = gpunn.TrainStep(model, gpunn.CrossEntropyLoss(), opt)
        for _ in range(5):
            step(x, y)
        finals[blas] = model.state_dict()
        assert (len(calls) > 0) == (blas == "mkl")
        monkeypatch.undo()
    for k, v in finals["openblas"].items():
        np.testing.assert_allclose(finals["mkl"][k], v, rtol=1e-11, atol=1e-13, err_msg=k)


def _train(tmp_path):
    from click.testing import CliRunner

    from gpunn.cli import main
    return CliRunner().invoke(main, ["train", "--model", "model1", "--dataset", "synthetic",
                                     "--epochs", "1", "--device", "cpu", "--no-progress",
                                     "--out", str(tmp_path / "run")])


def test_gpunn_train_refuses_a_bad_gpunn_blas_before_it_writes_anything(monkeypatch, tmp_path):
    monkeypatch.setenv("GPUNN_BLAS", "fastest")
    r = _train(tmp_path)
    assert r.exit_code == 2, r.output
    assert "GPUNN_BLAS must be one of auto, mkl, openblas" in r.output
    assert not (tmp_path / "run").exists()


def test_the_run_report_says_which_blas_ran(monkeypatch, tmp_path):
    monkeypatch.setenv("GPUNN_BLAS", "openblas")
    r = _train(tmp_path)
    assert r.exit_code == 0, r.output
    report = (tmp_path / "run" / "report.md").read_text()
    assert "CPU GEMMs: NumPy's BLAS for every product (MKL not used: GPUNN_BLAS=openblas)" \
        in report


@needs_mkl
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_a_wide_convolution_is_one_mkl_gemm_per_chunk_and_the_chunks_change_no_bit(
        monkeypatch, dt):
    """A convolution with wide im2col rows (C*kh*kw >= WIDE_K) multiplies a whole chunk of
    samples by W in one MKL GEMM, forward and (stride 1) for the input gradient, instead of
    one OpenBLAS GEMM per sample: the same values as that path (to float rounding), and the
    same bits at 1, 2 and 16 threads (chunks of different widths); with GPUNN_BLAS=openblas
    the per-sample path, exactly as before."""
    from gpunn.ops import conv as convops
    monkeypatch.delenv("GPUNN_BLAS", raising=False)
    calls = _spy(monkeypatch)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((40, 64, 8, 8)).astype(dt)
    w = rng.standard_normal((64, 64, 3, 3)).astype(dt)
    b = rng.standard_normal(64).astype(dt)
    d = rng.standard_normal((40, 64, 8, 8)).astype(dt)

    def run():
        y, cache = convops.conv2d_forward(x, w, b, (1, 1), (1, 1, 1, 1), relu=True)
        dx, dw, db = convops.conv2d_backward(d, cache, w, (1, 1), (1, 1, 1, 1), True, y_relu=y)
        return y, dx, dw, db
    got = {}
    for count in (1, 2, 16):
        set_num_threads(count)
        calls.clear()
        got[count] = run()
        widths = [b_shape[1] for _, b_shape, _ in calls]      # samples x 64 pixels each
        assert len(widths) >= 2 and all(n % 64 == 0 for n in widths), widths
        assert dt == np.float64 or max(widths) > 64, widths   # several samples per GEMM
    for count in (2, 16):
        for a, b_ in zip(got[1], got[count]):
            assert np.array_equal(a, b_), count
    monkeypatch.setenv("GPUNN_BLAS", "openblas")
    mkl._reset()
    calls.clear()
    per_sample = run()
    assert calls == []
    tol = 1e-4 if dt == np.float32 else 1e-12
    for a, b_ in zip(got[1], per_sample):
        np.testing.assert_allclose(a, b_, rtol=tol, atol=tol * np.abs(b_).max())
