#!/usr/bin/env bash
# Refresh requirements/constraints.txt: resolve the ranges of pyproject.toml afresh in a
# throw-away virtual environment and record every installed version.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$PYTHON" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --no-deps --no-index "torch==$TORCH_VERSION" 2>/dev/null ||
  "$tmp/venv/bin/python" -m pip install --quiet --no-deps --index-url "$TORCH_INDEX_URL" \
    "torch==$TORCH_VERSION"
"$tmp/venv/bin/python" -m pip install --quiet -e ".[book,test,bench]"
{
  echo "# Exact versions installed by scripts/setup.sh (refresh with: make lock)."
  echo "# torch's local build tag (+cpu, +cu128, ...) is dropped so that any build of it qualifies."
  "$tmp/venv/bin/python" -m pip freeze --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/'
} >requirements/constraints.txt
echo "wrote requirements/constraints.txt ($(grep -c '==' requirements/constraints.txt) pins)"
