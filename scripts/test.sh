#!/usr/bin/env bash
# The test command: set up .venv, lint, type-check and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
# Two test processes (pytest-xdist; one test file stays in one process, so a
# file's fixtures are built once): most end-to-end tests wait on worker
# processes, servers and leases, so two overlap well even on 2 cores.
# SCHEDY_TEST_PROCESSES=0 runs them in this process.
.venv/bin/python -m pytest -n "${SCHEDY_TEST_PROCESSES:-2}" --dist loadfile "$@"
