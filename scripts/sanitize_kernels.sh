#!/usr/bin/env bash
# Run the kernel emulation suite (tests/test_kernels_emu.py) with every kernel built under
# AddressSanitizer + UndefinedBehaviorSanitizer (g++ -fsanitize=address,undefined
# -fno-sanitize-recover=all). Emulated buffers are then exact-size malloc blocks, so ASan
# reports any out-of-bounds read or write by a kernel, and UBSan any signed overflow (a 32-bit
# index product), bad shift or misaligned access; the first report aborts the run.
#
# Python itself is not instrumented, so the ASan runtime is preloaded into it; leak checking is
# off (CPython keeps memory until exit by design). pytest captures at the Python level only
# (--capture=sys) so a sanitizer report written to stderr reaches the terminal. Extra
# arguments go to pytest.
#
#   bash scripts/sanitize_kernels.sh            # ~5 s on 2 cores once built, ~12 s with the build
set -euo pipefail
cd "$(dirname "$0")/.."

CXX="${CXX:-g++}"
asan="$("$CXX" -print-file-name=libasan.so)"
if [[ "$asan" != /* || ! -e "$asan" ]]; then
    echo "sanitize_kernels: $CXX has no libasan.so (install libasan / gcc's sanitizer runtime)" >&2
    exit 2
fi

export GPUNN_EMU_SANITIZE=1
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
LD_PRELOAD="$asan${LD_PRELOAD:+:$LD_PRELOAD}" \
    python3 -m pytest -q -p no:cacheprovider --capture=sys tests/test_kernels_emu.py "$@"
