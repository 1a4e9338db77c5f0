#!/usr/bin/env bash
# The main example: set up .venv, then run PBT with several local worker
# processes on the embedded SQLite store (./schedy.db) and print the best job
# and its hyperparameter schedule.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/python examples/toy_pbt.py --workers 4 "$@"
