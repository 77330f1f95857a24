"""`run_evaluate(cfg)`: the `lmfusion evaluate` stage — load the checkpoint once, run the suites, write OUT.

Output folder (written in place, so that a rerun resumes; every file is written atomically):

    OUT/metrics.json                    {suite: metrics, checkpoint, step, suites_run, suites_skipped}
    OUT/report.md                       one section per suite: metrics table, plots, image grid + prompts
    OUT/shapes/generations/NNNNN.png    raw generations (kept: a rerun only makes the missing ones)
    OUT/shapes/prompts.jsonl, captions.jsonl, *.png
    OUT/text/per_item_{base,fused}.jsonl, accuracy.png (items.jsonl for --text-items)
    OUT/coco/prompts.jsonl, generations/cfg-<s>/, captions.jsonl, fid_stats/, *.png
    OUT/config.yaml                     the resolved EvaluateConfig
    OUT/manifest.json                   kind "evaluation": inputs, generation settings, counts, file hashes;
                                        "complete": false while running, true at the end

Resuming is safe only with the same generation settings: the manifest records them (checkpoint
weights hash, guidance, steps, sampler, seeds, base/VAE overrides) and a rerun with others is refused
unless `--overwrite` deletes the old evaluation. Every input a suite needs (COCO layout and prompt
count, Inception and CLIP weights — fetched by clean-fid / open_clip when not given —, lm-eval tasks
and their data, text items, a prepared shapes set) is checked before the model loads, so a bad path
fails in seconds with one sentence.

The text suite runs lm-evaluation-harness on the fused model's text path and on its base, loaded as
lm-eval's ordinary `hf` model from the checkpoint's base pointer. The fused model's logits are
restricted to the base vocabulary (the BOI/EOI rows a model may add are not text the base can
write), so for a frozen-text model every request's log-likelihood must be identical. This file owns the orchestration
and the output folder; the inputs are checked in `suite_inputs.py`, each suite is bound to the loaded model in
`suite_runs.py`, the suites themselves (`shapes_suite.py`, `coco_suite.py`, `text_suite.py`), metrics and rendering
are the other modules'."""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from lmfusion_cli.common.atomic import atomic_write_json, atomic_write_text, remove_stale_temps
from lmfusion_cli.common.checkpoint_layout import MODEL_WEIGHTS, recorded_sha256
from lmfusion_cli.common.configs import config_hash, config_to_dict, dump_yaml
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.hashing import sha256_file
from lmfusion_cli.common.manifest import MANIFEST_NAME, SkipLog, file_entry, write_manifest
from lmfusion_cli.common.output_folder import disk_full_error, is_disk_full, output_lock, overwrite_folder, swap_in
from lmfusion_cli.evaluation import report
from lmfusion_cli.evaluation.config import EvaluateConfig
from lmfusion_cli.evaluation.report import Section
from lmfusion_cli.evaluation.suite_inputs import check_inputs
from lmfusion_cli.evaluation.suite_runs import run_coco, run_shapes, run_text

log = logging.getLogger(__name__)

KIND = "evaluation"


# ---- the output folder ---------------------------------------------------------------------------
def _read_raw_manifest(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / MANIFEST_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _prepare_out(out: Path, overwrite: bool) -> dict[str, Any] | None:
    """Make `out` ready; return the previous evaluation's manifest (to resume) or None.

    A non-empty folder that is not an evaluation is never touched; `overwrite` deletes an old evaluation."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder.")
    if not out.is_dir() or not any(out.iterdir()):
        return None
    previous = _read_raw_manifest(out)
    if previous is None or previous.get("kind") != KIND:
        raise UserError(f"Output folder {out} is not empty and holds no lmfusion evaluation; choose another --out.")
    if overwrite:
        log.info("--overwrite: deleting the previous evaluation in %s", out)
        shutil.rmtree(out)
        return None
    remove_stale_temps(out)
    return previous


def _generation_settings(cfg: EvaluateConfig, weights_sha256: str) -> dict[str, Any]:
    """What the raw generations depend on (a rerun may reuse them only when this is unchanged).

    Item and prompt counts are left out: generation i depends only on its own prompt and seed, so a
    rerun with more items extends the set (COCO's prompt file refuses another draw itself)."""
    s = cfg.sampling
    return {
        "weights_sha256": weights_sha256,
        "base": cfg.base,
        "vae": cfg.vae,
        "tokenizer": cfg.tokenizer,
        "cfg_scale": {suite: list(s.scales_for(suite)) for suite in ("shapes", "coco")},
        "steps": s.steps,
        "sampler": s.sampler,
        "shapes": {"seed": cfg.shapes.seed, "data": cfg.shapes.data, "resolution": cfg.shapes.resolution},
        "coco": {"root": cfg.coco.root, "seed": cfg.coco.seed},
    }


def _check_resume(out: Path, previous: dict[str, Any] | None, settings: dict[str, Any]) -> None:
    if previous is None:
        return
    before = previous.get("generation_settings") or {}
    changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
    if changed:
        raise UserError(
            f"{out} holds generations made with other settings ({', '.join(changed)} differ); "
            f"pass --overwrite to redo them or choose another --out."
        )
    log.info("resuming the evaluation in %s (existing generations are kept)", out)


def _weights_sha256(model_dir: Path) -> str:
    """SHA-256 of the checkpoint's weights: from its step manifest when recorded, else hashed now."""
    return recorded_sha256(model_dir, MODEL_WEIGHTS) or sha256_file(model_dir / MODEL_WEIGHTS)


# ---- the stage -------------------------------------------------------------------------------------
def _settings_line(cfg: EvaluateConfig, suites: list[str]) -> str:
    """How the figures below were made: images (sampler, steps, guidance) and captions (decoding)."""
    s = cfg.sampling
    decoding = {
        "greedy": "greedy",
        "beam": f"beam search ({s.num_beams} beams, length penalty {s.length_penalty:g}"
        + (", reranked by the image's likelihood" if s.rerank == "image" else "")
        + ")",
        "top-p": f"top-p {s.top_p:g} at temperature {s.temperature:g}",
    }[s.decoding]
    parts = []
    for suite in ("shapes", "coco"):
        if suite in suites:
            scales = ", ".join(f"{x:g}" for x in s.scales_for(suite))
            parts.append(f"{suite} images: {s.sampler}, {s.steps} steps, guidance {scales}")
    if {"shapes", "coco"} & set(suites):
        parts.append(f"captions: {decoding}, at most {s.max_new_tokens} tokens")
    return "; ".join(parts) + "." if parts else "Text suite only: no images or captions are made."


def _write_results(
    out: Path, cfg: EvaluateConfig, loaded, suites: list[str], results: dict[str, tuple[dict[str, Any], Section]]
) -> dict[str, Any]:
    """metrics.json and report.md (with a note on the suites `all` could not run); returns the metrics."""
    skipped = {"coco": "no --coco-root given"} if cfg.suite == "all" and "coco" not in suites else {}
    metrics = {
        "checkpoint": str(loaded.checkpoint.model_dir),
        "step": loaded.checkpoint.step,
        "suites_run": suites,
        "suites_skipped": skipped,
        **{name: m for name, (m, _) in results.items()},
    }
    sections = [Section("settings", text=_settings_line(cfg, suites))]
    sections += [section for _, section in results.values()]
    if skipped:
        sections.append(
            Section(
                "suites not run",
                text="\n".join(
                    f"- **{name}**: {why}; pass `--coco-root DIR` to run it (clean-fid and open_clip fetch their weights, or pass `--inception` and `--clip-weights`)."
                    for name, why in skipped.items()
                ),
            )
        )
    report.write_metrics(out, metrics)
    title = f"lmfusion evaluation: {loaded.checkpoint.model_dir} (step {loaded.checkpoint.step})"
    report.write_report(out, title, sections)
    return metrics


def run_evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """Run the suites `cfg` asks for and write `cfg.out` (see the module docstring); return the metrics.
    One process at a time per `cfg.out` (issue 17: `output_lock`)."""
    with output_lock(cfg.out, "evaluate"):
        try:
            previous = _read_raw_manifest(Path(cfg.out)) if Path(cfg.out).is_dir() else None
            if cfg.overwrite and previous is not None and previous.get("kind") == KIND:
                return _overwrite_beside(cfg)
            return _run_evaluate(cfg)
        except OSError as e:  # a full disk: its own temp files go, finished generations stay for the rerun
            if not is_disk_full(e):
                raise
            remove_stale_temps(cfg.out)
            for sub in Path(cfg.out).rglob("*"):
                if sub.is_dir():
                    remove_stale_temps(sub)
            raise disk_full_error(
                cfg.out, "evaluate (finished generations are reused)", None, "its finished generations are kept"
            ) from None


def _overwrite_beside(cfg: EvaluateConfig) -> dict[str, Any]:
    """`--overwrite` of a finished evaluation: evaluate into a folder beside it, then swap (issue 17: a
    kill used to leave a half-deleted evaluation)."""
    out = Path(cfg.out)
    work = overwrite_folder(out)
    shutil.rmtree(work, ignore_errors=True)
    metrics = _run_evaluate(replace(cfg, out=str(work), overwrite=False))
    manifest = json.loads((work / MANIFEST_NAME).read_text())
    manifest["config"]["out"] = str(out)  # where the evaluation lives, not where it was built
    atomic_write_json(work / MANIFEST_NAME, manifest)
    swap_in(work, out)
    return metrics


def _run_evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    out = Path(cfg.out)
    suites = cfg.suites()
    from lmfusion_cli.common.devices import resolve_device

    device = resolve_device(cfg.device)
    inputs = check_inputs(cfg, suites, device)
    from lmfusion_cli.sampling.loading import load_for_sampling, resolve_checkpoint  # after the quick checks

    settings = _generation_settings(cfg, _weights_sha256(resolve_checkpoint(cfg.checkpoint).model_dir))
    _check_resume(out, _prepare_out(out, cfg.overwrite), settings)
    loaded = load_for_sampling(cfg.checkpoint, base=cfg.base, tokenizer=cfg.tokenizer, vae=cfg.vae, device=device)
    described = {
        **loaded.describe(),
        "text_tasks": inputs.text.source,
        "shapes_data": cfg.shapes.data,
        "coco_root": cfg.coco.root,
    }
    common = {
        "inputs": described,
        "config": config_to_dict(cfg),
        "config_hash": config_hash(cfg),
        "generation_settings": settings,
    }
    write_manifest(out, KIND, complete=False, **common)  # first: it is what makes a rerun resume, not refuse
    atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    log.info("evaluating %s (step %s): %s", loaded.checkpoint.model_dir, loaded.checkpoint.step, ", ".join(suites))

    results: dict[str, tuple[dict[str, Any], Section]] = {}
    with torch.no_grad():
        for suite in suites:
            if suite == "text":
                results[suite] = run_text(cfg, out, loaded, inputs.text, device)
            elif suite == "shapes":
                results[suite] = run_shapes(cfg, out, loaded, inputs.shapes_items)
            else:
                results[suite] = run_coco(cfg, out, loaded, inputs.coco_scorers)
                inputs.skips.merge(_coco_skips(results[suite][0]))
    metrics = _write_results(out, cfg, loaded, suites, results)
    files = {
        p.relative_to(out).as_posix(): file_entry(p)
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }
    write_manifest(out, KIND, complete=True, files=files, **common, **inputs.skips.to_dict())
    log.info("wrote %s and %s", out / "metrics.json", out / "report.md")
    return metrics


def _coco_skips(metrics: dict[str, Any]) -> SkipLog:
    """The COCO images left out (their counts, as `select_test_images` recorded them)."""
    counts = metrics.get("skipped") or {}
    return SkipLog(kept=counts.get("kept", 0), skipped=Counter(counts.get("skipped", {})))
