"""The README's two commands from a fresh clone, with a Python that refuses system-wide installs
(PEP 668: an EXTERNALLY-MANAGED file in its stdlib folder, as on Debian 12 and Ubuntu 24.04):
both must set up a virtual environment in the checkout and never touch that Python.

Slow (a venv and pip installs, about a minute): ``.ci/run`` runs it once, explicitly.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PROBE = ("import sys, sysconfig, os, importlib.util as u; "
         "print(os.path.exists(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')) "
         "and u.find_spec('venv') is not None and u.find_spec('ensurepip') is not None "
         "and sys.version_info >= (3, 10))")


def _refuses(python) -> bool:
    r = subprocess.run([python, "-I", "-c", PROBE], capture_output=True, text=True)
    return r.returncode == 0 and r.stdout.strip() == "True"


def _shadow_python(root: Path) -> str:
    """This interpreter again, as a separate installation whose stdlib folder holds an
    EXTERNALLY-MANAGED marker: its binary copied, the stdlib's entries linked (Python finds
    its prefix from the binary's place, so the shadow's stdlib is its own)."""
    import sysconfig
    exe = Path(os.path.realpath(sys.executable))
    stdlib = Path(sysconfig.get_path("stdlib"))
    (root / "bin").mkdir(parents=True)
    shutil.copy2(exe, root / "bin" / "python3")
    lib = root / "lib" / stdlib.name
    lib.mkdir(parents=True)
    for entry in stdlib.iterdir():
        if entry.name != "site-packages":
            (lib / entry.name).symlink_to(entry)
    (lib / "site-packages").mkdir()
    for so in (exe.parent.parent / "lib").glob("libpython*"):          # a shared libpython
        (root / "lib" / so.name).symlink_to(so)
    (lib / "EXTERNALLY-MANAGED").write_text(
        "[externally-managed]\nError=this Python refuses system-wide installs (a test)\n")
    return str(root / "bin" / "python3")


def _refusing_python(tmp_path) -> str:
    if not os.environ.get("GPUNN_TEST_SHADOW_PYTHON"):
        for cand in ("/usr/bin/python3", shutil.which("python3")):
            if cand and _refuses(cand):
                return cand
    py = _shadow_python(tmp_path / "shadow")
    if not _refuses(py):
        pytest.skip("could not build a Python that refuses system-wide installs here")
    return py


def _site_listing(python) -> list:
    code = "import sysconfig, os; p = sysconfig.get_path('purelib'); print(sorted(os.listdir(p)) if os.path.isdir(p) else [])"
    return subprocess.run([python, "-I", "-c", code], capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout to clone")
    root = tmp_path_factory.mktemp("setup")
    dest = root / "gpunn"
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True)
    python = _refusing_python(root)
    pip = subprocess.run([python, "-I", "-m", "pip", "install", "--dry-run", "--no-index",
                          "gpunn"], capture_output=True, text=True)
    if "No module named pip" not in pip.stderr:
        assert "externally-managed-environment" in pip.stderr, pip.stderr   # it does refuse
    bindir = root / "bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(python)
    path = [str(bindir)] + [p for p in os.environ["PATH"].split(os.pathsep)
                            if not os.path.exists(os.path.join(p, "activate"))]
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CONDA_PREFIX")}
    env.update(PATH=os.pathsep.join(path), GPUNN_DEVICE="cpu", MPLBACKEND="Agg")
    return dest, python, env


def test_quickstart_from_a_fresh_clone_uses_a_venv_and_reuses_it(clone):
    dest, python, env = clone
    before = _site_listing(python)
    cmd = ["bash", "scripts/quickstart.sh", "--dataset", "synthetic", "--epochs", "1",
           "--max-steps", "5", "--no-progress"]
    first = subprocess.run(cmd, cwd=dest, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "gpunn: creating the virtual environment .venv" in first.stdout
    assert (dest / ".venv" / "bin" / "python").exists()
    reports = list((dest / "runs").glob("quickstart-*/report.md"))
    assert len(reports) == 1 and "quickstart: done. Report: " in first.stdout
    again = subprocess.run(cmd, cwd=dest, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "gpunn: reusing the virtual environment .venv" in again.stdout
    assert "is installed already" in again.stdout
    assert _site_listing(python) == before                 # the system Python is untouched
    r = subprocess.run([python, "-I", "-c", "import gpunn"], cwd="/", capture_output=True)
    assert r.returncode != 0


def test_the_test_command_uses_the_same_venv(clone):
    dest, python, env = clone
    r = subprocess.run(["bash", "scripts/test.sh", "-q", "--co", "tests/test_public_api.py"],
                       cwd=dest, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "gpunn: installing .[dev]" in r.stdout and "tests collected" in r.stdout
    code = "import cupy, nvidia.cuda_nvrtc, pytest; print('ok')"
    ok = subprocess.run([str(dest / ".venv" / "bin" / "python"), "-c", code],
                        capture_output=True, text=True)
    assert ok.stdout.strip() == "ok", ok.stderr            # the compile gate's CuPy and NVRTC


def test_an_active_venv_is_used_as_it_is(clone, tmp_path):
    dest, python, env = clone
    venv = tmp_path / "mine"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    env = {**env, "VIRTUAL_ENV": str(venv), "PATH": f"{venv}/bin{os.pathsep}{env['PATH']}"}
    r = subprocess.run(["bash", "scripts/quickstart.sh", "--dataset", "synthetic", "--epochs",
                        "1", "--max-steps", "2", "--no-progress"], cwd=dest, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"gpunn: using the active virtual environment {venv}" in r.stdout
    assert subprocess.run([str(venv / "bin" / "python"), "-c", "import gpunn"], cwd="/").returncode == 0
