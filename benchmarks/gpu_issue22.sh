#!/usr/bin/env bash
# Issue 22's GPU measurements in one command (docs/performance.md, "How to run the GPU measurements").
# Run from the repository root. Installs the wheels carried in .whl/ (if any) into $SITE (/tmp/site), then runs
# benchmarks/gpu_issue22.py, writing gpu_issue22.json, gpu_issue22.md and gpu_issue22.log under $OUT.
#   bash benchmarks/gpu_issue22.sh [--budget-s 300] [--cases NAME,NAME] [any other gpu_issue22.py option]
set -euo pipefail
OUT=${OUT:-$PWD/gpu_issue22_out}
PYTHON=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || { echo "error: installing the carried wheels in .whl/ failed" >&2; exit 1; }
  export PYTHONPATH=$SITE:$PWD
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>/dev/null || echo "nvidia-smi: none"
  "$PYTHON" -c "import torch, transformers, diffusers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'diffusers', diffusers.__version__)" || true
  "$PYTHON" benchmarks/gpu_issue22.py --out "$OUT" "$@"
} 2>&1 | tee "$OUT/gpu_issue22.log"
