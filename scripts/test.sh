#!/usr/bin/env bash
# Quick start, command 2: install with the test extras, lint, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest -n 2 --timeout 900 "$@"
