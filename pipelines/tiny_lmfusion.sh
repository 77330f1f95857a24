#!/usr/bin/env bash
# Builds the shipped longer-trained checkpoint lmfusion_cli/assets/tiny-lmfusion/ (issue 23):
# `pipelines/configs/tiny.yaml` on the demo's own shapes set (pipelines/tiny.sh's prepare and
# encode-latents stages, same items and seed), trained for STEPS instead of the demo's 2,000, then
# evaluated like the demo and exported with `lmfusion export` (trainable weights only; the base and VAE
# are the shipped tiny-lm and tiny-vae beside it, named by relative path).
#
#   make tiny-lmfusion                          # what this is for (≈ 95 CPU-minutes on one thread)
#   STEPS=20 WORK=/tmp/tl OUT=/tmp/tl/out NUM_ITEMS=64 EVAL_ITEMS=8 bash pipelines/tiny_lmfusion.sh   # smoke
#
# The build record (stage wall and CPU seconds, steps, threads, commit) goes to OUT/build.json. Every
# stage is skipped when complete, so a rerun after a crash resumes training where it stopped.
set -euo pipefail

WORK=${WORK:-work/tiny-lmfusion}
OUT=${OUT:-lmfusion_cli/assets/tiny-lmfusion}
STEPS=${STEPS:-20000}
THREADS=${THREADS:-1}                   # training threads (1: the build runs beside other work)
SAVE_EVERY=${SAVE_EVERY:-2000}
LMFUSION=${LMFUSION:-}
if [[ -z $LMFUSION ]]; then
  if [[ -x .venv/bin/lmfusion ]]; then LMFUSION=.venv/bin/lmfusion; else LMFUSION=lmfusion; fi
fi
PY=${PY:-$(dirname "$(command -v "$LMFUSION")")/python}
[[ -x $PY ]] || PY=python3

# the demo pipeline, longer: prepare, encode-latents, train, sample, evaluate (shapes + text)
# the recipe's one change from tiny.yaml: DiT's fixed 2-D position table under the learned one (issue 23,
# docs/training.md "The shipped longer-trained checkpoint"); EXTRA_TRAIN_ARGS replaces it
EXTRA_TRAIN_ARGS=${EXTRA_TRAIN_ARGS-"--set model.image_position=sincos"}
WORK=$WORK STEPS=$STEPS LMFUSION=$LMFUSION SHIPPED="" \
  EXTRA_TRAIN_ARGS="--set train.threads=$THREADS --set train.save_every=$SAVE_EVERY ${EXTRA_TRAIN_ARGS:-}" \
  bash "$(dirname "${BASH_SOURCE[0]}")/tiny.sh"

# the base and VAE by path relative to the export folder: both ship beside it in lmfusion_cli/assets/
evals=(--eval "$WORK/eval-shapes")
[[ -f $WORK/eval-text/metrics.json ]] && evals+=(--eval "$WORK/eval-text")  # TEXT_EVAL=0 skips it
"$LMFUSION" export "$WORK/run" --out "$OUT" --base-id ../tiny-lm --vae-id ../tiny-vae "${evals[@]}" --overwrite

"$PY" - "$WORK" "$OUT" "$STEPS" "$THREADS" "${EXTRA_TRAIN_ARGS:-}" <<'PYEOF'
import json, pathlib, subprocess, sys, datetime
work, out, steps, threads = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
extra = sys.argv[5].split()
def read(name, suffix):
    p = work / f"{name}.{suffix}"
    return float(p.read_text()) if p.is_file() else None
stages = {n: {"wall_s": read(n, "wall_s"), "cpu_s": read(n, "cpu_s")}
          for n in ("shapes", "latents", "run", "samples", "eval-shapes", "eval-text")}
try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
except (OSError, subprocess.CalledProcessError):
    commit = None
metrics = json.loads((work / "eval-shapes" / "metrics.json").read_text())["shapes"]
record = {
    "what": "pipelines/configs/tiny.yaml + train_args trained on the demo's shapes set (pipelines/tiny_lmfusion.sh)",
    "steps": steps, "train_threads": threads, "train_args": extra, "commit": commit,
    "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "stages": stages,
    "shapes": {d: {"accuracy": metrics[d]["accuracy"], **({"cider": metrics[d]["cider"]} if "cider" in metrics[d] else {})}
               for d in ("generation", "captioning") if d in metrics},
}
(out / "build.json").write_text(json.dumps(record, indent=2) + "\n")
size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
print(f"== {out}: {size / 2**20:.1f} MiB; training {stages['run']['cpu_s']} CPU-s, "
      f"{stages['run']['wall_s']} s wall; build record {out / 'build.json'}")
PYEOF
