"""A folder of generations named by prompt index, shared by the shapes and COCO suites.

The suites are written against plain callables so any sampler plugs in:

- `generate_fn(prompts, seeds) -> list[PIL.Image]`: text → image (e.g. sampling's `as_generate_fn`);
- `caption_fn(images) -> list[str]`: image → text (e.g. sampling's `as_caption_fn`).

Generations are PNGs named by prompt index (`00042.png`): a rerun makes only the missing ones (resume),
and scoring a folder of existing generations needs no generator at all."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from lmfusion_cli.common.atomic import atomic_file, atomic_write_text
from lmfusion_cli.common.manifest import SkipLog
from lmfusion_cli.common.progress import progress

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


def write_jsonl(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
