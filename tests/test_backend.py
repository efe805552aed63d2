"""Device resolution without a GPU: never crashes, says why, and how to fix it."""
import builtins
import sys
import types

import numpy as np
import pytest

from gpunn import backend
from gpunn.backend import DeviceError, get_array_module, resolve_device, to_device, to_numpy


@pytest.fixture(autouse=True)
def _fresh_probe():
    backend._reset_for_tests()
    yield
    backend._reset_for_tests()


def _block_cupy(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "cupy" or name.startswith("cupy."):
            raise ImportError("No module named 'cupy'")
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.delitem(sys.modules, "cupy", raising=False)


def _fake_cupy(monkeypatch, count=None, error=None):
    cupy = types.ModuleType("cupy")
    runtime = types.SimpleNamespace()

    def get_count():
        if error:
            raise RuntimeError(error)
        return count
    runtime.getDeviceCount = get_count
    cupy.cuda = types.SimpleNamespace(runtime=runtime)
    monkeypatch.setitem(sys.modules, "cupy", cupy)


def test_cpu_and_auto_without_cupy(monkeypatch, capsys):
    _block_cupy(monkeypatch)
    monkeypatch.setattr(backend, "nvidia_driver_version", lambda: "550.54")   # a driver, no CuPy
    monkeypatch.delenv("GPUNN_DEVICE", raising=False)
    ok, reason, n = backend.cuda_status()
    assert not ok and "cupy is not installed" in reason and n == 0
    assert str(resolve_device("auto")) == "cpu"
    assert "using the CPU" in capsys.readouterr().err
    resolve_device("auto")
    assert capsys.readouterr().err == ""          # said once
    with pytest.raises(DeviceError, match=r"cupy is not installed.*pip install"):
        resolve_device("cuda")


def test_no_driver(monkeypatch, capsys):
    """CUDA says "driver version is insufficient" also when there is no driver at all."""
    _fake_cupy(monkeypatch, error="cudaErrorInsufficientDriver: CUDA driver version is insufficient")
    monkeypatch.setattr(backend, "nvidia_driver_version", lambda: None)
    assert backend.cuda_status() == (False, "no NVIDIA driver found", 0)
    with pytest.raises(DeviceError, match="no NVIDIA driver found"):
        resolve_device("cuda:0")
    monkeypatch.delenv("GPUNN_DEVICE", raising=False)
    resolve_device("auto")
    assert capsys.readouterr().err == "gpunn: no GPU (no NVIDIA driver found); using the CPU\n"


def test_a_driver_too_old(monkeypatch):
    _fake_cupy(monkeypatch, error="cudaErrorInsufficientDriver: CUDA driver version is insufficient")
    monkeypatch.setattr(backend, "nvidia_driver_version", lambda: "470.10")
    ok, reason, _ = backend.cuda_status()
    assert not ok and reason.startswith("the NVIDIA driver (470.10) is too old")
    assert "insufficient" not in reason


def test_zero_devices(monkeypatch):
    _fake_cupy(monkeypatch, count=0)
    assert backend.cuda_status() == (False, "the CUDA driver reports zero devices", 0)
    assert resolve_device("auto", quiet=True).kind == "cpu"
    with pytest.raises(DeviceError, match="zero devices"):
        resolve_device("cuda")


def test_env_override(monkeypatch):
    monkeypatch.setenv("GPUNN_DEVICE", "cpu")
    assert str(resolve_device("auto")) == "cpu"


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cuda:-1", 3])
def test_bad_device_strings(bad):
    with pytest.raises(DeviceError):
        resolve_device(bad)


def test_numpy_helpers():
    x = np.arange(3.0)
    assert get_array_module(x) is np and get_array_module(None, x) is np
    assert to_device(x, "cpu") is x                  # already there: no copy
    assert to_device([1.0, 2.0], "cpu").dtype == np.float64
    assert isinstance(to_numpy([1, 2]), np.ndarray)
    backend.synchronize("cpu")


# -- backends: resolved once per op call, from the arrays -------------------------------------
def test_backend_of_numpy_is_numpy_and_has_no_kernels():
    b = backend.backend_of(np.zeros(3))
    assert b is backend.NUMPY and b.xp is np and not b.kernels
    with pytest.raises(DeviceError, match="numpy backend has no CUDA kernels.*relu_forward"):
        b.kernel("relu_forward", np.float32)


def test_use_backend_is_scoped_and_per_thread():
    import threading

    class Marker(backend.Backend):
        kernels = True
    m = Marker("marker", np)
    seen = {}
    with backend.use_backend(m):
        assert backend.backend_of(np.zeros(1)) is m
        t = threading.Thread(target=lambda: seen.setdefault("other", backend.backend_of(np.zeros(1))))
        t.start()
        t.join()
        with backend.use_backend(backend.NUMPY):
            assert backend.backend_of(np.zeros(1)) is backend.NUMPY
        assert backend.backend_of(np.zeros(1)) is m
    assert backend.backend_of(np.zeros(1)) is backend.NUMPY
    assert seen["other"] is backend.NUMPY            # another thread never sees the block


def test_op_takes_the_cuda_body_only_on_a_kernel_backend():
    from gpunn.ops.dispatch import op
    calls = []

    @op
    def double(x):
        calls.append("numpy")
        return x * 2

    @double.cuda
    def _double_cuda(b, x):
        calls.append(b.name)
        return x * 2

    class Fake(backend.Backend):
        kernels = True
    x = np.arange(3.0)
    np.testing.assert_array_equal(double(x), [0, 2, 4])
    with backend.use_backend(Fake("fake", np)):
        double(x)
    assert calls == ["numpy", "fake"]
    assert double.numpy(x)[2] == 4 and double.cuda_body is _double_cuda


def test_library_never_imports_its_test_machinery():
    """gpunn.testing (emulator) and CuPy's private modules are for tests only."""
    import subprocess
    code = ("import sys, numpy, gpunn, gpunn.cli, gpunn.train, gpunn.zoo, gpunn.parity, "
            "gpunn.kernels, gpunn.ops.conv; from gpunn.zoo import build_model; "
            "m = build_model('model4', (1, 28, 28), 10, seed=0); "
            "m.forward(numpy.zeros((2, 1, 28, 28), numpy.float32), train=True); "
            "print(sorted(k for k in sys.modules if k.startswith(('gpunn.testing', 'cupy._core', "
            "'cupy_backends'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
