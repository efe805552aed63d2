#!/usr/bin/env bash
# Everything a lent GPU machine should run, sized for a lease of 15 minutes of device time
# (docs/GPU.md): two parts of under 8 minutes each, every command under its own time limit, so
# that one slow piece cannot eat the rest. On a machine of your own, "all" runs both.
#
#   bash scripts/gpu_check.sh 1|2|all [DATA_DIR]
#
# Part 1 (issue 9's GPU figures, the most wanted): device and versions; `gpunn parity` (every
#   layer and 200 training steps, NumPy vs CUDA, and its "graph" rows: the graphed step
#   against the eager one in float64); `gpunn bench --device cuda --quick` on model4, cnn-bn,
#   vgg-cifar and resnet20 (gpunn eager and graphed against PyTorch eager and PyTorch with
#   CUDA graphs, peak memory, floors).
# Part 2: `pytest -m gpu` (the graphed-step tests first, then kernels, layers, zoo training,
#   NCCL with one rank); the 16-core host CPU: `gpunn bench --device cpu` at 16 threads with
#   the forked-processes column, and model4 at 1, 2, 4, 8 and 16 threads (more cores must
#   never be slower); a --graph training run of model4 (Fashion-MNIST when DATA_DIR or the
#   Debian package has it, else the synthetic set).
#
# Logs go to ${OUT:-gpu-logs}/: gpu-partN.log (everything printed, prefixed by the command and
# its exit status and seconds) and gpunn bench's .json/.md; at most 8 files, as the device
# tool brings back. The last lines printed are a summary table of the commands.
set -uo pipefail
cd "$(dirname "$0")/.."
part=${1:-all}
case "$part" in 1|2|all) ;; *) echo "usage: bash scripts/gpu_check.sh 1|2|all [DATA_DIR]" >&2; exit 2;; esac
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PY:-python3}
data_opt=()
[ $# -ge 2 ] && data_opt=(--data-dir "$2")
status=0
summary=()
LOG=/dev/null
run() {  # run LIMIT_S NAME CMD...: output to the part's log, exit status and seconds remembered
  local limit=$1 name=$2; shift 2
  local t0=$SECONDS
  echo "== $name: $*" | tee -a "$LOG"
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  local took=$((SECONDS - t0))
  [ "$rc" = 124 ] && echo "== $name: stopped at its limit of $limit s" | tee -a "$LOG"
  echo "== $name exit $rc ($took s)" | tee -a "$LOG"
  summary+=("$(printf '%-22s exit %-4s %5s s (limit %s)' "$name" "$rc" "$took" "$limit")")
  [ "$rc" = 0 ] || status=1
}
environment() {
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  echo "commit: ${GPUNN_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  echo "cpu cores: $(nproc)  $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
  "$PY" -c "import sys, numpy, cupy; print('python', sys.version.split()[0], 'numpy', numpy.__version__, 'cupy', cupy.__version__, 'cuda runtime', cupy.cuda.runtime.runtimeGetVersion(), 'nvrtc', cupy.cuda.nvrtc.getVersion())"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cudnn', torch.backends.cudnn.version())" || true
}

part1() {
  LOG="$OUT/gpu-part1.log"; : > "$LOG"
  environment 2>&1 | tee -a "$LOG"
  run 170 parity "$PY" -m gpunn.cli parity --steps 200
  run 260 bench_cuda "$PY" -m gpunn.cli bench --device cuda --quick \
      --models model4,cnn-bn,vgg-cifar,resnet20 --out "$OUT"
}

part2() {
  LOG="$OUT/gpu-part2.log"; : > "$LOG"
  environment 2>&1 | tee -a "$LOG"
  run 200 pytest_gpu "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_graph_gpu.py \
      tests/test_gpu.py tests/test_gemm.py tests/test_distributed.py tests/test_faults.py \
      tests/test_flat_params.py tests/test_kernels_emu.py tests/test_losses.py tests/test_optim.py
  run 120 bench_cpu16 "$PY" -m gpunn.cli bench --device cpu --quick --threads "$(nproc)" \
      --models model4,cnn-bn,mlp1000 --batch 100 --no-memory --out "$OUT"
  for t in 1 2 4 8 16; do
    run 40 "model4_threads_$t" "$PY" -m gpunn.cli bench --device cpu --models model4 --batch 100 \
        --threads "$t" --seconds 2 --no-torch --no-memory --no-save --procs 1
  done
  local data=synthetic
  if [ ${#data_opt[@]} -gt 0 ] || [ -d /usr/share/datasets/fashion-mnist ]; then data=fashion-mnist; fi
  run 90 train_model4_graph "$PY" -m gpunn.cli train --model model4 --dataset "$data" \
      "${data_opt[@]}" --epochs 2 --device cuda --graph --no-progress --out "$OUT/run-graph"
  rm -rf "$OUT/run-graph"            # its report is in the log; the files would not come back
}

case "$part" in
  1) part1;;
  2) part2;;
  all) part1; part2;;
esac
echo
printf '%s\n' "${summary[@]}"
exit $status
