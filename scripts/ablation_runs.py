"""One run of `pipelines/ablation.sh` (a variant at one seed), read from its files (issues 11, 23).

For WORK/VARIANT/seed-SEED: `run/logs/train.jsonl` (losses, validation, FLOPs, CPU seconds),
`run/manifest.json` (the model switches), `run/config.yaml` (steps, batch, data mix), the final
checkpoint's `model.safetensors` header (how many parameters were trained), `eval-shapes/metrics.json`,
`eval-text/metrics.json` + `eval-text/text/per_item_{base,fused}.jsonl`, and the `*.wall_s` / `*.cpu_s`
files the pipeline's stages write. `metrics(run)` gives the run's figures as one flat dict, the unit the
statistics (scripts/ablation_stats.py) average over seeds. Nothing is trained or evaluated here.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from lmfusion_cli.common.checkpoint_layout import MODEL_WEIGHTS, checkpoints_root, model_dir, step_dir_name  # noqa: E402
from lmfusion_cli.common.errors import UserError  # noqa: E402

# the attributes every shapes caption states (position and size are optional in the templates)
CORE_ATTRIBUTES = ("background", "colour", "shape")
STAGES = ("run", "eval-shapes", "eval-text")


@dataclass
class Run:
    variant: str
    seed: int
    model: dict[str, Any]
    config: dict[str, Any]
    records: list[dict[str, Any]]
    vals: list[dict[str, Any]]
    trained_params: int
    total_flops: float | None
    wall_s: dict[str, float]
    cpu_s: dict[str, float]
    """CPU seconds per stage (train and evaluations, child processes included), from the stages' *.cpu_s."""
    shapes: dict[str, Any]
    text: dict[str, Any]
    text_ppl: dict[str, float]
    """Perplexity per byte of the correct answers: {"base": ..., "fused": ...}."""


def _read(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"{path} is missing; run pipelines/ablation.sh (it makes it) before the report.")
    return path.read_text()


def read_json(path: Path) -> Any:
    return json.loads(_read(path))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in _read(path).splitlines() if line.strip()]


def seconds_file(path: Path) -> float:
    return float(path.read_text()) if path.is_file() else float("nan")


def _trained_params(run: Path, step: int) -> int:
    """Elements in the final checkpoint's weights: the trainable parameters (frozen ones are not stored)."""
    from safetensors import safe_open

    weights = model_dir(checkpoints_root(run) / step_dir_name(step)) / MODEL_WEIGHTS
    if not weights.is_file():
        raise UserError(f"{weights} is missing; the run in {run} did not finish: rerun pipelines/ablation.sh.")
    with safe_open(str(weights), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def _text_items(eval_dir: Path) -> dict[str, dict[str, Any]]:
    """The multiple-choice items the text evaluation used (its config's text.items, else the shipped set)."""
    import yaml

    config = yaml.safe_load((eval_dir / "config.yaml").read_text()) if (eval_dir / "config.yaml").is_file() else {}
    path = (config.get("text") or {}).get("items") or REPO_ROOT / "lmfusion_cli/evaluation/data/tiny_mc.jsonl"
    path = Path(path)
    if path.suffix != ".jsonl" or not path.is_file():
        return {}
    return {str(r.get("id")): r for r in read_jsonl(path)}


def _perplexity_per_byte(per_item: list[dict[str, Any]], items: dict[str, dict[str, Any]]) -> float:
    """exp(−Σ log p(correct answer) / Σ its UTF-8 bytes, the leading space included)."""
    loglik, nbytes = 0.0, 0
    for row in per_item:
        item = items.get(str(row["id"]))
        if item is None:
            continue
        loglik += row["logliks"][row["label"]]
        nbytes += len((" " + item["choices"][row["label"]]).encode("utf-8"))
    return math.exp(-loglik / nbytes) if nbytes else float("nan")


def load_run(work: Path, variant: str, seed: int) -> Run:
    import yaml

    folder = work / variant / f"seed-{seed}"
    run = folder / "run"
    manifest = read_json(run / "manifest.json")
    if not manifest.get("complete"):
        raise UserError(f"The training run {run} is not complete; rerun pipelines/ablation.sh to finish it.")
    records = read_jsonl(run / "logs" / "train.jsonl")
    steps = [r for r in records if "event" not in r]
    flops = [r.get("flops") for r in steps]
    text_dir = folder / "eval-text"
    items = _text_items(text_dir)
    return Run(
        variant=variant,
        seed=seed,
        model=manifest["trains"]["lmfusion_config"],
        config=yaml.safe_load((run / "config.yaml").read_text()),
        records=steps,
        vals=[r for r in records if r.get("event") == "val"],
        trained_params=_trained_params(run, manifest["step"]),
        total_flops=sum(flops) if flops and all(f is not None for f in flops) else None,
        wall_s={s: seconds_file(folder / f"{s}.wall_s") for s in STAGES},
        cpu_s={s: seconds_file(folder / f"{s}.cpu_s") for s in STAGES},
        shapes=read_json(folder / "eval-shapes" / "metrics.json").get("shapes", {}),
        text=read_json(text_dir / "metrics.json").get("text", {}),
        text_ppl={
            who: _perplexity_per_byte(read_jsonl(text_dir / "text" / f"per_item_{who}.jsonl"), items)
            for who in ("base", "fused")
        },
    )


def _mean(values: list[float | None]) -> float:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else float("nan")


def image_examples(run: Run) -> float:
    """Expected image examples seen in training: steps × batch × (1 − the text-only fraction)."""
    c = run.config
    return c["schedule"]["steps"] * c["train"]["batch_size"] * (1.0 - c["data"].get("text_only_fraction", 0.0))


def metrics(run: Run) -> dict[str, float]:
    """The run's figures, one flat dict (NaN where a figure is missing)."""
    nan = float("nan")
    cap = run.shapes.get("captioning", {})
    gen = run.shapes.get("generation", {})
    out: dict[str, float] = {"cider": cap.get("cider", nan)}
    for a in CORE_ATTRIBUTES:
        out[f"caption_{a}"] = cap.get("accuracy", {}).get(a, nan)
        out[f"generation_{a}"] = gen.get("accuracy", {}).get(a, nan)
    out["caption_accuracy"] = _mean([cap.get("accuracy", {}).get(a) for a in CORE_ATTRIBUTES])
    out["generation_accuracy"] = _mean([gen.get("accuracy", {}).get(a) for a in CORE_ATTRIBUTES])
    models = run.text.get("models", {})
    out["text_accuracy"] = models.get("fused", {}).get("accuracy", nan)
    out["text_accuracy_base"] = models.get("base", {}).get("accuracy", nan)
    out["text_identical"] = 1.0 if run.text.get("identical") else 0.0
    out["text_ppl"] = run.text_ppl.get("fused", nan)
    out["text_ppl_base"] = run.text_ppl.get("base", nan)
    out["trained_params"] = float(run.trained_params)
    out["flops"] = nan if run.total_flops is None else float(run.total_flops)
    out["flops_t"] = out["flops"] / 1e12
    out["image_examples"] = image_examples(run)
    out["train_cpu_s"] = run.cpu_s["run"]
    if math.isnan(out["train_cpu_s"]) and run.records:  # a run made before the stages timed CPU
        out["train_cpu_s"] = run.records[-1].get("cpu_s", nan)
    out["job_cpu_s"] = sum(run.cpu_s.values())
    out["job_wall_s"] = sum(run.wall_s.values())
    last_val = run.vals[-1] if run.vals else {}
    out["val_loss"] = last_val.get("val_loss", nan)
    out["val_caption_loss"] = last_val.get("val_caption_loss", nan)
    return out
