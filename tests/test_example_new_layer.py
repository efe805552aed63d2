"""examples/new_layer/silu.py: a user's own layer with its own CUDA kernel, end to end (kernel
folder, op with two bodies, layer, gradcheck, emulated kernel test, parity row, training)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "new_layer"


def _run(folder):
    return subprocess.run([sys.executable, str(folder / "silu.py")], capture_output=True,
                          text=True, timeout=600)


def test_the_example_passes_every_check():
    r = _run(EXAMPLE)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "parity emulated float64" in r.stdout and "2 kernel launches -> ok" in r.stdout
    assert r.stdout.strip().endswith("all checks passed")


def test_the_example_catches_a_wrong_kernel(tmp_path):
    """The example's checks can fail: a kernel whose backward drops a term is caught by its
    kernel test and by the parity row (the NumPy body is still right)."""
    bad = tmp_path / "new_layer"
    shutil.copytree(EXAMPLE, bad)
    cu = bad / "silu.cu"
    src = cu.read_text()
    assert "(s + v * s * (T(1) - s))" in src
    cu.write_text(src.replace("(s + v * s * (T(1) - s))", "(s + v * s)"))
    r = _run(bad)
    assert r.returncode == 1, r.stdout + r.stderr[-3000:]
    assert "kernels silu_forward/backward float64" in r.stdout and "FAILED" in r.stdout
    assert "parity emulated float64" in r.stdout and "-> FAILED" in r.stdout


def test_compile_gate_takes_the_example_folder():
    nvrtc_check = pytest.importorskip("nvrtc_check")
    ok, reason, _ = nvrtc_check.nvrtc_status()
    if not ok:
        pytest.skip(f"NVRTC unavailable: {reason}")
    from gpunn import kernels
    try:
        kernels.add_kernel_dir(EXAMPLE)
        archs = nvrtc_check.target_archs()
        res = nvrtc_check.compile_file("silu.cu", archs[0])
    finally:
        kernels.remove_kernel_dir(EXAMPLE)
    assert res.ok, res.message()
