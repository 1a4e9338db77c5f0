#!/usr/bin/env bash
# Create .venv with schedy, its integrations and everything the tests need.
# torch is pinned to 2.13.0 (a CPU wheel here): an unpinned torch pulls a
# multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev,bench,server,lightning,keras]" "torch==2.13.0"
