#!/usr/bin/env bash
# The README's first command: install gpunn into a virtual environment (.venv in the checkout,
# or the one already active; never the system Python), get Fashion-MNIST, train model4 on the
# best device, and say where the report is. A few minutes on a 2-core CPU; faster on a GPU.
# Needs only python3 (>= 3.10) with python3-venv, and git for the clone.
#   bash scripts/quickstart.sh [extra `gpunn train` options, e.g. --epochs 2, --dataset synthetic]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh

# 1. The environment, and gpunn in it: with the CuPy extra when an NVIDIA driver answers
#    (CUDA 13 wheels need driver >= 580).
gpunn_venv
extra=""
if command -v nvidia-smi >/dev/null 2>&1 && drv=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1) && [ -n "$drv" ]; then
  major=${drv%%.*}
  if [ "$major" -ge 580 ] 2>/dev/null; then extra="cuda13"; else extra="cuda12"; fi
  echo "quickstart: NVIDIA driver $drv found; gpunn with CuPy ($extra)"
else
  echo "quickstart: no NVIDIA driver found; gpunn for the CPU"
fi
gpunn_install "$extra"

# 2. The data set (Fashion-MNIST unless --dataset says otherwise): the Debian package where apt
#    is usable, else a download, else say how to get it.
dataset=fashion-mnist
prev=""
for a in "$@"; do
  [ "$prev" = "--dataset" ] && dataset=$a
  case $a in --dataset=*) dataset=${a#--dataset=} ;; esac
  prev=$a
done
if ! "$PY" -m gpunn.cli datasets --check "$dataset" >/dev/null 2>&1; then
  if [ "$dataset" = fashion-mnist ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "quickstart: installing the Debian package dataset-fashion-mnist"
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null || true
  fi
fi
if ! "$PY" -m gpunn.cli datasets --check "$dataset" >/dev/null 2>&1; then
  "$PY" -m gpunn.cli datasets --download "$dataset" || {
    "$PY" -m gpunn.cli datasets --check "$dataset"; exit 1; }
fi

# 3. Train model4 on the best device (CUDA when usable, else the CPU) and write the report, in
#    a new run directory each time (gpunn never writes over an earlier run).
out=${GPUNN_QUICKSTART_OUT:-runs/quickstart-$(date +%Y%m%d-%H%M%S)}
"$PY" -m gpunn.cli train --model model4 --dataset fashion-mnist --epochs 5 \
  --optimizer sgd --lr 0.05 --momentum 0.9 --schedule cosine --batch-size 100 --device auto --seed 0 \
  --out "$out" "$@"
echo
echo "quickstart: done. Report: $out/report.md (plots beside it)"
