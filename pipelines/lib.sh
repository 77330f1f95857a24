#!/usr/bin/env bash
# Shared by the pipelines (sourced): stage completeness from a stage's manifest.json.
set -euo pipefail

complete() {  # complete DIR: true when DIR/manifest.json exists and says complete (needs $PY)
  "$PY" - "$1" <<'PYEOF'
import json, sys, pathlib
p = pathlib.Path(sys.argv[1]) / "manifest.json"
try:
    sys.exit(0 if json.loads(p.read_text()).get("complete") else 1)
except (OSError, ValueError):
    sys.exit(1)
PYEOF
}
