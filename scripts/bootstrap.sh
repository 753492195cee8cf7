#!/usr/bin/env bash
# Create .venv with Python >= 3.12 and install scoresample with its test and docs extras.
# Works on a machine whose default python3 is older: it looks for a 3.12+ interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
find_python() {
  # 3.12 first: the version the test suite is checked on
  for cand in "${PYTHON:-}" "$HOME"/.pyenv/versions/3.12*/bin/python3 /root/.pyenv/versions/3.12*/bin/python3 \
      /usr/local/bin/python3.12 /usr/bin/python3.12 python3.12 \
      "$HOME"/.pyenv/versions/3.13*/bin/python3 /root/.pyenv/versions/3.13*/bin/python3 python3.13 python3; do
    [ -n "$cand" ] || continue
    if command -v "$cand" >/dev/null 2>&1 && \
       "$cand" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; then
      command -v "$cand"; return 0
    fi
  done
  return 1
}
PY=$(find_python) || { echo "bootstrap: no Python >= 3.12 found (set PYTHON=/path/to/python3.12)" >&2; exit 1; }
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)'; then
  rm -rf .venv
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test,docs]"
# Headless Chromium renders the HTML report in its test (tests/test_report.py finds it on PATH):
# Debian's package, installed with apt-get as root (or through sudo). Under CI a missing Chromium
# fails that test, so a failed install is reported here.
if [ "${SCORESAMPLE_SKIP_CHROMIUM:-0}" != 1 ] && ! command -v chromium >/dev/null 2>&1 \
    && ! command -v chromium-browser >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo -n"; fi
  ($SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium \
      >/dev/null) \
    || echo "bootstrap: could not install chromium (apt-get); the report screenshot test needs it" >&2
fi
