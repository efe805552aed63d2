"""Training results stay bit for bit what they were before the rework (tests/reference_runs.py).

On the machine kind the fixture was recorded on (same numpy, OpenBLAS build and core type)
every trained weight, optimizer buffer and loss must match exactly (SHA-256 of the bytes). On
another CPU, BLAS may sum in another order, so there the strided samples of every array and
the losses are compared to 1e-9 relative instead.
"""
import json

import numpy as np
import pytest

import reference_runs as ref

RECORDED = json.loads(ref.FIXTURE.read_text())
EXACT = RECORDED["machine"] == ref.machine_signature()


def _compare(name, want, got):
    problems = []
    for key in ("losses",):
        if key in want and want[key] != got[key]:
            if EXACT or not np.allclose([float(v) for v in want[key]],
                                        [float(v) for v in got[key]], rtol=1e-9, atol=0):
                problems.append(f"{name}: {key} {got[key]} != recorded {want[key]}")
    if "history" in want:
        for k, vals in want["history"].items():
            if vals != got["history"].get(k):
                problems.append(f"{name}: history[{k!r}] {got['history'].get(k)} != {vals}")
    for part in ("state", "optimizer"):
        if part not in want:
            continue
        w, g = want[part], got[part]
        if sorted(w) != sorted(g):
            problems.append(f"{name}: {part} keys {sorted(g)} != recorded {sorted(w)}")
            continue
        for k in w:
            if w[k]["shape"] != g[k]["shape"] or w[k]["dtype"] != g[k]["dtype"]:
                problems.append(f"{name}: {part}[{k}] {g[k]['shape']} {g[k]['dtype']} != "
                                f"recorded {w[k]['shape']} {w[k]['dtype']}")
            elif EXACT and w[k]["sha256"] != g[k]["sha256"]:
                a, b = np.array(w[k]["sample"]), np.array(g[k]["sample"])
                problems.append(f"{name}: {part}[{k}] differs from the recording (sampled max "
                                f"|diff| {np.max(np.abs(a - b)) if a.size else 0:.3e})")
            elif not EXACT and not np.allclose(w[k]["sample"], g[k]["sample"], rtol=1e-9,
                                               atol=1e-12):
                problems.append(f"{name}: {part}[{k}] samples differ beyond 1e-9")
    return problems


@pytest.mark.parametrize("path", ["cpu", "emulated"])
def test_training_matches_the_recording(path, tmp_path, numpy_blas):
    if path == "emulated":
        from gpunn.testing import emulated_cuda, emulated_kernel
        try:
            with emulated_cuda():
                emulated_kernel("relu_forward", np.float32)
        except Exception as e:  # pragma: no cover - no g++
            pytest.skip(f"kernel emulation unavailable: {e}")
    got = ref.all_runs(path == "emulated", tmp_path)
    assert sorted(got) == sorted(RECORDED[path])
    problems = []
    for name, want in RECORDED[path].items():
        problems += _compare(f"{path} {name}", want, got[name])
    mode = "bit for bit" if EXACT else "to 1e-9 (another CPU/BLAS than the recording's)"
    assert not problems, f"training results changed ({mode}):\n" + "\n".join(problems[:40])
