#!/usr/bin/env bash
# The main example: set up .venv, then run PBT on digits with 2 local Lightning
# worker processes on the embedded SQLite store (./schedy.db) -- one line per
# finished job -- print the population, the best job, its score and its
# hyperparameter schedule, and write the HTML report (./report.html).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/python examples/pbt_mnist/run.py --framework lightning --workers 2 --dataset digits \
    --population 6 --generations 8 --fresh "$@"
.venv/bin/schedy --db sqlite:///./schedy.db report "MNIST with PBT" -o report.html
