#!/usr/bin/env bash
# Every check that needs a GPU, in one go, in under five minutes on one GPU:
#   1. the CUDA tests (pytest -m cuda: tests/test_cuda.py), which CI skips for want of a GPU;
#   2. the GPU benchmarks: per-step sampler overhead on CUDA (against diffusers, if installed)
#      and training throughput on CUDA, float32 and bf16 autocast.
# It sets nothing up. It runs $PYTHON if set, else .venv/bin/python, else python3: a Python with
# a CUDA build of torch, the library (pip install -e .) and pytest; diffusers (the [bench]
# extra) is optional. Each stage has a time limit, so the whole run stays within five minutes.
# Usage:  bash benchmarks/gpu_check.sh        (from anywhere; it changes to the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export DIFFUSION_PROGRESS=0 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

"$PYTHON" - <<'PY'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} sees no CUDA device; nothing to check")
names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, devices: {', '.join(names)}")
PY

status=0
echo "== CUDA tests"
timeout 180 "$PYTHON" -m pytest -m cuda tests -q -rs -p no:cacheprovider || status=1

echo "== Per-step sampler overhead on CUDA"
if "$PYTHON" -c "import diffusers" 2>/dev/null; then
  timeout 45 "$PYTHON" benchmarks/step_overhead.py --device cuda --repeats 11 || status=1
else
  echo "skipped: diffusers is not installed (pip install -e '.[bench]')"
fi

echo "== Training throughput on CUDA"
timeout 60 "$PYTHON" benchmarks/train_throughput.py --no-cpu || status=1

exit $status
