#!/usr/bin/env bash
# Builds the shipped longer-trained checkpoint lmfusion_cli/assets/tiny-lmfusion/ (issue 23):
# `pipelines/configs/tiny.yaml` on the demo's own shapes set (pipelines/tiny.sh's prepare and
# encode-latents stages, same items and seed), trained in two cosine cycles instead of the demo's 2,000
# steps: STEPS (20,000) at tiny.yaml's rate, then CYCLE2_STEPS (16,000) more at CYCLE2_LR (1e-3) started
# from the first cycle's weights (`train.init_from`); each cycle is sampled and evaluated like the demo, the
# second is exported with `lmfusion export` (trainable weights only; the base and VAE are the shipped
# tiny-lm and tiny-vae beside it, named by relative path).
#
#   make tiny-lmfusion                          # what this is for (≈ 3 CPU-hours on one thread)
#   STEPS=20 CYCLE2_STEPS=10 WORK=/tmp/tl OUT=/tmp/tl/out NUM_ITEMS=64 EVAL_ITEMS=8 bash pipelines/tiny_lmfusion.sh   # smoke
#
# The build record (stage wall and CPU seconds, steps, threads, commit; per cycle with two) goes to
# OUT/build.json. Every stage is skipped when complete, so a rerun after a crash resumes training where it
# stopped.
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
# the recipe is tiny.yaml's (DiT's fixed 2-D position table since the thirteenth session; docs/training.md
# "The shipped longer-trained checkpoint"); EXTRA_TRAIN_ARGS adds overrides
EXTRA_TRAIN_ARGS=${EXTRA_TRAIN_ARGS:-}
# an optional second cosine cycle: CYCLE2_STEPS more steps at peak rate CYCLE2_LR, started from the first
# cycle's weights (`train.init_from`: fresh optimiser, warmup and data order); 0 = one cycle
CYCLE2_STEPS=${CYCLE2_STEPS:-16000}
CYCLE2_LR=${CYCLE2_LR:-1e-3}
common="--set train.threads=$THREADS --set train.save_every=$SAVE_EVERY ${EXTRA_TRAIN_ARGS:-}"
if (( CYCLE2_STEPS > 0 )); then
  # cycle 1 in WORK/cycle1 (its grid and shapes figures are the build's midpoint), on WORK's data and latents
  data=$WORK/shapes latents=$WORK/latents  # (prefix assignments expand in order: name them first)
  WORK=$WORK/cycle1 DATA=$data LATENTS=$latents STEPS=$STEPS LMFUSION=$LMFUSION SHIPPED="" TEXT_EVAL=0 \
    EXTRA_TRAIN_ARGS="$common" bash "$(dirname "${BASH_SOURCE[0]}")/tiny.sh"
  for name in shapes latents; do  # the shared stages' times, for the build record
    for unit in wall_s cpu_s; do [[ -f $WORK/$name.$unit ]] || cp "$WORK/cycle1/$name.$unit" "$WORK/$name.$unit"; done
  done
  cycle1_run=$WORK/cycle1/run
  WORK=$WORK STEPS=$CYCLE2_STEPS LMFUSION=$LMFUSION SHIPPED="" \
    EXTRA_TRAIN_ARGS="$common --set train.init_from=$cycle1_run --set optim.lr=$CYCLE2_LR" \
    bash "$(dirname "${BASH_SOURCE[0]}")/tiny.sh"
else
  WORK=$WORK STEPS=$STEPS LMFUSION=$LMFUSION SHIPPED="" EXTRA_TRAIN_ARGS="$common" \
    bash "$(dirname "${BASH_SOURCE[0]}")/tiny.sh"
fi

# the base and VAE by path relative to the export folder: both ship beside it in lmfusion_cli/assets/
evals=(--eval "$WORK/eval-shapes")
[[ -f $WORK/eval-text/metrics.json ]] && evals+=(--eval "$WORK/eval-text")  # TEXT_EVAL=0 skips it
"$LMFUSION" export "$WORK/run" --out "$OUT" --base-id ../tiny-lm --vae-id ../tiny-vae "${evals[@]}" --overwrite

"$PY" - "$WORK" "$OUT" "$STEPS" "$THREADS" "${EXTRA_TRAIN_ARGS:-}" "$CYCLE2_STEPS" "$CYCLE2_LR" <<'PYEOF'
import json, pathlib, subprocess, sys, datetime
work, out, steps, threads = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
extra, cycle2_steps, cycle2_lr = sys.argv[5].split(), int(sys.argv[6]), float(sys.argv[7])
def read(name, suffix, folder=work):
    p = folder / f"{name}.{suffix}"
    return float(p.read_text()) if p.is_file() else None
stages = {n: {"wall_s": read(n, "wall_s"), "cpu_s": read(n, "cpu_s")}
          for n in ("shapes", "latents", "run", "samples", "eval-shapes", "eval-text")}
cycles = None
if cycle2_steps:
    first = work / "cycle1"
    cycle1 = json.loads((first / "eval-shapes" / "metrics.json").read_text())["shapes"]
    cycles = [
        {"steps": steps, "lr": "the config's", "run": {"wall_s": read("run", "wall_s", first), "cpu_s": read("run", "cpu_s", first)},
         "shapes": {d: cycle1[d]["accuracy"] for d in ("generation", "captioning") if d in cycle1}},
        {"steps": cycle2_steps, "lr": cycle2_lr, "init_from": "cycle 1", "run": stages["run"]},
    ]
    stages["run"] = {u: None if any(c["run"][u] is None for c in cycles) else sum(c["run"][u] for c in cycles)
                     for u in ("wall_s", "cpu_s")}  # a cycle trained outside the stage has no CPU figure
    steps += cycle2_steps
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
    **({"cycles": cycles} if cycles else {}),
    "shapes": {d: {"accuracy": metrics[d]["accuracy"], **({"cider": metrics[d]["cider"]} if "cider" in metrics[d] else {})}
               for d in ("generation", "captioning") if d in metrics},
}
(out / "build.json").write_text(json.dumps(record, indent=2) + "\n")
size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
print(f"== {out}: {size / 2**20:.1f} MiB; training {stages['run']['cpu_s']} CPU-s, "
      f"{stages['run']['wall_s']} s wall; build record {out / 'build.json'}")
PYEOF
