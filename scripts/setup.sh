#!/usr/bin/env bash
# Set up pneumoscan on a fresh machine: a virtual environment in .venv with the package
# and its test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
# The browser tests (report.html) drive Debian's chromium through Playwright, which cannot
# download its own browser here: install the system one when it is missing and we are root.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
        || echo "setup: could not install chromium; the browser tests need /usr/bin/chromium" >&2
fi
echo "pneumoscan installed in .venv ($(.venv/bin/pneumoscan --version))"
