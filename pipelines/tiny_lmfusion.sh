#!/usr/bin/env bash
# Builds the shipped longer-trained checkpoint lmfusion_cli/assets/tiny-lmfusion/ (issue 23):
# `pipelines/configs/tiny.yaml` on the demo's own shapes set (pipelines/tiny.sh's prepare and
# encode-latents stages, same items and seed), trained in three cosine cycles instead of the demo's 2,000
# steps, each started from the one before's weights (`train.init_from`: fresh optimiser, warmup and data order):
#   1. STEPS (20,000) at tiny.yaml's rate and mix;
#   2. CYCLE2_STEPS (16,000) at CYCLE2_LR (1e-3), the same mix (CYCLE2_ARGS adds overrides);
#   3. CYCLE3_STEPS (15,000) at CYCLE3_LR (1e-3), generation-heavy: CYCLE3_ARGS
#      (data.generation_fraction 0.7: 49 % of the examples caption → image instead of 21 %).
# A cycle of 0 steps ends the list there. Each cycle is sampled and evaluated like the demo; the last is
# exported with `lmfusion export` (trainable weights only; the base and VAE are the shipped tiny-lm and
# tiny-vae beside it, named by relative path).
#
#   make tiny-lmfusion                          # what this is for (≈ 5.5 CPU-hours: 2.8 h wall on THREADS=2)
#   STEPS=20 CYCLE2_STEPS=10 CYCLE3_STEPS=10 WORK=/tmp/tl OUT=/tmp/tl/out NUM_ITEMS=64 EVAL_ITEMS=8 bash pipelines/tiny_lmfusion.sh   # smoke
#
# The build record (stage wall and CPU seconds, steps, threads, commit; per cycle its steps, rate, overrides,
# times and held-out shapes figures) goes to OUT/build.json. Every stage is skipped when complete, so a rerun
# after a crash resumes training where it stopped.
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
# "The shipped longer-trained checkpoint"); EXTRA_TRAIN_ARGS adds overrides to every cycle
EXTRA_TRAIN_ARGS=${EXTRA_TRAIN_ARGS:-}
CYCLE2_STEPS=${CYCLE2_STEPS:-16000}
CYCLE2_LR=${CYCLE2_LR:-1e-3}
CYCLE2_ARGS=${CYCLE2_ARGS:-}
CYCLE3_STEPS=${CYCLE3_STEPS:-15000}
CYCLE3_LR=${CYCLE3_LR:-1e-3}
CYCLE3_ARGS=${CYCLE3_ARGS---set data.generation_fraction=0.7}
common="--set train.threads=$THREADS --set train.save_every=$SAVE_EVERY ${EXTRA_TRAIN_ARGS:-}"

# the cycles: steps, peak rate ("" = the config's), overrides; the list ends at the first of 0 steps
cycle_steps=("$STEPS") cycle_lr=("") cycle_args=("")
if (( CYCLE2_STEPS > 0 )); then
  cycle_steps+=("$CYCLE2_STEPS") cycle_lr+=("$CYCLE2_LR") cycle_args+=("$CYCLE2_ARGS")
  if (( CYCLE3_STEPS > 0 )); then
    cycle_steps+=("$CYCLE3_STEPS") cycle_lr+=("$CYCLE3_LR") cycle_args+=("$CYCLE3_ARGS")
  fi
fi
n=${#cycle_steps[@]}
# the last cycle in WORK (the export's run), the others in WORK/cycleK (their figures are the build's steps)
cycle_dirs=()
for (( i = 1; i < n; i++ )); do cycle_dirs+=("$WORK/cycle$i"); done
cycle_dirs+=("$WORK")
data=$WORK/shapes latents=$WORK/latents  # every cycle trains on WORK's data and latents
previous=""
for (( i = 0; i < n; i++ )); do
  dir=${cycle_dirs[i]}
  args="$common ${cycle_args[i]}"
  [[ -n ${cycle_lr[i]} ]] && args+=" --set optim.lr=${cycle_lr[i]}"
  [[ -n $previous ]] && args+=" --set train.init_from=$previous"
  WORK=$dir DATA=$data LATENTS=$latents STEPS=${cycle_steps[i]} LMFUSION=$LMFUSION SHIPPED="" \
    TEXT_EVAL=$(( i == n - 1 ? ${TEXT_EVAL:-1} : 0 )) EXTRA_TRAIN_ARGS="$args" bash "$(dirname "${BASH_SOURCE[0]}")/tiny.sh"
  if (( i == 0 && n > 1 )); then  # the shared stages' times, for the build record
    for name in shapes latents; do
      for unit in wall_s cpu_s; do [[ -f $WORK/$name.$unit ]] || cp "$dir/$name.$unit" "$WORK/$name.$unit"; done
    done
  fi
  previous=$dir/run
done

# the base and VAE by path relative to the export folder: both ship beside it in lmfusion_cli/assets/
evals=(--eval "$WORK/eval-shapes")
[[ -f $WORK/eval-text/metrics.json ]] && evals+=(--eval "$WORK/eval-text")  # TEXT_EVAL=0 skips it
"$LMFUSION" export "$WORK/run" --out "$OUT" --base-id ../tiny-lm --vae-id ../tiny-vae "${evals[@]}" --overwrite

# the cycles' folders, steps, rates and overrides follow the fixed arguments, one list after the other
"$PY" - "$WORK" "$OUT" "$THREADS" "${EXTRA_TRAIN_ARGS:-}" \
  "${cycle_dirs[@]}" "${cycle_steps[@]}" "${cycle_lr[@]}" "${cycle_args[@]}" <<'PYEOF'
import json, pathlib, subprocess, sys, datetime
work, out, threads, extra = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split()
lists = sys.argv[5:]
count = len(lists) // 4
dirs, steps, rates, overrides = (lists[j * count:(j + 1) * count] for j in range(4))
cycles = [{"steps": int(s), "lr": float(r) if r else "the config's", "args": a.split()}
          for s, r, a in zip(steps, rates, overrides)]
def read(name, suffix, folder=work):
    p = folder / f"{name}.{suffix}"
    return float(p.read_text()) if p.is_file() else None
def shapes(folder):
    figures = json.loads((folder / "eval-shapes" / "metrics.json").read_text())["shapes"]
    return {d: {"accuracy": figures[d]["accuracy"], **({"cider": figures[d]["cider"]} if "cider" in figures[d] else {})}
            for d in ("generation", "captioning") if d in figures}
stages = {n: {"wall_s": read(n, "wall_s"), "cpu_s": read(n, "cpu_s")}
          for n in ("shapes", "latents", "run", "samples", "eval-shapes", "eval-text")}
if len(cycles) > 1:
    for k, (cycle, folder) in enumerate(zip(cycles, map(pathlib.Path, dirs))):
        cycle["run"] = {"wall_s": read("run", "wall_s", folder), "cpu_s": read("run", "cpu_s", folder)}
        if k:
            cycle["init_from"] = f"cycle {k}"
        if k < len(cycles) - 1:  # the last cycle's figures are the record's own
            cycle["shapes"] = {d: v["accuracy"] for d, v in shapes(folder).items()}
    stages["run"] = {u: None if any(c["run"][u] is None for c in cycles) else sum(c["run"][u] for c in cycles)
                     for u in ("wall_s", "cpu_s")}  # a cycle trained outside the stage has no CPU figure
try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
except (OSError, subprocess.CalledProcessError):
    commit = None
record = {
    "what": "pipelines/configs/tiny.yaml + train_args trained on the demo's shapes set (pipelines/tiny_lmfusion.sh)",
    "steps": sum(c["steps"] for c in cycles), "train_threads": threads, "train_args": extra, "commit": commit,
    "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "stages": stages,
    **({"cycles": cycles} if len(cycles) > 1 else {}),
    "shapes": shapes(work),
}
(out / "build.json").write_text(json.dumps(record, indent=2) + "\n")
size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
print(f"== {out}: {size / 2**20:.1f} MiB; training {stages['run']['cpu_s']} CPU-s, "
      f"{stages['run']['wall_s']} s wall; build record {out / 'build.json'}")
PYEOF
