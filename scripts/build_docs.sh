#!/usr/bin/env bash
# Build the documentation site (mkdocs-material + mkdocstrings) and fail on any warning:
# a broken link or anchor, a page missing from the nav, a docstring that does not parse.
#   scripts/build_docs.sh            # writes site/ (gitignored)
#   scripts/build_docs.sh OUT_DIR    # writes OUT_DIR
#   .venv/bin/mkdocs serve           # live preview at http://127.0.0.1:8000
# MKDOCS overrides the mkdocs executable (default: .venv/bin/mkdocs, else mkdocs on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-site}"
if [ -z "${MKDOCS:-}" ]; then
  if [ -x .venv/bin/mkdocs ]; then MKDOCS=.venv/bin/mkdocs; else MKDOCS=mkdocs; fi
fi
export NO_MKDOCS_2_WARNING=1
exec "$MKDOCS" build --strict --clean -f mkdocs.yml -d "$OUT"
