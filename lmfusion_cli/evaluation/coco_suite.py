"""The COCO suite: captioning metrics on the test images; FID and CLIP score of generated images.

Captioning: `caption_fn` captions the selected test images (Karpathy test split when given); the
captions are scored with pycocoevalcap after PTB tokenization (`metrics.caption_scores`).
Generation: a seeded prompt manifest (`coco/prompts.jsonl`), images generated for the prompts not
yet done (`coco/generations/`), reference images = the prompts' COCO images centre-cropped and
resized to the generation resolution (`coco/reference/`), then FID (clean-fid features from a
local extractor, reference statistics cached in `stats_cache_dir`) and CLIP score (open_clip).
Every callable is optional: the parts whose inputs are missing are left out of the metrics."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from lmfusion_cli.common.atomic import atomic_file, atomic_write_text
from lmfusion_cli.evaluation import report
from lmfusion_cli.evaluation.coco import find_layout, prompt_manifest, select_test_images
from lmfusion_cli.evaluation.report import Section
from lmfusion_cli.evaluation.suites import GRID_SIZE, CaptionFn, GenerateFn, generate_missing, load_generations

log = logging.getLogger(__name__)


def _reference_images(folder: Path, prompts: list[dict[str, Any]], paths: dict[int, Path], resolution: int) -> None:
    """COCO images of the prompts, centre-cropped to squares of `resolution` pixels (written once)."""
    folder.mkdir(parents=True, exist_ok=True)
    for image_id in sorted({p["image_id"] for p in prompts}):
        out = folder / f"{image_id:012d}.png"
        if out.is_file():
            continue
        with Image.open(paths[image_id]) as im:
            square = ImageOps.fit(im.convert("RGB"), (resolution, resolution), Image.Resampling.BICUBIC)
        with atomic_file(out) as tmp:
            square.save(tmp, format="PNG")


def run_coco_suite(out_dir: str | Path, coco_root: str | Path, karpathy_split: str | Path | None = None,
                   num_caption_images: int | None = None, num_prompts: int = 30_000, seed: int = 0,
                   resolution: int = 256, generate_fn: GenerateFn | None = None, caption_fn: CaptionFn | None = None,
                   extractor: Any = None, extractor_id: str = "inception", clip_scorer: Any = None,
                   stats_cache_dir: str | Path | None = None, caption_metrics: tuple[str, ...] = ("bleu", "rouge", "cider"),
                   batch_size: int = 8, tokenizer: str = "auto") -> tuple[dict[str, Any], Section]:
    """Run what the given callables allow; return (metrics, report section)."""
    from lmfusion_cli.evaluation.metrics import caption_scores

    root = Path(out_dir) / "coco"
    layout = find_layout(coco_root)
    split = select_test_images(layout, karpathy_split, num_caption_images, seed)
    metrics: dict[str, Any] = {"num_test_images": len(split.images), "skipped": split.skips.counts()}
    section = Section("coco")
    if caption_fn is not None:
        captions: list[str] = []
        for start in range(0, len(split.images), batch_size):
            batch = split.images[start:start + batch_size]
            images = []
            for im in batch:
                with Image.open(im.path) as opened:
                    images.append(opened.convert("RGB"))
            captions.extend(caption_fn(images))
        atomic_write_text(root / "captions.jsonl", "".join(
            json.dumps({"image_id": im.image_id, "caption": c}) + "\n" for im, c in zip(split.images, captions)))
        metrics["captioning"] = caption_scores({str(im.image_id): list(im.captions) for im in split.images},
                                               {str(im.image_id): c for im, c in zip(split.images, captions)},
                                               metrics=caption_metrics, tokenizer=tokenizer)
    gen_dir = root / "generations"
    if generate_fn is not None or gen_dir.is_dir():
        prompts = prompt_manifest(root / "prompts.jsonl", split.images, num_prompts, seed)
        texts = [p["caption"] for p in prompts]
        if generate_fn is not None:
            generate_missing(gen_dir, texts, [seed + p["index"] for p in prompts], generate_fn, batch_size)
        generated, skips = load_generations(gen_dir, len(prompts))
        generation: dict[str, Any] = {"num_prompts": len(prompts), "num_generated": len(generated),
                                      "skipped": skips.counts()}
        if extractor is not None and len(generated) >= 2:
            from lmfusion_cli.evaluation.fid import fid_from_folders

            _reference_images(root / "reference", prompts, {im.image_id: im.path for im in split.images}, resolution)
            fid = fid_from_folders(gen_dir, root / "reference", extractor, extractor_id, stats_cache_dir, batch_size)
            generation.update({"fid": fid["fid"], "fid_reference_images": fid["num_reference"],
                               "fid_reference_cached": fid["reference_cached"]})
        if clip_scorer is not None and generated:
            from lmfusion_cli.evaluation.clip_score import clip_score

            idx = sorted(generated)
            generation["clip_score"] = clip_score(clip_scorer, [generated[i] for i in idx], [texts[i] for i in idx],
                                                  batch_size)
        metrics["generation"] = generation
        if generated:
            shown = sorted(generated)[:GRID_SIZE]
            report.save_image_grid([generated[i] for i in shown], root / "generation_grid.png")
            section.images.append(("coco/generation_grid.png", "generated images"))
            section.footer = ("Prompts of the generated images, laid out as the grid:\n\n"
                              + report.grid_caption_table([texts[i] for i in shown]))
    headline = {k: v for k, v in {**metrics.get("captioning", {}), **metrics.get("generation", {})}.items()
                if k in ("CIDEr", "BLEU-4", "METEOR", "ROUGE-L", "clip_score")}
    if headline:
        report.plot_values(headline, root / "scores.png", "COCO scores")
        section.images.insert(0, ("coco/scores.png", "COCO scores"))
    section.metrics = metrics
    return metrics, section
