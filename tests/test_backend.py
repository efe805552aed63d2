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
    monkeypatch.delenv("GPUNN_DEVICE", raising=False)
    ok, reason, n = backend.cuda_status()
    assert not ok and "cupy is not installed" in reason and n == 0
    assert str(resolve_device("auto")) == "cpu"
    assert "using the CPU" in capsys.readouterr().err
    resolve_device("auto")
    assert capsys.readouterr().err == ""          # said once
    with pytest.raises(DeviceError, match=r"cupy is not installed.*pip install"):
        resolve_device("cuda")


def test_no_driver(monkeypatch):
    _fake_cupy(monkeypatch, error="cudaErrorInsufficientDriver: CUDA driver version is insufficient")
    ok, reason, _ = backend.cuda_status()
    assert not ok and "driver" in reason
    with pytest.raises(DeviceError, match="driver"):
        resolve_device("cuda:0")


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
    assert to_device(x, "cpu") is x or np.array_equal(to_device(x, "cpu"), x)
    assert isinstance(to_numpy([1, 2]), np.ndarray)
    backend.synchronize("cpu")
