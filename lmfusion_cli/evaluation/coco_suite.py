"""The COCO suite: captioning metrics on the Karpathy test images; COCO-30K FID and CLIP score of generations.

Captioning (independent of generation): `caption_fn` captions the selected test images (Karpathy test
split when given); the captions are scored with pycocoevalcap after PTB tokenization.

Generation, the COCO-30K protocol (`coco.make_prompts`): N prompts, one caption each of N *distinct*
validation images drawn with a seed from every annotated image on disk (`coco/prompts.jsonl`). For each
guidance scale, one pass over the same prompts and seeds (prompt i uses seed + i) into
`coco/generations/cfg-<s>/`. The FID reference set is those same N real images, centre-cropped and
resized to the generation resolution, through clean-fid's "clean" pipeline; its statistics are cached
under (image list hash, resolution, extractor). CLIP score with open_clip. `metrics["generation"]`
holds the protocol and one set of figures per scale. Every callable is optional: the parts whose
inputs are missing are left out of the metrics."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from lmfusion_cli.common.atomic import atomic_write_text
from lmfusion_cli.evaluation import report
from lmfusion_cli.evaluation.coco import find_layout, generation_images, prompt_manifest, select_test_images
from lmfusion_cli.evaluation.generations import GRID_SIZE, CaptionFn, GenerateFn, generate_missing, load_generations
from lmfusion_cli.evaluation.report import Section

log = logging.getLogger(__name__)


def scale_key(cfg_scale: float) -> str:
    """How a guidance scale names its figures and folder: 1.55 → "cfg=1.55" (folder "cfg-1.55")."""
    return f"cfg={cfg_scale:g}"


def _caption_metrics(
    root: Path, split, caption_fn: CaptionFn, caption_metrics: tuple[str, ...], batch_size: int, tokenizer: str
) -> dict[str, Any]:
    from lmfusion_cli.evaluation.metrics import caption_scores

    captions: list[str] = []
    for start in range(0, len(split.images), batch_size):
        images = []
        for im in split.images[start : start + batch_size]:
            with Image.open(im.path) as opened:
                images.append(opened.convert("RGB"))
        captions.extend(caption_fn(images))
    atomic_write_text(
        root / "captions.jsonl",
        "".join(json.dumps({"image_id": im.image_id, "caption": c}) + "\n" for im, c in zip(split.images, captions)),
    )
    return caption_scores(
        {str(im.image_id): list(im.captions) for im in split.images},
        {str(im.image_id): c for im, c in zip(split.images, captions)},
        metrics=caption_metrics,
        tokenizer=tokenizer,
    )


def run_coco_suite(
    out_dir: str | Path,
    coco_root: str | Path,
    karpathy_split: str | Path | None = None,
    num_caption_images: int | None = None,
    num_prompts: int = 30_000,
    seed: int = 0,
    resolution: int = 256,
    generate_fns: Mapping[float, GenerateFn] | None = None,
    caption_fn: CaptionFn | None = None,
    extractor: Any = None,
    extractor_id: str = "inception",
    clip_scorer: Any = None,
    clip_id: str | None = None,
    stats_cache_dir: str | Path | None = None,
    caption_metrics: tuple[str, ...] = ("bleu", "rouge", "cider"),
    batch_size: int = 8,
    tokenizer: str = "auto",
    cfg_scales: Sequence[float] = (),
    sampling: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], Section]:
    """Run what the given callables allow; return (metrics, report section).

    `generate_fns` maps each guidance scale to its generator; `cfg_scales` lists scales whose generations
    are only scored (already on disk) when no generator is given; `sampling` (sampler, steps, ...) is
    recorded in the protocol."""
    root = Path(out_dir) / "coco"
    layout = find_layout(coco_root)
    split = select_test_images(layout, karpathy_split, num_caption_images, seed)
    metrics: dict[str, Any] = {"num_test_images": len(split.images), "skipped": split.skips.counts()}
    section = Section("coco")
    if caption_fn is not None:
        metrics["captioning"] = _caption_metrics(root, split, caption_fn, caption_metrics, batch_size, tokenizer)
    scales = list(generate_fns or {}) or [s for s in cfg_scales if (root / "generations" / _folder(s)).is_dir()]
    if scales:
        metrics["generation"] = _generation(
            root,
            layout,
            scales,
            generate_fns or {},
            num_prompts,
            seed,
            resolution,
            extractor,
            extractor_id,
            clip_scorer,
            clip_id,
            stats_cache_dir,
            batch_size,
            sampling or {},
            section,
        )
    headline = {
        f"{k} ({key})": v
        for key, figures in metrics.get("generation", {}).get("by_cfg_scale", {}).items()
        for k, v in figures.items()
        if k in ("fid", "clip_score")
    }
    headline.update({k: v for k, v in metrics.get("captioning", {}).items() if k in ("CIDEr", "BLEU-4")})
    if headline:
        report.plot_values(headline, root / "scores.png", "COCO scores")
        section.images.insert(0, ("coco/scores.png", "COCO scores"))
    section.metrics = metrics
    return metrics, section


def _folder(cfg_scale: float) -> str:
    return f"cfg-{cfg_scale:g}"


def _generation(
    root: Path,
    layout,
    scales: list[float],
    generate_fns: Mapping[float, GenerateFn],
    num_prompts: int,
    seed: int,
    resolution: int,
    extractor: Any,
    extractor_id: str,
    clip_scorer: Any,
    clip_id: str | None,
    stats_cache_dir: str | Path | None,
    batch_size: int,
    sampling: Mapping[str, Any],
    section: Section,
) -> dict[str, Any]:
    pool, pool_skips = generation_images(layout)
    prompts = prompt_manifest(root / "prompts.jsonl", pool, num_prompts, seed)
    texts, seeds = [p["caption"] for p in prompts], [seed + p["index"] for p in prompts]
    by_id = {im.image_id: im for im in pool}
    reference_files = [by_id[p["image_id"]].path for p in prompts]
    protocol = {
        "name": "COCO-30K" if num_prompts == 30_000 else f"COCO-{num_prompts} (COCO-30K protocol, fewer prompts)",
        "annotations": layout.annotations.name,
        "num_prompts": len(prompts),
        "num_distinct_images": len({p["image_id"] for p in prompts}),
        "num_reference_images": len(reference_files),
        "reference": "the prompts' own images, centre-cropped + resized (PIL bicubic) to the resolution",
        "resolution": resolution,
        "seed": seed,
        "image_seeds": f"seed + i for prompt i (i < {len(prompts)})",
        "fid_mode": "clean-fid clean",
        "extractor": extractor_id if extractor is not None else None,
        "clip_model": clip_id if clip_scorer is not None else None,
        "cfg_scales": scales,
        **dict(sampling),
        "source_images_available": len(pool),
        "source_images_skipped": pool_skips.counts()["skipped"],
    }
    reference = None
    if extractor is not None:
        from lmfusion_cli.evaluation.fid import image_set_stats

        reference = image_set_stats(reference_files, resolution, extractor, extractor_id, stats_cache_dir, batch_size)
        protocol.update(reference_stats=reference["path"], reference_stats_cached=reference["cached"])
    by_scale: dict[str, Any] = {}
    for scale in scales:
        gen_dir = root / "generations" / _folder(scale)
        if scale in generate_fns:
            generate_missing(gen_dir, texts, seeds, generate_fns[scale], batch_size)
        by_scale[scale_key(scale)] = _score_generations(
            root, gen_dir, scale, texts, reference, extractor, clip_scorer, batch_size, section
        )
    return {"protocol": protocol, "by_cfg_scale": by_scale}


def _score_generations(
    root: Path,
    gen_dir: Path,
    scale: float,
    texts: list[str],
    reference: dict[str, Any] | None,
    extractor: Any,
    clip_scorer: Any,
    batch_size: int,
    section: Section,
) -> dict[str, Any]:
    generated, skips = load_generations(gen_dir, len(texts))
    figures: dict[str, Any] = {"cfg_scale": scale, "num_generated": len(generated), "skipped": skips.counts()}
    if reference is not None and len(generated) >= 2:
        from lmfusion_cli.evaluation.fid import fid_against

        figures["fid"] = fid_against(gen_dir, reference, extractor, batch_size)
    if clip_scorer is not None and generated:
        from lmfusion_cli.evaluation.clip_score import clip_score

        idx = sorted(generated)
        figures["clip_score"] = clip_score(
            clip_scorer, [generated[i] for i in idx], [texts[i] for i in idx], batch_size
        )
    if generated:
        shown = sorted(generated)[:GRID_SIZE]
        grid = f"generation_grid_{_folder(scale)}.png"
        report.save_image_grid([generated[i] for i in shown], root / grid)
        section.images.append((f"coco/{grid}", f"generated images, cfg {scale:g}"))
        section.footer = (
            "Prompts of the generated images (the same for every scale), laid out as the grids:\n\n"
            + report.grid_caption_table([texts[i] for i in shown])
        )
    return figures
