"""The shapes suite (issue 9): generation scored by the pixel checker, captioning by CIDEr and attributes.

Items are either drawn on the fly (`shapes.make_item(i, seed)`, a seed the training data did not use) or
read from the test split of a prepared shapes set (`shapes_test_items`). Generations (prompt i with seed
`seed + i`) go to `OUT/shapes/generations/` and are resumed (`generations.py`); the images are scored by
`shapes_checker`, the captions by `shapes_captions`. Returns its metrics and a report `Section`."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.manifest import SkipLog, read_manifest
from lmfusion_cli.data import shapes
from lmfusion_cli.data.shards import iter_samples
from lmfusion_cli.evaluation import report
from lmfusion_cli.evaluation.generations import (
    GRID_SIZE,
    CaptionFn,
    GenerateFn,
    generate_missing,
    load_generations,
    write_jsonl,
)
from lmfusion_cli.evaluation.report import Section
from lmfusion_cli.evaluation.shapes_captions import score_captions
from lmfusion_cli.evaluation.shapes_checker import chance_levels, score_images

log = logging.getLogger(__name__)


def shapes_test_items(folder: str | Path) -> tuple[list, SkipLog]:
    """The test split of a prepared shapes set (`lmfusion prepare --source shapes`) as `ShapesItem`s.

    Samples without shapes attributes or with an unreadable image are skipped and counted."""
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
            items.append(
                shapes.ShapesItem(key=sample["key"], image=image, caption=sample["caption"], attributes=attributes)
            )
            skips.keep()
    if not items:
        raise UserError(f"{folder} has no usable test items ({skips.summary()}); prepare it with a test_fraction > 0.")
    return items, skips


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
    captions: str = "fixed",
) -> tuple[dict[str, Any], Section]:
    """Shapes generation (checker accuracy per attribute vs chance) and captioning (CIDEr, attributes).

    Items are `items` when given (e.g. the test split of a prepared shapes set; `num_items` is then
    their count), else `shapes.make_item(i, seed, resolution, captions)`, i < num_items (use a seed the
    training data did not). Item i is generated with seed `seed + i`. Generations go to / are read
    from `generations_dir` (default `out_dir/shapes/generations`)."""
    root = Path(out_dir) / "shapes"
    gen_dir = Path(generations_dir) if generations_dir is not None else root / "generations"
    if items is None:
        items = [shapes.make_item(i, seed, resolution, captions) for i in range(num_items)]
    else:
        items, num_items = list(items), len(items)
    write_jsonl(
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
        write_jsonl(root / "captions.jsonl", [{"index": i, "caption": c} for i, c in enumerate(captions)])
        scored = score_captions(
            {it.key: c for it, c in zip(items, captions)}, {it.key: it.attributes for it in items}, tokenizer=tokenizer
        )
        metrics["captioning"] = {k: scored[k] for k in ("cider", "accuracy", "stated", "counts")}
        report.plot_accuracy_vs_chance(
            scored["accuracy"],
            chance_levels(),
            root / "caption_accuracy.png",
            "shapes captioning: attribute accuracy vs chance",
        )
        section.images.append(("shapes/caption_accuracy.png", "caption attribute accuracy vs chance"))
    section.metrics = {k: v for k, v in metrics.items()}
    return metrics, section
