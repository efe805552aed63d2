#!/usr/bin/env bash
# Everything a lent GPU machine should run, in one go; logs land in ${OUT:-gpu-logs}/.
#   bash scripts/gpu_check.sh [DATA_DIR]     (DATA_DIR holds fashion-mnist/*.gz; default: the usual places)
# Runs: device info, the GPU tests (pytest -m gpu), `gpunn parity` (its "graph" rows: the
# graphed step against the eager one), model4 training runs on the GPU eager and with --graph,
# and the training-step benchmarks (gpunn bench: eager and graphed rows).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
data_opt=()
[ $# -ge 1 ] && data_opt=(--data-dir "$1")
status=0
run() {  # run NAME CMD...: tee the output to $OUT/NAME.log, remember failures
  local name=$1; shift
  echo "== $name: $*" | tee "$OUT/$name.log"
  "$@" 2>&1 | tee -a "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name exit $rc" | tee -a "$OUT/$name.log"
  [ "$rc" = 0 ] || status=1
}
{
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  echo "commit: ${GPUNN_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import sys, numpy, cupy; print('python', sys.version.split()[0], 'numpy', numpy.__version__, 'cupy', cupy.__version__, 'cuda runtime', cupy.cuda.runtime.runtimeGetVersion(), 'nvrtc', cupy.cuda.nvrtc.getVersion())"
} 2>&1 | tee "$OUT/env.log"
run info python3 -m gpunn.cli info
run pytest_gpu python3 -m pytest -q -m gpu -p no:cacheprovider tests
run parity python3 -m gpunn.cli parity --steps 200
run train_model4 python3 -m gpunn.cli train --model model4 --dataset fashion-mnist "${data_opt[@]}" --epochs 5 \
    --schedule cosine --device cuda --no-progress --out "$OUT/run-model4"
# the same run with the step replayed from a CUDA graph (docs/GRAPHS.md): same accuracy, the
# time taken in report.md is the comparison
run train_model4_graph python3 -m gpunn.cli train --model model4 --dataset fashion-mnist "${data_opt[@]}" \
    --epochs 5 --schedule cosine --device cuda --no-progress --graph --out "$OUT/run-model4-graph"
run bench python3 scripts/bench_train.py --repeats 50
# gpunn bench on the GPU times gpunn eager and graphed (GraphedTrainStep) against PyTorch eager
# and PyTorch with CUDA graphs: the rows the graphed step is judged by (issue 9 targets)
# (results written to docs/benchmarks/, to commit)
run bench_gpu python3 -m gpunn.cli bench --device cuda --models model4,cnn-bn,vgg-cifar,resnet20
exit $status
