#!/usr/bin/env bash
# Set up and run the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
source scripts/python.sh  # the interpreter setup.sh installed into (PYTHON, the active venv or .venv)
"$PY" -m ruff check src tests bench
"$PY" -m pytest -q "$@"
