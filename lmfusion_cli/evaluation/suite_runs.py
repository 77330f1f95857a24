"""Each suite run on the loaded checkpoint: binds the sampler (`sampling.as_generate_fn` / `as_caption_fn`)
and the settings of `EvaluateConfig` to the suite functions, which take plain callables
(`shapes_suite`, `coco_suite`, `text_suite`). Returns each suite's (metrics, report section)."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.evaluation.config import EvaluateConfig
from lmfusion_cli.evaluation.report import Section
from lmfusion_cli.evaluation.suite_inputs import TextInputs


def _generate_fn(cfg: EvaluateConfig, loaded, cfg_scale: float):
    from lmfusion_cli.sampling import as_generate_fn

    options = cfg.sampling.options(cfg_scale)
    return as_generate_fn(
        loaded.model, tokenizer=loaded.tokenizer, vae=loaded.codec, options=options, batch_size=cfg.batch_size
    )


def _caption_fn(cfg: EvaluateConfig, loaded):
    from lmfusion_cli.sampling import as_caption_fn

    options = cfg.sampling.options()
    return as_caption_fn(
        loaded.model, tokenizer=loaded.tokenizer, vae=loaded.codec, options=options, batch_size=cfg.batch_size
    )


def run_text(cfg: EvaluateConfig, out: Path, loaded, inputs: TextInputs, device: str) -> tuple[dict[str, Any], Section]:
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


def run_shapes(cfg: EvaluateConfig, out: Path, loaded, data_items: list | None) -> tuple[dict[str, Any], Section]:
    from lmfusion_cli.evaluation.shapes_suite import run_shapes_suite

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
        captions=cfg.shapes.captions,
    )
    metrics["items"] = (
        f"test split of {cfg.shapes.data}"
        if data_items is not None
        else f"shapes.make_item(i, seed={cfg.shapes.seed}, captions={cfg.shapes.captions}), i < {cfg.shapes.num_items}"
    )
    section.metrics = {**section.metrics, "items": metrics["items"]}
    return metrics, section


def run_coco(
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
