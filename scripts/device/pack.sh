#!/usr/bin/env bash
# Pack what a GPU session carries: the runtime bundle (for the GPU host's Python 3.12) and the prepared
# folder, into one xz archive (the device tool carries at most 64 MiB).
#   scripts/device/pack.sh [PREPARED_DIR] [ARCHIVE]      defaults: out/gpu/prepared out/gpu/carry.tar.xz
set -euo pipefail
cd "$(dirname "$0")/../.."
PREPARED=${1:-out/gpu/prepared}
ARCHIVE=${2:-out/gpu/carry.tar.xz}
PY=${PYTHON:-.venv/bin/python}
[ -f "$PREPARED/manifest.json" ] || { echo "no $PREPARED/manifest.json: run scripts/device/prepare.py first" >&2; exit 1; }
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
"$PY" scripts/device/bundle_runtime.py "$STAGE/runtime" --download-ffi "${GPU_PYTHON:-3.12}" >/dev/null
rm -rf "$STAGE/wheels"
ln -s "$(realpath "$PREPARED")" "$STAGE/prepared"
mkdir -p "$(dirname "$ARCHIVE")"
tar -C "$STAGE" -chf - runtime prepared | xz -T2 -6 > "$ARCHIVE.tmp"
mv "$ARCHIVE.tmp" "$ARCHIVE"
SIZE=$(stat -c %s "$ARCHIVE")
echo "$ARCHIVE: $((SIZE / 1048576)) MiB"
[ "$SIZE" -lt $((60 * 1048576)) ] || { echo "over 60 MiB: the device tool carries at most 64 MiB in all" >&2; exit 1; }
