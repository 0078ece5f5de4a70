#!/usr/bin/env bash
# Quick start, command 1: install, then run the main job (the seed's Pl@ntNet loss
# comparison on the embedded synthetic Pl@ntNet-like benchmark).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh train
.venv/bin/smoothtopk reproduce "$@"
