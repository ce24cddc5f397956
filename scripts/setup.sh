#!/usr/bin/env bash
# One command on a fresh machine: install everything, then run the main job on the embedded default
# (EfficientNet-Lite0 with ImageNet weights, W8A8, compiled for this CPU with the shipped profile that fits it
# (`--hw host`: x86_avx512_vnni or x86_avx2); latency and agreement with FP32).
#   scripts/setup.sh [extra `tvm-mpq compile` arguments]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/install.sh
exec .venv/bin/tvm-mpq compile --model efficientnet_lite0 --hw host --plan w8a8 \
    --out out/efficientnet_lite0_w8a8 --compare-fp32 "$@"
