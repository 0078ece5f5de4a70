#!/usr/bin/env bash
# Installs smoothtopk into ./.venv with the extras given as $1 (default "train").
# torch is installed first, pinned, so that pip takes the local CPU build instead of
# pulling CUDA wheels; the Debian package dataset-fashion-mnist provides real images.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-train}"
python3 -m venv .venv
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[${extras}]"
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo_cmd="sudo"
    if command -v apt-get >/dev/null; then
        $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
        echo "warning: no apt-get; Fashion-MNIST (Debian package dataset-fashion-mnist) not installed" >&2
    fi
fi
