#!/usr/bin/env bash
# The test command: set up .venv, lint, type-check and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
