"""Sources of image/caption items for `prepare`: shapes, COCO, folder, JSONL, saved `datasets`, imagefolder.

Each source is listed cheaply (`list_items`) into `ItemSpec`s — key, caption, attributes, optional
split, and *how* to load the pixels — with bad entries counted in a `SkipLog` by reason and key
(`empty-caption`, `missing-caption`, `bad-caption-encoding`, `duplicate-key`, `unsupported-extension`,
`bad-record`, `outside-root`), never raised. Images are confined to the input's root (the COCO root,
the folder, the JSONL file's folder): absolute paths, `../` and symlinks leaving it are refused and
counted unless `allow_outside_root`. The expensive part, `load_image`, runs in `prepare`'s workers and raises
`BadImage` with its reason (`missing-image`, `empty-image`, `too-large`, `truncated-image`,
`corrupt-image`).

Layouts:
- coco: `ROOT/annotations/captions_*.json` (or `ROOT/captions_*.json`) with images in `ROOT/<name>/`
  for `captions_<name>.json`; with a Karpathy file (`dataset_coco.json`) its images, sentences and
  splits are used instead (`restval` counts as train). One item per image: the first caption is the
  `txt`, all captions are kept in the metadata (for CIDEr).
- folder: images anywhere under DIR, each with a same-named `.txt` caption (and optional `.json`
  attributes).
- jsonl: one JSON object per line: `image` (path, relative to the file's folder), `caption` (string or
  list), optional `key`, `split`, `attributes`; or an interleaved document: `parts`, a list of
  `{"text": str}` and `{"image": path[, "caption": str]}` (one item per image, see data/interleaved.py).
- hf-disk: a `datasets` Dataset/DatasetDict saved with `save_to_disk`; the first `Image` column and the
  first of caption/text/captions/sentence columns are used; DatasetDict splits keep their names.
- imagefolder: the Hugging Face `imagefolder` layout: `metadata.jsonl` or `metadata.csv` rows with
  `file_name` and a caption/text column, optionally under `train/`, `validation/`, `test/`.

The common parts (`ItemSpec`, the `Lister`) are `item_specs.py`; hf-disk and imagefolder are `hf_sources.py`.
This module does not resize, encode or write anything."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.manifest import SkipLog
from lmfusion_cli.data.config import PrepareConfig
from lmfusion_cli.data.hf_sources import list_hf_disk, list_imagefolder, load_hf_image
from lmfusion_cli.data.images import IMAGE_EXTENSIONS, BadImage, decode_image
from lmfusion_cli.data.interleaved import jsonl_items, shapes_document
from lmfusion_cli.data.item_specs import SPLIT_NAMES, ItemSpec, Lister, first_caption, need_path
from lmfusion_cli.data.shards import safe_key


def _list_shapes(cfg: PrepareConfig, lister: Lister) -> None:
    from lmfusion_cli.data.shapes import make_item

    # Caption and attributes do not depend on the resolution: list them from a tiny render;
    # `load_image` draws the item again at full size in the worker.
    for index in range(cfg.num_items):
        # tiny render: only caption/attributes used
        item = make_item(index, cfg.seed, resolution=8, captions=cfg.captions)
        extra = {}
        if cfg.interleaved:  # the text around the image (data/interleaved.py), drawn from (seed, index) only
            rng = np.random.default_rng([cfg.seed, index, 18])
            extra = {"document": shapes_document(item.attributes, item.caption, rng)}
        lister.add(ItemSpec(item.key, item.caption, ("shapes", index), None, item.attributes, extra))


def _coco_files(root: Path) -> list[Path]:
    files = sorted((root / "annotations").glob("captions_*.json")) + sorted(root.glob("captions_*.json"))
    if not files:
        raise UserError(
            f"No captions_*.json found in {root} or {root / 'annotations'}; point --coco-root at "
            f"a COCO folder (annotations/captions_train2017.json + train2017/)."
        )
    return files


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not readable JSON ({type(e).__name__}); check the file.") from e


def _list_coco(cfg: PrepareConfig, lister: Lister) -> None:
    root = need_path(Path(cfg.input), "COCO root", "--coco-root")
    if cfg.karpathy_split:
        data = _read_json(need_path(Path(cfg.karpathy_split), "Karpathy split file", "--karpathy-split"))
        for n, img in enumerate(data.get("images", []) if isinstance(data, dict) else []):
            try:
                sentences = img.get("sentences", [])
                caption, captions = first_caption([s["raw"] for s in sentences])
                key = f"coco-{img.get('cocoid', safe_key(str(img.get('filename', ''))))}"
                path = root / str(img.get("filepath", "")) / str(img["filename"])
            except (AttributeError, KeyError, TypeError) as e:
                lister.log.skip(f"karpathy-image-{n}", "bad-record", f"{type(e).__name__}: {e}")
                continue
            lister.add(
                ItemSpec(
                    key,
                    caption,
                    ("file", str(path)),
                    SPLIT_NAMES.get(img.get("split")),
                    None,
                    {"captions": captions, "source": f"{img.get('filepath', '')}/{img.get('filename')}"},
                ),
                root,
            )
        return
    for ann_file in _coco_files(root):
        data = _read_json(ann_file)
        name = ann_file.stem.removeprefix("captions_")
        image_dir = root / name if (root / name).is_dir() else root / "images" / name
        by_image: dict[Any, list[tuple[int, str]]] = {}
        for n, ann in enumerate(data.get("annotations", []) if isinstance(data, dict) else []):
            if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("caption", ""), str):
                lister.log.skip(f"{ann_file.name}:annotation-{n}", "bad-record", "needs image_id and a caption string")
                continue
            by_image.setdefault(ann["image_id"], []).append((ann.get("id", 0), ann.get("caption", "")))
        images = []
        for n, img in enumerate(data.get("images", []) if isinstance(data, dict) else []):
            if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
                lister.log.skip(f"{ann_file.name}:image-{n}", "bad-record", "needs id and file_name")
                continue
            images.append(img)
        for img in sorted(images, key=lambda im: str(im["id"])):
            caption, captions = first_caption([c for _, c in sorted(by_image.get(img["id"], []), key=str)])
            lister.add(
                ItemSpec(
                    f"coco-{safe_key(str(img['id']))}",
                    caption,
                    ("file", str(image_dir / img["file_name"])),
                    None,
                    None,
                    {"captions": captions, "source": f"{name}/{img['file_name']}"},
                ),
                root,
            )


def _read_caption_file(path: Path) -> str:
    return path.read_bytes().decode("utf-8").strip()  # UnicodeDecodeError is counted by the caller


def _list_folder(cfg: PrepareConfig, lister: Lister) -> None:
    root = need_path(Path(cfg.input), "input folder")
    groups: dict[str, dict[str, Path]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        stem, ext = str(rel.with_suffix("")), path.suffix.lower()
        if ext in IMAGE_EXTENSIONS:
            slot = "image"
        elif ext in (".txt", ".json"):
            slot = ext
        else:
            lister.log.skip(safe_key(str(rel)), "unsupported-extension", str(rel))
            continue
        group = groups.setdefault(stem, {})
        if slot in group:
            lister.log.skip(safe_key(stem), "duplicate-key", f"{group[slot].name} and {path.name}")
            continue
        group[slot] = path
    for stem, group in groups.items():
        key = safe_key(stem)
        if "image" not in group:
            lister.log.skip(key, "missing-image", f"{stem}: caption without an image")
            continue
        if ".txt" not in group:
            lister.log.skip(key, "missing-caption", f"{group['image'].name} has no .txt caption")
            continue
        try:
            caption = _read_caption_file(group[".txt"])
        except UnicodeDecodeError as e:
            lister.log.skip(key, "bad-caption-encoding", f"{group['.txt'].name}: {e}")
            continue
        attributes = None
        if ".json" in group:
            try:
                attributes = json.loads(group[".json"].read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                lister.log.skip(key, "bad-record", f"{group['.json'].name}: {e}")
                continue
        lister.add(
            ItemSpec(
                key,
                caption,
                ("file", str(group["image"])),
                None,
                attributes,
                {"source": str(group["image"].relative_to(root))},
            ),
            root,
        )


def _list_jsonl(cfg: PrepareConfig, lister: Lister) -> None:
    path = need_path(Path(cfg.input), "JSONL file")
    if path.is_dir():
        raise UserError(
            f"{path} is a folder, but --source jsonl needs a .jsonl file; pass the file or use --source folder."
        )
    base = path.parent
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path.name}:{line_no}"
            try:
                record = json.loads(raw.decode("utf-8"))
                if isinstance(record, dict) and "parts" in record:
                    _add_document(record, base, lister, where)
                    continue
                image = record["image"]
                if not isinstance(image, str) or not image:
                    raise TypeError(f"image must be a path string, got {type(image).__name__}")
                caption, captions = first_caption(record["caption"])
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                lister.log.skip(where, "bad-record", f"{type(e).__name__}: {e}")
                continue
            image_path = Path(image) if os.path.isabs(image) else base / image
            key = safe_key(str(record.get("key") or Path(image).with_suffix("")))
            split = SPLIT_NAMES.get(record["split"]) if record.get("split") else None
            extra = {"source": str(image)} | ({"captions": captions} if len(captions) > 1 else {})
            lister.add(ItemSpec(key, caption, ("file", str(image_path)), split, record.get("attributes"), extra), base)


def _add_document(record: dict[str, Any], base: Path, lister: Lister, where: str) -> None:
    """An interleaved JSONL document (`parts`) → one item per image, its text around it as the document;
    the caption is the image part's `caption`, else the text before it, else the text after it."""
    doc_key = safe_key(str(record.get("key") or where.replace(":", "-")))
    split = SPLIT_NAMES.get(record["split"]) if record.get("split") else None
    for k, (image, document, caption) in enumerate(jsonl_items(record["parts"])):
        image_path = Path(image) if os.path.isabs(image) else base / image
        caption = (caption or document["before"] or document["after"]).strip()
        lister.add(
            ItemSpec(
                f"{doc_key}-{k}",
                caption,
                ("file", str(image_path)),
                split,
                record.get("attributes"),
                {"source": str(image), "document": document},
            )
        )


_LISTERS = {
    "shapes": _list_shapes,
    "coco": _list_coco,
    "folder": _list_folder,
    "jsonl": _list_jsonl,
    "hf-disk": list_hf_disk,
    "imagefolder": list_imagefolder,
}


def list_items(cfg: PrepareConfig) -> tuple[list[ItemSpec], SkipLog]:
    """List the source's items (no pixels read); bad entries are counted in the returned log. The
    log's `truncated` attribute counts captions cut to `max_caption_chars` (kept, not skipped)."""
    lister = Lister(cfg)
    _LISTERS[cfg.source](cfg, lister)
    lister.log.truncated = lister.truncated
    return lister.specs, lister.log


def load_image(spec: ItemSpec, cfg: PrepareConfig) -> Image.Image:
    """The item's pixels as an RGB image (any size); raises `BadImage` with the counted reason."""
    kind = spec.loader[0]
    if kind == "shapes":
        from lmfusion_cli.data.shapes import make_item

        return make_item(spec.loader[1], cfg.seed, cfg.resolution).image
    if kind == "file":
        try:
            data = Path(spec.loader[1]).read_bytes()
        except FileNotFoundError:
            raise BadImage("missing-image", spec.loader[1]) from None
        except OSError as e:
            raise BadImage("unreadable-image", f"{spec.loader[1]}: {e}") from e
        return decode_image(data, cfg.max_pixels)
    if kind == "hf":
        return load_hf_image(spec, cfg.max_pixels)
    raise ValueError(f"unknown loader {kind!r}")
