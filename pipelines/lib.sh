#!/usr/bin/env bash
# Shared by the pipelines (sourced): stage completeness from a stage's manifest.json, and stage().
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

stage() {  # stage NAME OUTDIR COMMAND...: run COMMAND unless OUTDIR is complete; its wall seconds → OUTDIR.wall_s,
  #          its CPU seconds (user + system, its child processes included) → OUTDIR.cpu_s
  local name=$1 out=$2
  shift 2
  if complete "$out"; then
    echo "== $name: $out is complete, skipped"
    return
  fi
  echo "== $name"
  local t0=$SECONDS TIMEFORMAT="%U %S"
  mkdir -p "$(dirname "$out")"
  { time "$@" 2>&3; } 3>&2 2> "$out.times"  # the command's stderr as before; bash's `time` report → OUTDIR.times
  echo "$((SECONDS - t0))" > "$out.wall_s"
  awk '{ printf "%.1f\n", $1 + $2 }' "$out.times" > "$out.cpu_s" && rm -f "$out.times"
  echo "== $name done in $((SECONDS - t0)) s"
}
