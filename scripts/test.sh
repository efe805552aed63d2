#!/usr/bin/env bash
# The README's second command: install gpunn with its test extra into a virtual environment
# (.venv in the checkout, or the one already active; never the system Python) and run the
# default test suite (no GPU needed), then the kernel emulation tests once more under
# AddressSanitizer + UndefinedBehaviorSanitizer, then the README's two commands from a fresh
# clone with a Python that refuses system-wide installs (tests/test_setup.py, ~1 min). The test
# extra is what the tests need: pytest, and CuPy with NVRTC (no NVIDIA library bundle) for the
# kernel compile gate.
# With arguments, they go to pytest and the two extra passes are skipped:
#   bash scripts/test.sh -m slow     real-data tests (needs Fashion-MNIST installed)
#   bash scripts/test.sh -m gpu      GPU tests (skip cleanly without a CUDA device)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
gpunn_venv
gpunn_install dev
"$PY" -m pytest "$@"
if [ $# -eq 0 ]; then
  bash scripts/sanitize_kernels.sh
  "$PY" -m pytest -q -m slow tests/test_setup.py
fi
