#!/usr/bin/env bash
# A real run: COCO 2014 (Karpathy split) from a local root, a Llama-3.2-1B-class base, N GPUs.
#
#   COCO_ROOT=/data/coco KARPATHY=/data/coco/dataset_coco.json BASE=/models/Llama-3.2-1B \
#     INCEPTION=/weights/inception-2015-12-05.pt CLIP_WEIGHTS=/weights/open_clip_vit_b32.bin \
#     bash pipelines/coco.sh
#   bash pipelines/coco.sh --dry-run      # print the commands with the resolved settings, run nothing
set -euo pipefail

# ---- settings (override from the environment) ------------------------------------------------
COCO_ROOT=${COCO_ROOT:-data/coco}                          # annotations/captions_train2014.json, train2014/, val2014/
KARPATHY=${KARPATHY:-$COCO_ROOT/dataset_coco.json}         # Karpathy split file
BASE=${BASE:-meta-llama/Llama-3.2-1B}                      # local folder or hub id of the base LM
VAE=${VAE:-stabilityai/sd-vae-ft-mse}                      # local folder or hub id of the AutoencoderKL
CONFIG=${CONFIG:-pipelines/configs/coco-llama3-1b.yaml}
WORK=${WORK:-work/coco}
RESOLUTION=${RESOLUTION:-256}
GPUS=${GPUS:-$( (command -v nvidia-smi >/dev/null && nvidia-smi -L | wc -l) || echo 1)}
NODES=${NODES:-1}
WORKERS=${WORKERS:-8}
STEPS=${STEPS:-}                                           # empty: the config's schedule.steps
NUM_PROMPTS=${NUM_PROMPTS:-30000}                          # caption prompts for FID / CLIP score
INCEPTION=${INCEPTION:-weights/inception-2015-12-05.pt}    # clean-fid's Inception (TorchScript)
CLIP_ARCH=${CLIP_ARCH:-ViT-B-32}
CLIP_WEIGHTS=${CLIP_WEIGHTS:-weights/open_clip_vit_b32.bin}
LMFUSION=${LMFUSION:-lmfusion}
# ---------------------------------------------------------------------------------------------

DRY_RUN=0
for arg in "$@"; do
  case $arg in
    --dry-run) DRY_RUN=1 ;;
    *) echo "coco.sh: unknown argument '$arg' (only --dry-run is accepted; settings come from the environment)" >&2; exit 2 ;;
  esac
done

run() {  # print the command; run it unless --dry-run
  printf '+'; printf ' %q' "$@"; printf '\n'
  if ((DRY_RUN == 0)); then "$@"; fi
}

echo "# coco.sh: COCO_ROOT=$COCO_ROOT BASE=$BASE VAE=$VAE GPUS=$GPUS NODES=$NODES RESOLUTION=$RESOLUTION WORK=$WORK"
steps_arg=()
[[ -n $STEPS ]] && steps_arg=(--steps "$STEPS")

run "$LMFUSION" prepare --source coco --coco-root "$COCO_ROOT" --karpathy-split "$KARPATHY" \
  --out "$WORK/shards" --resolution "$RESOLUTION" --workers "$WORKERS"
run "$LMFUSION" encode-latents --data "$WORK/shards" --vae "$VAE" --out "$WORK/latents" \
  --resolution "$RESOLUTION" --gpus "$GPUS" --workers "$WORKERS" --dtype fp16
run "$LMFUSION" train --config "$CONFIG" --base "$BASE" --latents "$WORK/latents" --out "$WORK/run" \
  --gpus "$GPUS" --nodes "$NODES" --resume auto "${steps_arg[@]}"
run "$LMFUSION" evaluate --suite coco --checkpoint "$WORK/run" --out "$WORK/eval-coco" \
  --coco-root "$COCO_ROOT" --karpathy-split "$KARPATHY" --num-prompts "$NUM_PROMPTS" \
  --inception "$INCEPTION" --clip-arch "$CLIP_ARCH" --clip-weights "$CLIP_WEIGHTS"
run "$LMFUSION" evaluate --suite text --checkpoint "$WORK/run" --out "$WORK/eval-text"
