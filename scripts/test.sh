#!/usr/bin/env bash
# Install gpunn with its test extra and run the default test suite (no GPU needed), then the
# kernel emulation tests once more under AddressSanitizer + UndefinedBehaviorSanitizer.
# With arguments, they go to pytest and the sanitizer pass is skipped:
#   bash scripts/test.sh -m slow     real-data tests (needs Fashion-MNIST installed)
#   bash scripts/test.sh -m gpu      GPU tests (skip cleanly without a CUDA device)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e '.[dev]'
python3 -m pytest "$@"
if [ $# -eq 0 ]; then
  bash scripts/sanitize_kernels.sh
fi
