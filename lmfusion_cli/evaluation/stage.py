"""`run_evaluate(cfg)`: the `lmfusion evaluate` stage — load the checkpoint once, run the suites, write OUT.

Output folder (written in place, so that a rerun resumes; every file is written atomically):

    OUT/metrics.json                    {suite: metrics, checkpoint, step, suites_run, suites_skipped}
    OUT/report.md                       one section per suite: metrics table, plots, image grid + prompts
    OUT/shapes/generations/NNNNN.png    raw generations (kept: a rerun only makes the missing ones)
    OUT/shapes/prompts.jsonl, captions.jsonl, *.png
    OUT/text/per_item_{base,fused}.jsonl, accuracy.png
    OUT/coco/prompts.jsonl, generations/, reference/, captions.jsonl, fid_stats/, *.png
    OUT/config.yaml                     the resolved EvaluateConfig
    OUT/manifest.json                   kind "evaluation": inputs, generation settings, counts, file hashes;
                                        "complete": false while running, true at the end

Resuming is safe only with the same generation settings: the manifest records them (checkpoint
weights hash, guidance, steps, sampler, seeds, base/VAE overrides) and a rerun with others is refused
unless `--overwrite` deletes the old evaluation. Every input a suite needs (COCO layout, Inception
and CLIP weights, text items, a prepared shapes set) is checked before the model loads, so a bad
path fails in seconds with one sentence.

The text suite scores the fused model and its base LM, loaded separately with plain `transformers`
from the checkpoint's base pointer. The fused model's logits are restricted to the base vocabulary
(the BOI/EOI rows a model may add are not text the base can write), so for a frozen-text model the
per-item log-likelihoods must be identical. This file owns the orchestration; the suites
(`suites.py`, `coco_suite.py`), metrics and rendering are the other modules'."""

from __future__ import annotations

import gc
import io
import json
import logging
import shutil
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from lmfusion_cli.common.atomic import atomic_write_json, atomic_write_text, remove_stale_temps
from lmfusion_cli.common.configs import config_hash, config_to_dict, dump_yaml
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.hashing import sha256_file
from lmfusion_cli.common.manifest import MANIFEST_NAME, SkipLog, file_entry, write_manifest
from lmfusion_cli.common.output_folder import disk_full_error, is_disk_full, output_lock, overwrite_folder, swap_in
from lmfusion_cli.evaluation.config import EvaluateConfig
from lmfusion_cli.evaluation import report
from lmfusion_cli.evaluation.report import Section

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
    return {"weights_sha256": weights_sha256, "base": cfg.base, "vae": cfg.vae, "tokenizer": cfg.tokenizer,
            "cfg_scale": s.cfg_scale, "steps": s.steps, "sampler": s.sampler,
            "shapes": {"seed": cfg.shapes.seed, "data": cfg.shapes.data, "resolution": cfg.shapes.resolution},
            "coco": {"root": cfg.coco.root, "seed": cfg.coco.seed}}


def _check_resume(out: Path, previous: dict[str, Any] | None, settings: dict[str, Any]) -> None:
    if previous is None:
        return
    before = previous.get("generation_settings") or {}
    changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
    if changed:
        raise UserError(f"{out} holds generations made with other settings ({', '.join(changed)} differ); "
                        f"pass --overwrite to redo them or choose another --out.")
    log.info("resuming the evaluation in %s (existing generations are kept)", out)


def _weights_sha256(model_dir: Path) -> str:
    """SHA-256 of the checkpoint's weights: from its step manifest when recorded, else hashed now."""
    step_manifest = _read_raw_manifest(model_dir.parent) or {}
    recorded = (step_manifest.get("files") or {}).get(f"{model_dir.name}/model.safetensors", {}).get("sha256")
    return recorded or sha256_file(model_dir / "model.safetensors")


# ---- inputs checked before anything loads ----------------------------------------------------------
def _text_items(cfg: EvaluateConfig) -> tuple[list, SkipLog, str]:
    from lmfusion_cli.evaluation.text_data import TINY_MC_PATH
    from lmfusion_cli.evaluation.text_suite import load_hf_disk, load_jsonl

    path = Path(cfg.text.items) if cfg.text.items else TINY_MC_PATH
    if path.is_dir():
        items, skips = load_hf_disk(path, cfg.text.fields, cfg.text.split)
    else:
        items, skips = load_jsonl(path, cfg.text.fields)
    return items, skips, str(path)


def shapes_test_items(folder: str | Path) -> tuple[list, SkipLog]:
    """The test split of a prepared shapes set (`lmfusion prepare --source shapes`) as `ShapesItem`s.

    Samples without shapes attributes or with an unreadable image are skipped and counted."""
    from lmfusion_cli.common.manifest import read_manifest
    from lmfusion_cli.data.shapes import ShapesItem
    from lmfusion_cli.data.shards import iter_samples

    folder = Path(folder)
    manifest = read_manifest(folder, "shards", what="shapes data")
    if (manifest.get("inputs") or {}).get("source") != "shapes":
        raise UserError(f"{folder} was prepared from '{(manifest.get('inputs') or {}).get('source')}', not shapes; "
                        f"pass a folder made by `lmfusion prepare --source shapes`.")
    items, skips = [], SkipLog()
    for shard in manifest.get("shards", []):
        if shard.get("split") != "test":
            continue
        for sample in iter_samples(folder / shard["name"], skips):
            attributes = (sample["meta"] or {}).get("attributes")
            if not attributes:
                skips.skip(sample["key"], "no-shapes-attributes")
                continue
            try:
                with Image.open(io.BytesIO(sample["image"])) as im:
                    image = im.convert("RGB")
            except OSError as e:
                skips.skip(sample["key"], "unreadable-image", str(e))
                continue
            items.append(ShapesItem(key=sample["key"], image=image, caption=sample["caption"], attributes=attributes))
            skips.keep()
    if not items:
        raise UserError(f"{folder} has no usable test items ({skips.summary()}); prepare it with a test_fraction > 0.")
    return items, skips


def _coco_scorers(cfg: EvaluateConfig, device: str) -> tuple[Any, str, Any]:
    """(FID extractor, its id, CLIP scorer) from local files, after checking the COCO layout."""
    from lmfusion_cli.evaluation.clip_score import load_clip
    from lmfusion_cli.evaluation.coco import find_layout, karpathy_ids
    from lmfusion_cli.evaluation.fid import INCEPTION_URL, load_inception

    find_layout(cfg.coco.root)
    if cfg.coco.karpathy_split:
        karpathy_ids(cfg.coco.karpathy_split)
    if not cfg.coco.inception:
        raise UserError(f"The COCO suite needs Inception weights for FID; download {INCEPTION_URL} and pass its "
                        f"path with --inception.")
    if not cfg.coco.clip_weights:
        raise UserError(f"The COCO suite needs CLIP weights for the CLIP score; download the open_clip checkpoint "
                        f"for {cfg.coco.clip_arch} and pass its path with --clip-weights.")
    extractor = load_inception(cfg.coco.inception, device)
    extractor_id = f"{Path(cfg.coco.inception).name}-{sha256_file(cfg.coco.inception)[:12]}"
    scorer = load_clip(cfg.coco.clip_arch, cfg.coco.clip_weights, cfg.coco.clip_config, device)
    return extractor, extractor_id, scorer


# ---- the suites ------------------------------------------------------------------------------------
def _generate_fn(cfg: EvaluateConfig, loaded):
    from lmfusion_cli.sampling import as_generate_fn

    s = cfg.sampling
    return as_generate_fn(loaded.model, tokenizer=loaded.tokenizer, vae=loaded.codec, cfg_scale=s.cfg_scale,
                          steps=s.steps, sampler=s.sampler, batch_size=cfg.batch_size, use_cache=s.cache)


def _caption_fn(cfg: EvaluateConfig, loaded):
    from lmfusion_cli.sampling import as_caption_fn

    s = cfg.sampling
    return as_caption_fn(loaded.model, tokenizer=loaded.tokenizer, vae=loaded.codec, decoding=s.decoding,
                         max_new_tokens=s.max_new_tokens, num_beams=s.num_beams, batch_size=cfg.batch_size,
                         use_cache=s.cache)


def _run_text(cfg: EvaluateConfig, out: Path, loaded, items: list, device: str) -> tuple[dict[str, Any], Section]:
    from lmfusion_cli.evaluation.suites import run_text_suite
    from lmfusion_cli.evaluation.text_suite import hf_logits_fn
    from lmfusion_cli.model.llava import load_base

    model = loaded.model
    try:
        base = load_base(model.base_id, model.base.dtype).to(device).eval()  # a causal LM or a LLaVA VLM
    except OSError as e:
        raise UserError(f"The base model {model.base_id} cannot be loaded with transformers ({type(e).__name__}); "
                        f"pass its folder with --base.") from e
    vocab, base_logits = model.vocab_size, hf_logits_fn(base)

    def fused(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return model.text_logits(input_ids.to(device), attention_mask.to(device))[..., :vocab]  # (B, T, V_base)

    def reference(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return base_logits(input_ids.to(device), attention_mask.to(device))  # (B, T, V_base)

    try:
        metrics, section = run_text_suite(out, items, loaded.tokenizer, {"base": reference, "fused": fused},
                                          batch_size=cfg.batch_size)
    finally:
        del base
        gc.collect()
    metrics["base_model"] = model.base_id
    section.text += (" The base LM is loaded on its own with `transformers` from the checkpoint's base pointer; "
                     "the fused model's logits are compared over the base vocabulary.")
    return metrics, section


def _run_shapes(cfg: EvaluateConfig, out: Path, loaded, data_items: list | None) -> tuple[dict[str, Any], Section]:
    from lmfusion_cli.evaluation.suites import run_shapes_suite

    resolution = cfg.shapes.resolution or loaded.codec.image_size
    metrics, section = run_shapes_suite(out, cfg.shapes.num_items, cfg.shapes.seed, resolution,
                                        generate_fn=_generate_fn(cfg, loaded), caption_fn=_caption_fn(cfg, loaded),
                                        batch_size=cfg.batch_size, tokenizer=cfg.ptb_tokenizer, items=data_items)
    metrics["items"] = f"test split of {cfg.shapes.data}" if data_items is not None else \
        f"shapes.make_item(i, seed={cfg.shapes.seed}), i < {cfg.shapes.num_items}"
    section.metrics = {**section.metrics, "items": metrics["items"]}
    return metrics, section


def _run_coco(cfg: EvaluateConfig, out: Path, loaded, scorers: tuple[Any, str, Any]) -> tuple[dict[str, Any], Section]:
    from lmfusion_cli.evaluation.coco_suite import run_coco_suite

    extractor, extractor_id, scorer = scorers
    c = cfg.coco
    stats = Path(c.fid_stats_dir) if c.fid_stats_dir else out / "coco" / "fid_stats"
    return run_coco_suite(out, c.root, c.karpathy_split, c.num_caption_images, c.num_prompts, c.seed,
                          loaded.codec.image_size, generate_fn=_generate_fn(cfg, loaded),
                          caption_fn=_caption_fn(cfg, loaded), extractor=extractor, extractor_id=extractor_id,
                          clip_scorer=scorer, stats_cache_dir=stats, caption_metrics=c.caption_metrics,
                          batch_size=cfg.batch_size, tokenizer=cfg.ptb_tokenizer)


# ---- the stage -------------------------------------------------------------------------------------
@dataclass
class _Inputs:
    """What the suites read, loaded (or checked) before the model: bad paths fail in seconds."""

    text_items: list = field(default_factory=list)
    text_source: str | None = None
    shapes_items: list | None = None
    coco_scorers: tuple[Any, str, Any] | None = None
    skips: SkipLog = field(default_factory=SkipLog)


def _check_inputs(cfg: EvaluateConfig, suites: list[str], device: str) -> _Inputs:
    inputs = _Inputs()
    if "text" in suites:
        inputs.text_items, text_skips, inputs.text_source = _text_items(cfg)
        inputs.skips.merge(text_skips)
    if "shapes" in suites and cfg.shapes.data:
        inputs.shapes_items, shapes_skips = shapes_test_items(cfg.shapes.data)
        inputs.skips.merge(shapes_skips)
    if "coco" in suites:
        inputs.coco_scorers = _coco_scorers(cfg, device)
    return inputs


def _write_results(out: Path, cfg: EvaluateConfig, loaded, suites: list[str],
                   results: dict[str, tuple[dict[str, Any], Section]]) -> dict[str, Any]:
    """metrics.json and report.md (with a note on the suites `all` could not run); returns the metrics."""
    skipped = {"coco": "no --coco-root given"} if cfg.suite == "all" and "coco" not in suites else {}
    metrics = {"checkpoint": str(loaded.checkpoint.model_dir), "step": loaded.checkpoint.step,
               "suites_run": suites, "suites_skipped": skipped, **{name: m for name, (m, _) in results.items()}}
    sections = [section for _, section in results.values()]
    if skipped:
        sections.append(Section("suites not run", text="\n".join(
            f"- **{name}**: {why}; pass `--coco-root DIR` (with `--inception` and `--clip-weights`) to run it."
            for name, why in skipped.items())))
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
            raise disk_full_error(cfg.out, "evaluate (finished generations are reused)", None,
                                  "its finished generations are kept") from None


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
    from lmfusion_cli.sampling.stage import resolve_device

    device = resolve_device(cfg.device)
    inputs = _check_inputs(cfg, suites, device)
    from lmfusion_cli.sampling.loading import load_for_sampling, resolve_checkpoint  # after the quick checks

    settings = _generation_settings(cfg, _weights_sha256(resolve_checkpoint(cfg.checkpoint).model_dir))
    _check_resume(out, _prepare_out(out, cfg.overwrite), settings)
    loaded = load_for_sampling(cfg.checkpoint, base=cfg.base, tokenizer=cfg.tokenizer, vae=cfg.vae, device=device)
    described = {**loaded.describe(), "text_items": inputs.text_source, "shapes_data": cfg.shapes.data,
                 "coco_root": cfg.coco.root}
    common = {"inputs": described, "config": config_to_dict(cfg), "config_hash": config_hash(cfg),
              "generation_settings": settings}
    write_manifest(out, KIND, complete=False, **common)  # first: it is what makes a rerun resume, not refuse
    atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    log.info("evaluating %s (step %s): %s", loaded.checkpoint.model_dir, loaded.checkpoint.step, ", ".join(suites))

    results: dict[str, tuple[dict[str, Any], Section]] = {}
    with torch.no_grad():
        for suite in suites:
            if suite == "text":
                results[suite] = _run_text(cfg, out, loaded, inputs.text_items, device)
            elif suite == "shapes":
                results[suite] = _run_shapes(cfg, out, loaded, inputs.shapes_items)
            else:
                results[suite] = _run_coco(cfg, out, loaded, inputs.coco_scorers)
                inputs.skips.merge(_coco_skips(results[suite][0]))
    metrics = _write_results(out, cfg, loaded, suites, results)
    files = {p.relative_to(out).as_posix(): file_entry(p) for p in sorted(out.rglob("*"))
             if p.is_file() and p.name != MANIFEST_NAME}
    write_manifest(out, KIND, complete=True, files=files, **common, **inputs.skips.to_dict())
    log.info("wrote %s and %s", out / "metrics.json", out / "report.md")
    return metrics


def _coco_skips(metrics: dict[str, Any]) -> SkipLog:
    """The COCO images left out (their counts, as `select_test_images` recorded them)."""
    counts = metrics.get("skipped") or {}
    return SkipLog(kept=counts.get("kept", 0), skipped=Counter(counts.get("skipped", {})))
