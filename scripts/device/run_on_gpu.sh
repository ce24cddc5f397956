#!/usr/bin/env bash
# On the GPU machine (no TVM there; Python 3.12, torch, numpy), from the repository root:
#   scripts/device/run_on_gpu.sh [ARCHIVE]        default out/gpu/carry.tar.xz (from scripts/device/pack.sh)
# Unpacks the archive, prints the GPU, times every prepared library and its PyTorch baselines into $OUT.
# BUDGET_S (default 420): no new item starts after that many seconds.
set -euo pipefail
cd "$(dirname "$0")/../.."
ARCHIVE=${1:-out/gpu/carry.tar.xz}
OUT=${OUT:-$PWD/measure_out}
WORK=$(mktemp -d)
tar -xJf "$ARCHIVE" -C "$WORK"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" || true
python3 scripts/device/measure.py "$WORK/prepared" --bundle "$WORK/runtime" --out "$OUT" \
    --budget-s "${BUDGET_S:-420}" "${@:2}"
