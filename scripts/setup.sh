#!/usr/bin/env bash
# Create .venv with schedy, its integrations and everything the tests need.
# torch is pinned to 2.13.0 (a CPU wheel here) by scripts/constraints.txt: an
# unpinned torch pulls a multi-GB CUDA build. The package's own extras take
# ranges, since users install them beside their own torch.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c scripts/constraints.txt torch
.venv/bin/python -m pip install -q -c scripts/constraints.txt -e ".[dev,bench,server,lightning,keras]" torch
