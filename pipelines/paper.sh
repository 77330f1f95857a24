#!/usr/bin/env bash
# The paper's recipe (LMFusion, arXiv 2412.15188): Llama-3 8B, 256×256 images, 8 GPUs per node.
# Run the same command on every node (NODE_RANK differs), or under SLURM (srun picks it up).
#
#   NODES=4 RDZV=head-node:29500 BASE=/models/Meta-Llama-3-8B bash pipelines/paper.sh
#   bash pipelines/paper.sh --dry-run      # print the commands with the resolved settings, run nothing
set -euo pipefail

# ---- settings (override from the environment) ------------------------------------------------
BASE=${BASE:-meta-llama/Meta-Llama-3-8B}
VAE=${VAE:-stabilityai/sd-vae-ft-mse}
CONFIG=${CONFIG:-pipelines/configs/paper-llama3-8b.yaml}
DATA_SOURCE=${DATA_SOURCE:-jsonl}                  # your licensed image–caption pairs: jsonl | folder | hf-disk
DATA_INPUT=${DATA_INPUT:-data/pairs.jsonl}
WORK=${WORK:-work/paper}
RESOLUTION=${RESOLUTION:-256}
GPUS=${GPUS:-8}
NODES=${NODES:-1}
RDZV=${RDZV:-localhost:29500}                      # rendezvous HOST:PORT shared by all nodes
WORKERS=${WORKERS:-16}
LMFUSION=${LMFUSION:-lmfusion}
# ---------------------------------------------------------------------------------------------

DRY_RUN=0
for arg in "$@"; do
  case $arg in
    --dry-run) DRY_RUN=1 ;;
    *) echo "paper.sh: unknown argument '$arg' (only --dry-run is accepted; settings come from the environment)" >&2; exit 2 ;;
  esac
done

run() {
  printf '+'; printf ' %q' "$@"; printf '\n'
  if ((DRY_RUN == 0)); then "$@"; fi
}

echo "# paper.sh: BASE=$BASE GPUS=$GPUS NODES=$NODES RDZV=$RDZV RESOLUTION=$RESOLUTION WORK=$WORK"
run "$LMFUSION" prepare --source "$DATA_SOURCE" --input "$DATA_INPUT" --out "$WORK/shards" \
  --resolution "$RESOLUTION" --workers "$WORKERS"
run "$LMFUSION" encode-latents --data "$WORK/shards" --vae "$VAE" --out "$WORK/latents" \
  --resolution "$RESOLUTION" --gpus "$GPUS" --workers "$WORKERS"
run "$LMFUSION" train --config "$CONFIG" --base "$BASE" --latents "$WORK/latents" --out "$WORK/run" \
  --gpus "$GPUS" --nodes "$NODES" --set "dist.rdzv_endpoint=$RDZV" --resume auto
run "$LMFUSION" evaluate --suite text --checkpoint "$WORK/run" --out "$WORK/eval-text"
