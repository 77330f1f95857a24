"""The evaluation suites, written against plain callables so any sampler plugs in.

- `generate_fn(prompts, seeds) -> list[PIL.Image]`: text → image (e.g. sampling's `generate_images`
  with the model bound in);
- `caption_fn(images) -> list[str]`: image → text (e.g. sampling's `caption_images`);

Suites: `run_shapes_suite` (generation checker + caption CIDEr / attribute accuracy),
`run_coco_suite` (caption metrics on the Karpathy test images, FID and CLIP score of generations for
a saved prompt manifest); the text suite is `text_suite.run_text_suite` (lm-evaluation-harness).
Each returns its metrics and a report `Section`; `write_outputs` writes `metrics.json` and `report.md`. Generations are PNGs named by prompt index: a rerun skips the ones already written
(resume), and scoring a folder of existing generations needs no generator at all."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from lmfusion_cli.common.atomic import atomic_file, atomic_write_text
from lmfusion_cli.common.manifest import SkipLog
from lmfusion_cli.common.progress import progress
from lmfusion_cli.data import shapes
from lmfusion_cli.evaluation import report
from lmfusion_cli.evaluation.report import Section

log = logging.getLogger(__name__)

GenerateFn = Callable[[list[str], list[int]], list[Image.Image]]
CaptionFn = Callable[[list[Image.Image]], list[str]]
GRID_SIZE = 32


def generation_path(folder: Path, index: int) -> Path:
    return folder / f"{index:05d}.png"


def generate_missing(
    folder: str | Path, prompts: Sequence[str], seeds: Sequence[int], generate_fn: GenerateFn, batch_size: int = 8
) -> int:
    """Write `folder/{index:05d}.png` for every prompt whose image is not there yet; return how many were made."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(len(prompts)) if not generation_path(folder, i).is_file()]
    bar = progress(total=len(prompts), initial=len(prompts) - len(todo), desc="generating", unit="img")
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        images = generate_fn([prompts[i] for i in chunk], [seeds[i] for i in chunk])
        if len(images) != len(chunk):
            raise RuntimeError(f"generate_fn returned {len(images)} images for {len(chunk)} prompts")
        for i, image in zip(chunk, images):
            with atomic_file(generation_path(folder, i)) as tmp:
                image.save(tmp, format="PNG")
        bar.update(len(chunk))
    bar.close()
    return len(todo)


def load_generations(folder: str | Path, count: int) -> tuple[dict[int, Image.Image], SkipLog]:
    """The generations present for indexes 0..count-1; absent or unreadable ones are counted, not fatal."""
    images, skips = {}, SkipLog()
    for i in range(count):
        path = generation_path(Path(folder), i)
        if not path.is_file():
            skips.skip(str(i), "not-generated", str(path))
            continue
        try:
            with Image.open(path) as im:
                images[i] = im.convert("RGB")
            skips.keep()
        except OSError as e:
            skips.skip(str(i), "unreadable-image", str(e))
    return images, skips


def _write_jsonl(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def run_shapes_suite(
    out_dir: str | Path,
    num_items: int = 200,
    seed: int = 1000,
    resolution: int = 64,
    generate_fn: GenerateFn | None = None,
    caption_fn: CaptionFn | None = None,
    generations_dir: str | Path | None = None,
    batch_size: int = 8,
    tokenizer: str = "auto",
    items: Sequence[shapes.ShapesItem] | None = None,
) -> tuple[dict[str, Any], Section]:
    """Shapes generation (checker accuracy per attribute vs chance) and captioning (CIDEr, attributes).

    Items are `items` when given (e.g. the test split of a prepared shapes set; `num_items` is then
    their count), else `shapes.make_item(i, seed, resolution)`, i < num_items (use a seed the
    training data did not). Item i is generated with seed `seed + i`. Generations go to / are read
    from `generations_dir` (default `out_dir/shapes/generations`)."""
    from lmfusion_cli.evaluation.shapes_captions import score_captions
    from lmfusion_cli.evaluation.shapes_checker import score_images

    root = Path(out_dir) / "shapes"
    gen_dir = Path(generations_dir) if generations_dir is not None else root / "generations"
    if items is None:
        items = [shapes.make_item(i, seed, resolution) for i in range(num_items)]
    else:
        items, num_items = list(items), len(items)
    _write_jsonl(
        root / "prompts.jsonl",
        [
            {"index": i, "key": it.key, "caption": it.caption, "seed": seed + i, "attributes": it.attributes}
            for i, it in enumerate(items)
        ],
    )
    metrics: dict[str, Any] = {"num_items": num_items, "seed": seed, "resolution": resolution}
    section = Section("shapes")
    if generate_fn is not None:
        made = generate_missing(
            gen_dir, [it.caption for it in items], [seed + i for i in range(num_items)], generate_fn, batch_size
        )
        log.info("shapes: generated %d new images (%d already there)", made, num_items - made)
    if generate_fn is not None or gen_dir.is_dir():
        images, skips = load_generations(gen_dir, num_items)
        if images:
            scored = score_images(list(images.values()), [items[i].attributes for i in images])
            metrics["generation"] = {k: scored[k] for k in ("accuracy", "chance", "counts")}
            metrics["generation"]["skipped"] = skips.counts()
            report.plot_accuracy_vs_chance(
                scored["accuracy"],
                scored["chance"],
                root / "generation_accuracy.png",
                "shapes generation: checker accuracy vs chance",
            )
            shown = list(images)[:GRID_SIZE]
            report.save_image_grid([images[i] for i in shown], root / "generation_grid.png")
            section.images += [
                ("shapes/generation_accuracy.png", "generation accuracy vs chance"),
                ("shapes/generation_grid.png", "generated images"),
            ]
            section.footer = "Prompts of the generated images, laid out as the grid:\n\n" + report.grid_caption_table(
                [items[i].caption for i in shown]
            )
        else:
            log.warning("shapes: no generations found in %s (%s)", gen_dir, skips.summary())
    if caption_fn is not None:
        captions = caption_fn([it.image for it in items])
        _write_jsonl(root / "captions.jsonl", [{"index": i, "caption": c} for i, c in enumerate(captions)])
        scored = score_captions(
            {it.key: c for it, c in zip(items, captions)}, {it.key: it.attributes for it in items}, tokenizer=tokenizer
        )
        metrics["captioning"] = {k: scored[k] for k in ("cider", "accuracy", "stated", "counts")}
        from lmfusion_cli.evaluation.shapes_checker import chance_levels

        report.plot_accuracy_vs_chance(
            scored["accuracy"],
            chance_levels(),
            root / "caption_accuracy.png",
            "shapes captioning: attribute accuracy vs chance",
        )
        section.images.append(("shapes/caption_accuracy.png", "caption attribute accuracy vs chance"))
    section.metrics = {k: v for k, v in metrics.items()}
    return metrics, section


def write_outputs(
    out_dir: str | Path,
    title: str,
    results: Mapping[str, tuple[dict[str, Any], Section]],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """`metrics.json` ({suite: metrics, **extra}) and `report.md` (one section per suite) in `out_dir`."""
    metrics = {**(extra or {}), **{name: m for name, (m, _) in results.items()}}
    return {
        "metrics": report.write_metrics(out_dir, metrics),
        "report": report.write_report(out_dir, title, [s for _, s in results.values()]),
    }
