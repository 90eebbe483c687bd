#!/usr/bin/env bash
# Set up pneumoscan on a fresh machine: a virtual environment in .venv with the package
# and its test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
echo "pneumoscan installed in .venv ($(.venv/bin/pneumoscan --version))"
