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
write), so for a frozen-text model every request's log-likelihood must be identical. This file owns the orchestration; the suites
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
from lmfusion_cli.common.checkpoint_layout import recorded_sha256
from lmfusion_cli.common.configs import config_hash, config_to_dict, dump_yaml
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.hashing import sha256_file
from lmfusion_cli.common.manifest import MANIFEST_NAME, SkipLog, file_entry, write_manifest
from lmfusion_cli.common.output_folder import disk_full_error, is_disk_full, output_lock, overwrite_folder, swap_in
from lmfusion_cli.evaluation import report
from lmfusion_cli.evaluation.config import EvaluateConfig
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
    return recorded_sha256(model_dir, "model.safetensors") or sha256_file(model_dir / "model.safetensors")


# ---- inputs checked before anything loads ----------------------------------------------------------
@dataclass
class _TextInputs:
    """The text suite's tasks, checked before the model loads (`--text-items` items are written as a task later)."""

    specs: list = field(default_factory=list)
    """lm-eval task specs (names or config dicts) from `--tasks` / the shipped YAML."""
    items: list | None = None
    """`--text-items` items, when given."""
    source: str = ""
    """What the tasks are, for the manifest."""


def _text_inputs(cfg: EvaluateConfig) -> tuple[_TextInputs, SkipLog]:
    from lmfusion_cli.evaluation.text_suite import SHIPPED_TASK, load_hf_disk, load_jsonl, load_tasks, task_specs

    t = cfg.text
    if t.items:
        path = Path(t.items)
        items, skips = load_hf_disk(path, t.fields, t.split) if path.is_dir() else load_jsonl(path, t.fields)
        return _TextInputs(items=items, source=str(path)), skips
    names = list(t.tasks) or [str(SHIPPED_TASK)]
    specs = task_specs(names)
    load_tasks(specs)  # unknown names, unreadable YAML or data that cannot be fetched: refused now
    return _TextInputs(specs=specs, source=", ".join(names)), SkipLog()


def shapes_test_items(folder: str | Path) -> tuple[list, SkipLog]:
    """The test split of a prepared shapes set (`lmfusion prepare --source shapes`) as `ShapesItem`s.

    Samples without shapes attributes or with an unreadable image are skipped and counted."""
    from lmfusion_cli.common.manifest import read_manifest
    from lmfusion_cli.data.shapes import ShapesItem
    from lmfusion_cli.data.shards import iter_samples

    folder = Path(folder)
    manifest = read_manifest(folder, "shards", what="shapes data")
    if (manifest.get("inputs") or {}).get("source") != "shapes":
        raise UserError(
            f"{folder} was prepared from '{(manifest.get('inputs') or {}).get('source')}', not shapes; "
            f"pass a folder made by `lmfusion prepare --source shapes`."
        )
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


def _coco_scorers(cfg: EvaluateConfig, device: str) -> tuple[Any, str, Any, str]:
    """(FID extractor, its id, CLIP scorer, its id), after checking the COCO layout and the prompt count.

    With no local file given, the weights come the libraries' own way: clean-fid's `InceptionV3W` and
    open_clip's pretrained tag, each downloading into its cache when online (a `UserError` offline)."""
    from lmfusion_cli.evaluation.clip_score import load_clip, load_clip_pretrained
    from lmfusion_cli.evaluation.coco import find_layout, generation_images, karpathy_ids, make_prompts
    from lmfusion_cli.evaluation.fid import cleanfid_inception, load_inception

    c = cfg.coco
    layout = find_layout(c.root)
    if c.karpathy_split:
        karpathy_ids(c.karpathy_split)
    make_prompts(generation_images(layout)[0], c.num_prompts, c.seed)  # refuses more prompts than images now
    if c.clip_weights:
        scorer = load_clip(c.clip_arch, c.clip_weights, c.clip_config, device)
        clip_id = f"{c.clip_arch} ({Path(c.clip_weights).name}-{sha256_file(c.clip_weights)[:12]})"
    else:
        scorer = load_clip_pretrained(c.clip_arch, c.clip_pretrained, device, c.clip_cache_dir)
        clip_id = f"{c.clip_arch} ({c.clip_pretrained})"
    if c.inception:
        extractor = load_inception(c.inception, device)
        inception_file = Path(c.inception)
    else:
        extractor, inception_file = cleanfid_inception(c.cleanfid_dir, device)
    extractor_id = f"{inception_file.name}-{sha256_file(inception_file)[:12]}"
    return extractor, extractor_id, scorer, clip_id


# ---- the suites ------------------------------------------------------------------------------------
def _generate_fn(cfg: EvaluateConfig, loaded, cfg_scale: float):
    from lmfusion_cli.sampling import as_generate_fn

    s = cfg.sampling
    return as_generate_fn(
        loaded.model,
        tokenizer=loaded.tokenizer,
        vae=loaded.codec,
        cfg_scale=cfg_scale,
        steps=s.steps,
        sampler=s.sampler,
        batch_size=cfg.batch_size,
        use_cache=s.cache,
    )


def _caption_fn(cfg: EvaluateConfig, loaded):
    from lmfusion_cli.sampling import as_caption_fn

    s = cfg.sampling
    return as_caption_fn(
        loaded.model,
        tokenizer=loaded.tokenizer,
        vae=loaded.codec,
        decoding=s.decoding,
        max_new_tokens=s.max_new_tokens,
        num_beams=s.num_beams,
        batch_size=cfg.batch_size,
        use_cache=s.cache,
    )


def _run_text(
    cfg: EvaluateConfig, out: Path, loaded, inputs: _TextInputs, device: str
) -> tuple[dict[str, Any], Section]:
    from lmfusion_cli.evaluation.lm_eval_adapter import base_lm, fused_text_lm
    from lmfusion_cli.evaluation.text_suite import items_task, load_tasks, run_text_suite

    specs = inputs.specs
    if inputs.items is not None:
        specs = [items_task(inputs.items, out / "text" / "items.jsonl", f"lmfusion_items_{_task_slug(inputs.source)}")]
    manager, _ = load_tasks(specs)
    model = loaded.model
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    try:
        base = base_lm(model.base_id, batch_size=cfg.batch_size, device=device, dtype=dtype)
    except OSError as e:
        raise UserError(
            f"The base model {model.base_id} cannot be loaded with transformers ({type(e).__name__}); "
            f"pass its folder with --base."
        ) from e
    fused = fused_text_lm(model, tokenizer=model.base_id, batch_size=cfg.batch_size)
    try:
        metrics, section = run_text_suite(out, specs, manager, {"base": base, "fused": fused}, limit=cfg.text.limit)
    finally:
        del base
        gc.collect()
    metrics.update(base_model=model.base_id, task_source=inputs.source, limit=cfg.text.limit)
    section.text += (
        " The base is lm-eval's `hf` model loaded from the checkpoint's base pointer; the fused model "
        "is the same harness over its text path (`FusedTextLM`), logits over the base vocabulary."
    )
    return metrics, section


def _task_slug(source: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in Path(source).stem)[:40] or "items"


def _run_shapes(cfg: EvaluateConfig, out: Path, loaded, data_items: list | None) -> tuple[dict[str, Any], Section]:
    from lmfusion_cli.evaluation.suites import run_shapes_suite

    resolution = cfg.shapes.resolution or loaded.codec.image_size
    (scale,) = cfg.sampling.scales_for("shapes")
    metrics, section = run_shapes_suite(
        out,
        cfg.shapes.num_items,
        cfg.shapes.seed,
        resolution,
        generate_fn=_generate_fn(cfg, loaded, scale),
        caption_fn=_caption_fn(cfg, loaded),
        batch_size=cfg.batch_size,
        tokenizer=cfg.ptb_tokenizer,
        items=data_items,
    )
    metrics["items"] = (
        f"test split of {cfg.shapes.data}"
        if data_items is not None
        else f"shapes.make_item(i, seed={cfg.shapes.seed}), i < {cfg.shapes.num_items}"
    )
    section.metrics = {**section.metrics, "items": metrics["items"]}
    return metrics, section


def _run_coco(
    cfg: EvaluateConfig, out: Path, loaded, scorers: tuple[Any, str, Any, str]
) -> tuple[dict[str, Any], Section]:
    from lmfusion_cli.evaluation.coco_suite import run_coco_suite

    extractor, extractor_id, scorer, clip_id = scorers
    c, s = cfg.coco, cfg.sampling
    stats = Path(c.fid_stats_dir) if c.fid_stats_dir else out / "coco" / "fid_stats"
    generate_fns = {scale: _generate_fn(cfg, loaded, scale) for scale in s.scales_for("coco")}
    return run_coco_suite(
        out,
        c.root,
        c.karpathy_split,
        c.num_caption_images,
        c.num_prompts,
        c.seed,
        loaded.codec.image_size,
        generate_fns=generate_fns,
        caption_fn=_caption_fn(cfg, loaded),
        extractor=extractor,
        extractor_id=extractor_id,
        clip_scorer=scorer,
        clip_id=clip_id,
        stats_cache_dir=stats,
        caption_metrics=c.caption_metrics,
        batch_size=cfg.batch_size,
        tokenizer=cfg.ptb_tokenizer,
        sampling={"sampler": s.sampler, "steps": s.steps, "kv_cache": s.cache},
    )


# ---- the stage -------------------------------------------------------------------------------------
@dataclass
class _Inputs:
    """What the suites read, loaded (or checked) before the model: bad paths fail in seconds."""

    text: _TextInputs = field(default_factory=_TextInputs)
    shapes_items: list | None = None
    coco_scorers: tuple[Any, str, Any, str] | None = None
    skips: SkipLog = field(default_factory=SkipLog)


def _check_inputs(cfg: EvaluateConfig, suites: list[str], device: str) -> _Inputs:
    inputs = _Inputs()
    if "text" in suites:
        inputs.text, text_skips = _text_inputs(cfg)
        inputs.skips.merge(text_skips)
    if "shapes" in suites and cfg.shapes.data:
        inputs.shapes_items, shapes_skips = shapes_test_items(cfg.shapes.data)
        inputs.skips.merge(shapes_skips)
    if "coco" in suites:
        inputs.coco_scorers = _coco_scorers(cfg, device)
    return inputs


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
    sections = [section for _, section in results.values()]
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
    from lmfusion_cli.sampling.stage import resolve_device

    device = resolve_device(cfg.device)
    inputs = _check_inputs(cfg, suites, device)
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
                results[suite] = _run_text(cfg, out, loaded, inputs.text, device)
            elif suite == "shapes":
                results[suite] = _run_shapes(cfg, out, loaded, inputs.shapes_items)
            else:
                results[suite] = _run_coco(cfg, out, loaded, inputs.coco_scorers)
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
