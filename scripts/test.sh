#!/usr/bin/env bash
# Install gpunn with its test extra and run the default test suite (no GPU needed).
# GPU tests (-m gpu) skip cleanly without a device; slow real-data tests run with -m slow.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e '.[dev]'
python3 -m pytest "$@"
