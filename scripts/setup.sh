#!/usr/bin/env bash
# Create .venv and install the library with the book and test extras, at the pinned versions of
# requirements/constraints.txt. torch comes first and only if .venv has none: the CPU build by
# default, or whatever build (e.g. CUDA) the user installed into .venv beforehand.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}

if [ ! -x .venv/bin/python ]; then
  PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
  "$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"Python 3.11 or newer is needed, found {sys.version.split()[0]}; set PYTHON=...")
PY
  "$PYTHON" -m venv .venv
fi

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # A wheel in a local wheelhouse (pip's find-links) wins; otherwise the CPU-only index.
  .venv/bin/python -m pip install --quiet --no-deps --no-index "torch==$TORCH_VERSION" 2>/dev/null ||
    .venv/bin/python -m pip install --quiet --no-deps --index-url "$TORCH_INDEX_URL" \
      "torch==$TORCH_VERSION"
fi

.venv/bin/python -m pip install --quiet --constraint requirements/constraints.txt -e ".[book,test]"
.venv/bin/python -c "import torch, diffusion_core; print('torch', torch.__version__, '| diffusion_core', diffusion_core.__version__)"
