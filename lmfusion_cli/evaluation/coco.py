"""The COCO layout for evaluation: captions, images, the Karpathy test split, a seeded prompt manifest.

Expected layout under `--coco-root` (the official zips unpacked):

    annotations/captions_val2014.json   (or captions_val2017.json)
    val2014/COCO_val2014_000000xxxxxx.jpg   (or val2017/000000xxxxxx.jpg)

plus, optionally, Karpathy's split file (`dataset_coco.json`, anywhere): its "test" images are the
standard 5,000-image captioning test set. Without it, all images of the annotation file are used.

The generation prompts follow the COCO-30K protocol: `num` (30,000) *distinct* images drawn with a seed
from every annotated validation image on disk (40,504 in val2014; val2017 has 5,000), independent of
the captioning split, one random caption each. They are saved as `prompts.jsonl` with a header line,
so a rerun reuses exactly the same prompts and a changed request is refused rather than mixed in. The
FID reference set is those same images (`coco_suite`).

Image files listed in the annotations but absent on disk are skipped and counted (`SkipLog`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmfusion_cli.common.atomic import atomic_write_text
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.manifest import SkipLog

ANNOTATION_NAMES = {"2014": "captions_val2014.json", "2017": "captions_val2017.json"}


@dataclass(frozen=True)
class CocoImage:
    image_id: int
    """COCO image id."""
    path: Path
    """Image file."""
    captions: tuple[str, ...]
    """Reference captions (usually five)."""


@dataclass
class CocoSplit:
    images: list[CocoImage]
    """Selected images, sorted by id."""
    skips: SkipLog = field(default_factory=SkipLog)
    """Images left out, by reason."""


@dataclass(frozen=True)
class CocoLayout:
    root: Path
    """The COCO root folder."""
    annotations: Path
    """The captions annotation file."""
    images_dir: Path
    """The folder of validation images."""


def find_layout(root: str | Path) -> CocoLayout:
    """Locate the annotation file and image folder under `root` (2014 preferred), or say what is missing."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"The COCO root {root} does not exist; pass the folder holding annotations/ and val2014/.")
    for year, name in ANNOTATION_NAMES.items():
        annotations = root / "annotations" / name
        if annotations.is_file():
            images_dir = root / f"val{year}"
            if not images_dir.is_dir():
                raise UserError(
                    f"{annotations} was found but its image folder {images_dir} is missing; "
                    f"unpack val{year}.zip into {root}."
                )
            return CocoLayout(root=root, annotations=annotations, images_dir=images_dir)
    raise UserError(
        f"{root} has no annotations/{ANNOTATION_NAMES['2014']} (or annotations/{ANNOTATION_NAMES['2017']}); "
        f"unpack the COCO captions annotations zip into {root}."
    )


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"The {what} {path} cannot be read as JSON ({type(e).__name__}); download it again.") from e


def load_images(layout: CocoLayout) -> tuple[dict[int, CocoImage], SkipLog]:
    """All images of the annotation file that exist on disk, with their captions."""
    data = _read_json(layout.annotations, "COCO annotation file")
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise UserError(f"{layout.annotations} lacks 'images' or 'annotations'; it is not a COCO captions file.")
    captions: dict[int, list[str]] = {}
    for ann in data["annotations"]:
        captions.setdefault(int(ann["image_id"]), []).append(str(ann["caption"]).strip())
    images, skips = {}, SkipLog()
    for info in data["images"]:
        image_id = int(info["id"])
        path = layout.images_dir / info["file_name"]
        if not path.is_file():
            skips.skip(str(image_id), "missing-image-file", str(path))
        elif not captions.get(image_id):
            skips.skip(str(image_id), "no-captions")
        else:
            images[image_id] = CocoImage(image_id, path, tuple(captions[image_id]))
            skips.keep()
    return images, skips


def karpathy_ids(split_file: str | Path, split: str = "test") -> list[int]:
    """COCO ids of Karpathy's `split` ("test", "val", "train", "restval") from `dataset_coco.json`."""
    path = Path(split_file)
    if not path.is_file():
        raise UserError(
            f"The Karpathy split file {path} does not exist; download dataset_coco.json "
            f"(Karpathy's COCO splits) and pass its path."
        )
    data = _read_json(path, "Karpathy split file")
    if not isinstance(data, dict) or "images" not in data:
        raise UserError(f"{path} has no 'images' list; it is not Karpathy's dataset_coco.json.")
    ids = sorted(int(im["cocoid"]) for im in data["images"] if im.get("split") == split)
    if not ids:
        raise UserError(f"{path} has no images in the '{split}' split; check the file or the split name.")
    return ids


def select_test_images(
    layout: CocoLayout, karpathy_split: str | Path | None = None, num: int | None = None, seed: int = 0
) -> CocoSplit:
    """The captioning test images: Karpathy's test split if given (else all), optionally a seeded subset."""
    images, skips = load_images(layout)
    if karpathy_split is not None:
        wanted = karpathy_ids(karpathy_split)
        for image_id in wanted:
            if image_id not in images:
                skips.skip(str(image_id), "karpathy-id-not-in-annotations")
        selected = [images[i] for i in wanted if i in images]
    else:
        selected = [images[i] for i in sorted(images)]
    if num is not None and num < len(selected):
        picks = np.random.default_rng(seed).choice(len(selected), size=num, replace=False)
        selected = [selected[i] for i in sorted(picks)]
    if not selected:
        raise UserError(f"No usable COCO test images under {layout.root} ({skips.summary()}); check the image folder.")
    return CocoSplit(images=selected, skips=skips)


def make_prompts(images: list[CocoImage], num: int, seed: int) -> list[dict[str, Any]]:
    """`num` prompts, one random caption each of `num` distinct images drawn with `seed` (no image twice)."""
    if num > len(images):
        raise UserError(
            f"coco.num_prompts {num} exceeds the {len(images)} distinct validation images on disk; "
            f"pass --num-prompts {len(images)} or fewer (COCO-30K needs val2014's 40,504)."
        )
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(images), size=num, replace=False)
    prompts = []
    for index, pick in enumerate(picks):
        image = images[int(pick)]
        caption = image.captions[int(rng.integers(len(image.captions)))]
        prompts.append({"index": index, "image_id": image.image_id, "caption": caption})
    return prompts


def generation_images(layout: CocoLayout) -> tuple[list[CocoImage], SkipLog]:
    """Every annotated validation image on disk, sorted by id: the pool the generation prompts come from."""
    images, skips = load_images(layout)
    return [images[i] for i in sorted(images)], skips


def prompt_manifest(path: str | Path, images: list[CocoImage], num: int, seed: int) -> list[dict[str, Any]]:
    """Load the saved prompts at `path`, or draw and save them; refuse a file made with other settings."""
    path = Path(path)
    header = {"kind": "coco30k-prompts", "num": num, "seed": seed, "num_source_images": len(images)}
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        saved = json.loads(lines[0]) if lines else {}
        if saved != header:
            raise UserError(
                f"{path} holds prompts made with other settings ({saved}); delete it or use another "
                f"output folder to draw {num} prompts with seed {seed}."
            )
        return [json.loads(line) for line in lines[1:]]
    prompts = make_prompts(images, num, seed)
    atomic_write_text(path, "".join(json.dumps(x) + "\n" for x in [header, *prompts]))
    return prompts
