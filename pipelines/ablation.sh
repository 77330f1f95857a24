#!/usr/bin/env bash
# The paper's comparison at small scale (issue 11): LMFusion against its baselines, one table.
#
#   bash pipelines/ablation.sh                                    # CPU: all six variants, ≤ 60 min on 2 cores
#   CONFIG=pipelines/configs/small-real.yaml GPUS=8 JOBS=1 STEPS=20000 NUM_ITEMS=100000 \
#     EVAL_ITEMS=1000 EVAL_STEPS=50 bash pipelines/ablation.sh     # a bigger run on a GPU node
#   VARIANTS="lmfusion dense" STEPS=3 NUM_ITEMS=64 WORK=/tmp/a bash pipelines/ablation.sh   # smoke run
#
# One shapes set and one latent cache; then, per variant, train → evaluate --suite shapes →
# evaluate --suite text, every variant with the same CONFIG, data, seed, steps and batch: the only
# differences are the model switches in `variant_sets` below (and optim.text_lr for `unfrozen`).
# Finally scripts/ablation_report.py writes the table (RESULTS) and the loss curves (PLOT).
# Each stage is skipped when its output is complete, so a rerun only does what is missing.
set -euo pipefail

# ---- settings (override from the environment) ------------------------------------------------
WORK=${WORK:-work/ablation}             # everything this pipeline writes (besides RESULTS and PLOT)
CONFIG=${CONFIG:-pipelines/configs/ablation/tiny.yaml}   # shared training settings of every variant
VARIANTS=${VARIANTS:-"lmfusion ffn-only dense unfrozen random-init from-scratch"}
NUM_ITEMS=${NUM_ITEMS:-2000}            # shapes items (train/val/test split inside)
SEED=${SEED:-0}                         # data, initialisation, data order and noise: the same for all
RESOLUTION=${RESOLUTION:-64}
STEPS=${STEPS:-400}                     # optimizer steps per variant (batch: the config's, 16 on CPU)
TEXT_LR=${TEXT_LR:-1e-4}                # `unfrozen`: peak lr of the text modules (optim.lr is 1e-3 on CPU)
EVAL_ITEMS=${EVAL_ITEMS:-64}            # held-out shapes prompts/images per variant
EVAL_STEPS=${EVAL_STEPS:-20}            # denoising steps per generated image
CFG_SCALE=${CFG_SCALE:-3}
TEXT_ITEMS=${TEXT_ITEMS:-}              # text suite items (JSONL or datasets folder); empty = the shipped set
JOBS=${JOBS:-2}                         # variants run side by side (CPU: one thread each)
GPUS=${GPUS:-1}                         # processes per training run (>1: torchrun; then use JOBS=1)
WORKERS=${WORKERS:-2}                   # prepare worker processes
BASE=${BASE:-}                          # base LM folder; empty = the config's (the embedded tiny LM)
VAE=${VAE:-}                            # VAE folder; empty = the shipped tiny VAE
RESULTS=${RESULTS:-docs/results.md}
PLOT=${PLOT:-docs/ablation_loss.png}
LMFUSION=${LMFUSION:-}
NOTE=${NOTE:-}                          # a sentence for the results' settings (e.g. how the machine was shared)
# ---------------------------------------------------------------------------------------------

if [[ -z $LMFUSION ]]; then
  if [[ -x .venv/bin/lmfusion ]]; then LMFUSION=.venv/bin/lmfusion; else LMFUSION=lmfusion; fi
fi
PY=${PY:-$(dirname "$(command -v "$LMFUSION")")/python}
[[ -x $PY ]] || PY=python3

# The model switches of each variant (LMFusionConfig fields; optim.text_lr from training). Everything
# else comes from CONFIG and is the same for all variants.
variant_sets() {
  case $1 in
    lmfusion)     echo "model.experts=deep model.freeze_text=true model.image_init=copy model.from_scratch=false" ;;
    ffn-only)     echo "model.experts=ffn-only model.freeze_text=true model.image_init=copy model.from_scratch=false" ;;
    dense)        echo "model.experts=none model.freeze_text=false model.image_init=copy model.from_scratch=false" ;;
    unfrozen)     echo "model.experts=deep model.freeze_text=false model.image_init=copy model.from_scratch=false optim.text_lr=$TEXT_LR" ;;
    random-init)  echo "model.experts=deep model.freeze_text=true model.image_init=random model.from_scratch=false" ;;
    from-scratch) echo "model.experts=deep model.freeze_text=false model.image_init=copy model.from_scratch=true" ;;
    *) echo "unknown variant '$1': pick from lmfusion ffn-only dense unfrozen random-init from-scratch" >&2; return 2 ;;
  esac
}
read -r -a variant_list <<< "$VARIANTS"
for v in "${variant_list[@]}"; do variant_sets "$v" >/dev/null; done  # refuse a typo before any work

# shellcheck source=/dev/null  # pipelines/lib.sh: complete(), stage()
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

run_variant() {  # run_variant NAME: train, evaluate shapes, evaluate text (log in WORK/NAME.log)
  local v=$1 dir=$WORK/$1
  local sets=() s
  for s in $(variant_sets "$v") log.count_flops=true; do sets+=(--set "$s"); done
  local base_arg=() vae_arg=() text_arg=()
  [[ -n $BASE ]] && base_arg=(--base "$BASE")
  [[ -n $VAE ]] && vae_arg=(--vae "$VAE")
  [[ -n $TEXT_ITEMS ]] && text_arg=(--text-items "$TEXT_ITEMS")
  mkdir -p "$dir"
  stage "train $v" "$dir/run" \
    "$LMFUSION" train --config "$CONFIG" --latents "$LATENTS" --out "$dir/run" --seed "$SEED" --steps "$STEPS" \
    --resume auto --gpus "$GPUS" "${base_arg[@]}" "${sets[@]}"
  stage "evaluate shapes $v" "$dir/eval-shapes" \
    "$LMFUSION" evaluate --suite shapes --checkpoint "$dir/run" --out "$dir/eval-shapes" \
    --num-items "$EVAL_ITEMS" --steps "$EVAL_STEPS" --cfg-scale "$CFG_SCALE" "${vae_arg[@]}"
  stage "evaluate text $v" "$dir/eval-text" \
    "$LMFUSION" evaluate --suite text --checkpoint "$dir/run" --out "$dir/eval-text" "${vae_arg[@]}" "${text_arg[@]}"
}

DATA=$WORK/shapes
LATENTS=$WORK/latents
mkdir -p "$WORK" "$(dirname "$RESULTS")" "$(dirname "$PLOT")"
vae_arg=()
[[ -n $VAE ]] && vae_arg=(--vae "$VAE")

stage prepare "$DATA" \
  "$LMFUSION" prepare --source shapes --out "$DATA" --num-items "$NUM_ITEMS" --seed "$SEED" \
  --resolution "$RESOLUTION" --workers "$WORKERS"
stage encode-latents "$LATENTS" \
  "$LMFUSION" encode-latents --data "$DATA" --out "$LATENTS" --workers "$WORKERS" "${vae_arg[@]}"

# JOBS variants at a time; on CPU each process gets one thread (torch's own setting is 2 per process)
[[ $JOBS -gt 1 ]] && export OMP_NUM_THREADS=1
t_all=$SECONDS
for v in "${variant_list[@]}"; do
  while [[ $(jobs -rp | wc -l) -ge $JOBS ]]; do wait -n || true; done
  echo "== variant $v (log: $WORK/$v.log)"
  rm -f "$WORK/$v.rc"
  { run_variant "$v" > "$WORK/$v.log" 2>&1; echo 0 > "$WORK/$v.rc"; } &
done
wait
failed=()
for v in "${variant_list[@]}"; do
  if [[ ! -f $WORK/$v.rc ]]; then
    failed+=("$v")
    echo "== variant $v FAILED; the end of $WORK/$v.log:" >&2
    tail -n 15 "$WORK/$v.log" >&2
  fi
done
echo "== variants done in $((SECONDS - t_all)) s"
[[ ${#failed[@]} -eq 0 ]] || { echo "failed variants: ${failed[*]}" >&2; exit 1; }

"$PY" scripts/ablation_report.py --work "$WORK" --variants "${variant_list[@]}" --results "$RESULTS" --plot "$PLOT" \
  --setting "steps=$STEPS" --setting "shapes items=$NUM_ITEMS" --setting "seed=$SEED" \
  --setting "eval items=$EVAL_ITEMS" --setting "denoising steps=$EVAL_STEPS" --setting "cfg scale=$CFG_SCALE" \
  --setting "text_lr (unfrozen)=$TEXT_LR" --setting "config=$CONFIG" \
  ${NOTE:+--note "$NOTE"}
