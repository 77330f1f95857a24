#!/usr/bin/env bash
# One setting of the shapes demo recipe, trained and scored on held-out items (issue 23's sweep).
#
#   NAME=patch1 STEPS=2000 bash scripts/shape_sweep.sh --set model.patch_size=1
#
# Reuses one prepared shapes set + latent cache (LATENTS, made once by pipelines/tiny.sh's first two
# stages), trains pipelines/configs/tiny.yaml (CONFIG) with the given --set overrides on one thread,
# and runs `lmfusion evaluate --suite shapes` on EVAL_ITEMS held-out items for every kept checkpoint in
# EVAL_AT (steps; default: the last). CPU seconds of training (user + sys) go to OUT/train.cpu_s.
# `scripts/shape_sweep_table.py` turns the OUT folders into the rows of docs/training.md's table.
set -euo pipefail
NAME=${NAME:?set NAME}
SWEEP=${SWEEP:-work/sweep}
LATENTS=${LATENTS:-work/base/latents}
CONFIG=${CONFIG:-pipelines/configs/tiny.yaml}
STEPS=${STEPS:-2000}
EVAL_ITEMS=${EVAL_ITEMS:-100}
EVAL_STEPS=${EVAL_STEPS:-25}
CFG_SCALE=${CFG_SCALE:-3}
EVAL_AT=${EVAL_AT:-$STEPS}
SAVE_EVERY=${SAVE_EVERY:-$STEPS}
LMFUSION=${LMFUSION:-.venv/bin/lmfusion}
OUT=$SWEEP/$NAME
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # this checkout, not the shared editable install
printf '%s\n' "$@" >"$OUT/args.txt"
if [[ ! -s $OUT/train.time ]]; then
  /usr/bin/time -f '%U %S %e' -o "$OUT/train.time" nice -n 5 "$LMFUSION" train --config "$CONFIG" \
    --latents "$LATENTS" --out "$OUT/run" --steps "$STEPS" --save-every "$SAVE_EVERY" \
    --set train.threads=1 --set train.keep_last=20 "$@" >"$OUT/train.log" 2>&1
fi
awk 'END {printf "%.0f\n", $1 + $2}' "$OUT/train.time" >"$OUT/train.cpu_s"
for step in $EVAL_AT; do
  ckpt=$OUT/run/checkpoints/$(printf 'step-%08d' "$step")
  [[ -f $OUT/eval-$step/metrics.json ]] && continue
  nice -n 5 "$LMFUSION" evaluate --suite shapes --checkpoint "$ckpt" --out "$OUT/eval-$step" \
    --num-items "$EVAL_ITEMS" --steps "$EVAL_STEPS" --cfg-scale "$CFG_SCALE" >"$OUT/eval-$step.log" 2>&1
done
echo "done $NAME"
