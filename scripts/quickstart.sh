#!/usr/bin/env bash
# The README's first command: install gpunn, get Fashion-MNIST, train model4 on the best
# device, and say where the report is. A few minutes on a 2-core CPU; faster on a GPU.
#   bash scripts/quickstart.sh [extra `gpunn train` options, e.g. --epochs 2]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# 1. Install, with the CuPy extra when an NVIDIA driver answers (CUDA 13 wheels need driver >= 580).
extra=""
if command -v nvidia-smi >/dev/null 2>&1 && drv=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1) && [ -n "$drv" ]; then
  major=${drv%%.*}
  if [ "$major" -ge 580 ] 2>/dev/null; then extra="[cuda13]"; else extra="[cuda12]"; fi
  echo "quickstart: NVIDIA driver $drv found; installing gpunn$extra"
else
  echo "quickstart: no NVIDIA driver found; installing gpunn for the CPU"
fi
"$PY" -m pip install -q -e ".$extra"

# 2. Fashion-MNIST: the Debian package where apt is usable, else a download, else say how.
if ! "$PY" -m gpunn.cli datasets --check fashion-mnist >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "quickstart: installing the Debian package dataset-fashion-mnist"
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null || true
  fi
fi
if ! "$PY" -m gpunn.cli datasets --check fashion-mnist >/dev/null 2>&1; then
  "$PY" -m gpunn.cli datasets --download fashion-mnist || {
    "$PY" -m gpunn.cli datasets --check fashion-mnist; exit 1; }
fi

# 3. Train model4 on the best device (CUDA when usable, else the CPU) and write the report.
out=${GPUNN_QUICKSTART_OUT:-runs/quickstart}
"$PY" -m gpunn.cli train --model model4 --dataset fashion-mnist --epochs 5 \
  --optimizer sgd --lr 0.05 --momentum 0.9 --schedule cosine --batch-size 100 --device auto --seed 0 \
  --out "$out" "$@"
echo
echo "quickstart: done. Report: $out/report.md (plots beside it)"
