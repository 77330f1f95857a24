#!/usr/bin/env bash
# The paper's comparison at small scale (issues 11, 23): LMFusion against its baselines, over seeds.
#
#   bash pipelines/ablation.sh      # CPU: 8 variants × 3 seeds, 2 runs side by side (est. ≈ 5 CPU-min per run)
#   SEEDS="0 1 2 3 4" JOBS=2 bash pipelines/ablation.sh            # more seeds (a rerun adds only the new ones)
#   CONFIG=pipelines/configs/small-real.yaml GPUS=8 JOBS=1 STEPS=20000 NUM_ITEMS=100000 \
#     EVAL_ITEMS=1000 EVAL_STEPS=50 bash pipelines/ablation.sh     # a bigger run on a GPU node
#   VARIANTS="lmfusion transfusion" SEEDS="0 1" STEPS=3 NUM_ITEMS=64 EVAL_ITEMS=4 EVAL_STEPS=2 \
#     WORK=/tmp/a RESULTS=/tmp/a/results.md PLOT=/tmp/a/loss.png bash pipelines/ablation.sh   # smoke run
#
# One shapes set (with interleaved documents, DATA_SEED) and one latent cache, shared by every run; then
# per (variant, seed) pair one job: train → evaluate --suite shapes → evaluate --suite text, JOBS jobs side
# by side. Every run uses the same CONFIG, data, steps and batch; `train --seed` (initialisation, data
# order, noise) is the run's seed. The only differences between variants are the switches in
# `variant_sets` below (and the doubled steps of `transfusion-2x`).
# Finally scripts/ablation_report.py writes the tables and claims (RESULTS), the loss curves (PLOT) and the
# figures against training FLOPs (FLOPS_PLOT). Each stage is skipped when its output is complete, so a
# rerun only does what is missing (e.g. a seed added to SEEDS).
set -euo pipefail

# ---- settings (override from the environment) ------------------------------------------------
WORK=${WORK:-work/ablation}             # everything this pipeline writes (besides RESULTS and the plots)
CONFIG=${CONFIG:-pipelines/configs/ablation/tiny.yaml}   # shared training settings of every run
VARIANTS=${VARIANTS:-"lmfusion ffn-only dense unfrozen random-init from-scratch transfusion transfusion-2x"}
SEEDS=${SEEDS:-"0 1 2"}                 # one run per variant and seed (`train --seed`)
NUM_ITEMS=${NUM_ITEMS:-2000}            # shapes items (train/val/test split inside)
DATA_SEED=${DATA_SEED:-0}               # the shapes set's seed: one data set for every run
RESOLUTION=${RESOLUTION:-64}
STEPS=${STEPS:-400}                     # optimizer steps per run (batch: the config's, 16 on CPU)
TEXT_LR=${TEXT_LR:-2e-4}                # `unfrozen`: peak lr of the text modules (0.1 × the config's optim.lr)
# `transfusion`: text-only documents of the tiny LM's corpus make up half the training tokens, the image
# examples mixed as in CONFIG (interleaved 0.2 / 0.9 of them). Measured with scripts/ablation_token_mix.py
# on the tiny config (4,000 samples of each kind; positions = text tokens + BOI/EOI + 64 image tokens):
# a text-only document 27.64, an interleaved example 93.63, a caption-first / image-first example 78.96,
# so an image example 82.22 → t = 82.22 / (82.22 + 27.64) = 0.748 of the examples text-only, interleaved
# 0.2/0.9 × (1 − 0.748) = 0.056. Another CONFIG or base: rerun the script and set these two.
TF_TEXT_ONLY=${TF_TEXT_ONLY:-0.748}
TF_INTERLEAVED=${TF_INTERLEAVED:-0.056}
EVAL_ITEMS=${EVAL_ITEMS:-64}            # held-out shapes prompts/images per run
EVAL_STEPS=${EVAL_STEPS:-20}            # denoising steps per generated image
CFG_SCALE=${CFG_SCALE:-3}
TEXT_ITEMS=${TEXT_ITEMS:-}              # text suite items (JSONL or datasets folder); empty = the shipped set
JOBS=${JOBS:-2}                         # runs side by side (CPU: one thread each)
GPUS=${GPUS:-1}                         # processes per training run (>1: torchrun; then use JOBS=1)
WORKERS=${WORKERS:-2}                   # prepare worker processes
BASE=${BASE:-}                          # base LM folder; empty = the config's (the embedded tiny LM)
VAE=${VAE:-}                            # VAE folder; empty = the shipped tiny VAE
RESULTS=${RESULTS:-docs/results.md}
PLOT=${PLOT:-docs/ablation_loss.png}
FLOPS_PLOT=${FLOPS_PLOT:-$(dirname "$PLOT")/ablation_flops.png}
LMFUSION=${LMFUSION:-}
NOTE=${NOTE:-}                          # a sentence for the results' settings (e.g. how the machine was shared)
# ---------------------------------------------------------------------------------------------

if [[ -z $LMFUSION ]]; then
  if [[ -x .venv/bin/lmfusion ]]; then LMFUSION=.venv/bin/lmfusion; else LMFUSION=lmfusion; fi
fi
PY=${PY:-$(dirname "$(command -v "$LMFUSION")")/python}
[[ -x $PY ]] || PY=python3

# The switches of each variant (LMFusionConfig fields; optim.text_lr and data fractions from training).
# Everything else comes from CONFIG and is the same for all variants.
KNOWN="lmfusion ffn-only dense unfrozen random-init from-scratch transfusion transfusion-2x"
variant_sets() {
  local scratch="model.experts=deep model.freeze_text=false model.image_init=copy model.from_scratch=true"
  case $1 in
    lmfusion)     echo "model.experts=deep model.freeze_text=true model.image_init=copy model.from_scratch=false" ;;
    ffn-only)     echo "model.experts=ffn-only model.freeze_text=true model.image_init=copy model.from_scratch=false" ;;
    dense)        echo "model.experts=none model.freeze_text=false model.image_init=copy model.from_scratch=false" ;;
    unfrozen)     echo "model.experts=deep model.freeze_text=false model.image_init=copy model.from_scratch=false optim.text_lr=$TEXT_LR" ;;
    random-init)  echo "model.experts=deep model.freeze_text=true model.image_init=random model.from_scratch=false" ;;
    from-scratch) echo "$scratch" ;;
    transfusion | transfusion-2x)
      echo "$scratch data.text_only_fraction=$TF_TEXT_ONLY data.interleaved_fraction=$TF_INTERLEAVED" ;;
    *) echo "unknown variant '$1': pick from $KNOWN" >&2; return 2 ;;
  esac
}
variant_steps() {  # optimizer steps of a variant: STEPS, twice that for transfusion-2x
  if [[ $1 == transfusion-2x ]]; then echo $((2 * STEPS)); else echo "$STEPS"; fi
}
read -r -a variant_list <<< "$VARIANTS"
read -r -a seed_list <<< "$SEEDS"
for v in "${variant_list[@]}"; do variant_sets "$v" >/dev/null; done  # refuse a typo before any work
for s in "${seed_list[@]}"; do
  [[ $s =~ ^[0-9]+$ ]] || { echo "error: SEEDS must be whole numbers separated by spaces, got '$s'" >&2; exit 2; }
done
[[ ${#seed_list[@]} -gt 0 ]] || { echo "error: SEEDS is empty; set e.g. SEEDS=\"0 1 2\"" >&2; exit 2; }

# shellcheck source=/dev/null  # pipelines/lib.sh: complete(), stage()
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

run_job() {  # run_job VARIANT SEED: train, evaluate shapes, evaluate text in WORK/VARIANT/seed-SEED
  local v=$1 seed=$2 dir=$WORK/$1/seed-$2
  local sets=() s
  for s in $(variant_sets "$v") log.count_flops=true; do sets+=(--set "$s"); done
  local base_arg=() vae_arg=() text_arg=()
  [[ -n $BASE ]] && base_arg=(--base "$BASE")
  [[ -n $VAE ]] && vae_arg=(--vae "$VAE")
  [[ -n $TEXT_ITEMS ]] && text_arg=(--text-items "$TEXT_ITEMS")
  mkdir -p "$dir"
  stage "train $v seed $seed" "$dir/run" \
    "$LMFUSION" train --config "$CONFIG" --latents "$LATENTS" --out "$dir/run" --seed "$seed" \
    --steps "$(variant_steps "$v")" --resume auto --gpus "$GPUS" "${base_arg[@]}" "${sets[@]}"
  stage "evaluate shapes $v seed $seed" "$dir/eval-shapes" \
    "$LMFUSION" evaluate --suite shapes --checkpoint "$dir/run" --out "$dir/eval-shapes" \
    --num-items "$EVAL_ITEMS" --steps "$EVAL_STEPS" --cfg-scale "$CFG_SCALE" "${vae_arg[@]}"
  stage "evaluate text $v seed $seed" "$dir/eval-text" \
    "$LMFUSION" evaluate --suite text --checkpoint "$dir/run" --out "$dir/eval-text" "${vae_arg[@]}" "${text_arg[@]}"
}

DATA=$WORK/shapes
LATENTS=$WORK/latents
mkdir -p "$WORK" "$(dirname "$RESULTS")" "$(dirname "$PLOT")" "$(dirname "$FLOPS_PLOT")"
t_start=$SECONDS
vae_arg=()
[[ -n $VAE ]] && vae_arg=(--vae "$VAE")

stage prepare "$DATA" \
  "$LMFUSION" prepare --source shapes --interleaved --out "$DATA" --num-items "$NUM_ITEMS" --seed "$DATA_SEED" \
  --resolution "$RESOLUTION" --workers "$WORKERS"
# a WORK made before issue 23 holds a shapes set without documents: the interleaved share would silently fall
# back to caption/image examples
"$PY" - "$DATA/manifest.json" <<'PYEOF' || exit 2
import json, sys
if not json.load(open(sys.argv[1])).get("config", {}).get("interleaved"):
    sys.exit(f"error: {sys.argv[1].rsplit('/', 1)[0]} was prepared without --interleaved (an older WORK); "
             "delete it and its latents (WORK/shapes, WORK/latents) or pick a new WORK")
PYEOF
stage encode-latents "$LATENTS" \
  "$LMFUSION" encode-latents --data "$DATA" --out "$LATENTS" --workers "$WORKERS" "${vae_arg[@]}"

# JOBS runs at a time; on CPU each process gets one thread (torch's own setting is 2 per process)
[[ $JOBS -gt 1 ]] && export OMP_NUM_THREADS=1
t_jobs=$SECONDS
jobs_list=()
for v in "${variant_list[@]}"; do
  for seed in "${seed_list[@]}"; do
    jobs_list+=("$v:$seed")
    while [[ $(jobs -rp | wc -l) -ge $JOBS ]]; do wait -n || true; done
    echo "== $v seed $seed (log: $WORK/$v-seed$seed.log)"
    rm -f "$WORK/$v-seed$seed.rc"
    { run_job "$v" "$seed" > "$WORK/$v-seed$seed.log" 2>&1; echo 0 > "$WORK/$v-seed$seed.rc"; } &
  done
done
wait
failed=()
for job in "${jobs_list[@]}"; do
  v=${job%%:*} seed=${job##*:}
  if [[ ! -f $WORK/$v-seed$seed.rc ]]; then
    failed+=("$v seed $seed")
    echo "== $v seed $seed FAILED; the end of $WORK/$v-seed$seed.log:" >&2
    tail -n 15 "$WORK/$v-seed$seed.log" >&2
  fi
done
echo "== ${#jobs_list[@]} runs done in $((SECONDS - t_jobs)) s"
# elapsed seconds of this invocation (data + runs; a rerun that skips everything adds little)
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $((SECONDS - t_start))" >> "$WORK/invocations.wall_s"
if [[ ${#failed[@]} -gt 0 ]]; then
  printf 'failed runs: %s\n' "$(IFS=,; echo "${failed[*]}")" >&2
  exit 1
fi

"$PY" scripts/ablation_report.py --work "$WORK" --variants "${variant_list[@]}" --seeds "${seed_list[@]}" \
  --results "$RESULTS" --plot "$PLOT" --flops-plot "$FLOPS_PLOT" \
  --setting "steps=$STEPS (transfusion-2x: $((2 * STEPS)))" --setting "seeds=${seed_list[*]}" \
  --setting "shapes items=$NUM_ITEMS (data seed $DATA_SEED)" --setting "eval items=$EVAL_ITEMS" \
  --setting "denoising steps=$EVAL_STEPS" --setting "cfg scale=$CFG_SCALE" --setting "jobs side by side=$JOBS" \
  --setting "text_lr (unfrozen)=$TEXT_LR" \
  --setting "text-only / interleaved fraction (transfusion)=$TF_TEXT_ONLY / $TF_INTERLEAVED" \
  --setting "config=$CONFIG" ${NOTE:+--note "$NOTE"}
