"""The model card (`README.md`) of an exported LMFusion model, from what the run recorded.

Everything in it is read from files (the run's config and manifest, the latent cache and data
manifests, `logs/train.jsonl`, `metrics.json` of evaluations found in the run or given with --eval);
nothing is typed in by hand. What is not found is said to be unknown, not guessed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _flat_numbers(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if isinstance(data, dict):
        for key, value in data.items():
            out += _flat_numbers(value, f"{prefix}{key}.")
    elif isinstance(data, bool):
        out.append((prefix.rstrip("."), data))
    elif isinstance(data, (int, float)):
        out.append((prefix.rstrip("."), float(data)))
    return out


def _training_data(run: Path | None, vae: dict[str, Any]) -> list[str]:
    """The card's training-data lines; `vae` is the export's VAE record (the Model section names it)."""
    if run is None:
        return ["Unknown: the export was made from a model folder outside a training run."]
    config = {}
    try:
        config = yaml.safe_load((run / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        pass
    latents = Path(str((config.get("data") or {}).get("latents", "")))
    lines = [f"- latent cache: `{latents}`"]
    manifest = _read_json(latents / "manifest.json") if str(latents) else {}
    if manifest:
        splits = {s["split"]: 0 for s in manifest.get("shards", [])}
        for s in manifest.get("shards", []):
            splits[s["split"]] += int(s.get("count", 0))
        cache_vae = manifest.get("vae") or {}
        same = cache_vae.get("weights_sha256") and cache_vae.get("weights_sha256") == vae.get("weights_sha256")
        lines.append(
            f"- items per split: {', '.join(f'{k} {v}' for k, v in splits.items())}; "
            f"resolution {manifest.get('resolution')} px; "
            + ("the VAE above (same weights)" if same else f"VAE `{cache_vae.get('id')}`")
        )
        data = Path(str((manifest.get("inputs") or {}).get("data", "")))
        prepared = _read_json(data / "manifest.json") if str(data) else {}
        if prepared:
            inputs = prepared.get("inputs") or {}
            lines.append(
                f"- images and captions: source `{inputs.get('source')}`"
                + (f" from `{inputs.get('input')}`" if inputs.get("input") else "")
                + f", prepared into `{data}`"
            )
    mix = config.get("data") or {}
    lines.append(
        f"- task mix: generation fraction {mix.get('generation_fraction')}, caption dropout "
        f"{mix.get('caption_dropout')}"
    )
    return lines


def _training(run: Path | None, step: int | None) -> list[str]:
    lines = [f"- optimizer steps: {step if step is not None else 'unknown'}"]
    if run is None:
        return lines
    try:
        config = yaml.safe_load((run / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    optim, schedule, train = (config.get(k) or {} for k in ("optim", "schedule", "train"))
    lines.append(
        f"- learning rate {optim.get('lr')} (min {schedule.get('min_lr')}, warmup "
        f"{schedule.get('warmup_steps')} of {schedule.get('steps')} steps), global batch "
        f"{train.get('batch_size')}, seed {train.get('seed')}"
    )
    if train.get("init_from"):
        lines.append(
            f"- started from the trainable weights of `{train['init_from']}` (`train.init_from`): the steps above "
            "come after that run's"
        )
    return lines


def _evaluation(run: Path | None, evals: list[Path]) -> list[str]:
    lines: list[str] = []
    if run is not None and (run / "logs" / "train.jsonl").is_file():
        records = [json.loads(x) for x in (run / "logs" / "train.jsonl").read_text().splitlines() if x.strip()]
        val = [r for r in records if r.get("event") == "val"]
        if val:
            last = val[-1]
            figures = ", ".join(f"{k} {v:.4g}" for k, v in sorted(last.items()) if k.startswith("val_"))
            lines.append(f"- validation loss at step {last.get('step')}: {figures}")
    found = sorted(run.rglob("metrics.json")) if run is not None else []
    for path in [*found, *(e / "metrics.json" if e.is_dir() else e for e in evals)]:
        numbers = _flat_numbers(_read_json(path))
        wanted = [
            (k, v)
            for k, v in numbers
            if any(w in k for w in ("accuracy", "cider", "fid", "clip", "chance", "identical"))
        ]
        if wanted:
            lines.append(
                f"- `{path}`: "
                + ", ".join(f"{k} {v}" if isinstance(v, bool) else f"{k} {v:.4g}" for k, v in wanted[:16])
            )
    return lines or ["No evaluation was found in the run; run `lmfusion evaluate` and export with --eval."]


def model_card(model, base: str, checkpoint, meta: dict[str, Any], evals: list[Path]) -> str:
    """The README.md text (YAML front matter for the Hub, then the card)."""
    run, step = checkpoint.run_dir, checkpoint.step
    front = {
        "library_name": "lmfusion",
        "pipeline_tag": "text-to-image",
        "tags": ["lmfusion", "text-to-image", "image-to-text", "multimodal"],
    }
    if not Path(base).is_absolute() and "/" in base and not base.startswith("base/"):
        front["base_model"] = base
    cfg = model.config
    sections = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# LMFusion model on `{base}`",
        "",
        "A frozen text-only language model given image understanding and generation the LMFusion way "
        "(arXiv 2412.15188): parallel image experts in every layer, shared attention, text modules frozen "
        "so text-only prompts give exactly the base model's outputs.",
        "",
        "## Model",
        "",
        f"- base (frozen): `{base}`",
        f"- image experts: {cfg.experts}, patcher {cfg.patcher} (patch {cfg.patch_size}, {cfg.image_position} positions), "
        f"objective {cfg.objective}, "
        f"{cfg.num_image_tokens} image tokens of {cfg.latent_channels}×{cfg.latent_size}×{cfg.latent_size} latents",
        f"- VAE: `{meta['vae']['id']}` (scaling {meta['vae']['scaling_factor']:.6g}, shift "
        f"{meta['vae']['shift_factor']:.6g}), {meta['vae']['image_size']}×{meta['vae']['image_size']} images",
        "",
        "## Training data",
        "",
        *_training_data(run, meta["vae"]),
        "",
        "## Training",
        "",
        *_training(run, step),
        "",
        "## Evaluation",
        "",
        *_evaluation(run, evals),
        "",
        "## Intended use",
        "",
        "Research on adding image generation and understanding to pretrained language models: text-to-image "
        "samples and image captions in the domain of the training data above. Not for generating images of real "
        "people, for decisions about people, or for use outside the training data's domain without evaluation; "
        "the image side inherits the biases of its training captions, the text side those of the base model.",
        "",
        "## How to use",
        "",
        "```python",
        "from lmfusion_cli import LMFusionPipeline",
        "",
        'pipe = LMFusionPipeline.from_pretrained("THIS_FOLDER_OR_REPO")',
        'images = pipe("a red circle on a blue background", num_inference_steps=25, guidance_scale=3).images',
        "captions = pipe.caption(images)",
        "```",
        "",
        'or `lmfusion sample --checkpoint THIS_FOLDER --prompt "..." --out samples`.',
        "",
    ]
    return "\n".join(sections)
