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
# Headless Chromium renders the HTML report in its test; Debian's package, when apt is available.
if [ "${SCORESAMPLE_SKIP_CHROMIUM:-0}" != 1 ] && ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "bootstrap: chromium not installed; the report screenshot test will be skipped" >&2
fi
