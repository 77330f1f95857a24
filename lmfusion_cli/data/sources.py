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

This module does not resize, encode or write anything."""

from __future__ import annotations

import csv
import functools
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.manifest import SkipLog
from lmfusion_cli.data.config import PrepareConfig
from lmfusion_cli.data.images import IMAGE_EXTENSIONS, BadImage, decode_image
from lmfusion_cli.data.interleaved import jsonl_items, shapes_document
from lmfusion_cli.data.shards import safe_key

CAPTION_COLUMNS = ("caption", "text", "captions", "sentence", "sentences")
SPLIT_NAMES = {"train": "train", "restval": "train", "validation": "val", "val": "val", "valid": "val", "test": "test"}


@dataclass(frozen=True)
class ItemSpec:
    """One item as listed: everything but the pixels. `loader` says how to get those:
    ("shapes", index) | ("file", path) | ("hf", dataset_dir, split_name, row, image_column)."""

    key: str
    caption: str
    loader: tuple
    split: str | None = None
    attributes: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _first_caption(value: Any) -> tuple[str, list[str]]:
    """A caption field (string or list of strings) → (first non-empty caption, all non-empty ones)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    captions = [v.strip() for v in values if isinstance(v, str) and v.strip()]
    return (captions[0] if captions else ""), captions


class _Lister:
    """Collects specs, refusing duplicate keys, empty captions and images outside the input's root
    with a count; over-long captions are cut (`max_caption_chars`) and counted as `caption-truncated`."""

    def __init__(self, cfg: PrepareConfig | None = None) -> None:
        self.specs: list[ItemSpec] = []
        self.keys: set[str] = set()
        self.log = SkipLog()
        self.truncated = 0
        self.max_caption_chars = cfg.max_caption_chars if cfg else None
        self.allow_outside_root = cfg.allow_outside_root if cfg else True

    def add(self, spec: ItemSpec, root: Path | None = None) -> None:
        if spec.key in self.keys:
            self.log.skip(spec.key, "duplicate-key", str(spec.loader[1]) if len(spec.loader) > 1 else "")
            return
        self.keys.add(spec.key)
        if not spec.caption:
            self.log.skip(spec.key, "empty-caption")
            return
        if root is not None and spec.loader[0] == "file" and not self.inside(root, Path(spec.loader[1])):
            self.log.skip(
                spec.key, "outside-root", f"{spec.loader[1]} is outside {root} (--allow-outside-root reads it)"
            )
            return
        if self.max_caption_chars and len(spec.caption) > self.max_caption_chars:
            spec = replace(spec, caption=cut_caption(spec.caption, self.max_caption_chars))
            self.truncated += 1
        self.specs.append(spec)

    def inside(self, root: Path, path: Path) -> bool:
        """Whether `path` (symlinks resolved) stays under `root`, or reading outside is allowed."""
        if self.allow_outside_root:
            return True
        return path.resolve().is_relative_to(root.resolve())


def cut_caption(caption: str, max_chars: int) -> str:
    """`caption` cut to at most `max_chars` characters, at the last space when there is one."""
    if len(caption) <= max_chars:
        return caption
    cut = caption[:max_chars]
    space = cut.rfind(" ")
    return cut[:space].rstrip() if space > max_chars // 2 else cut


def _need(path: Path, what: str, option: str = "--input") -> Path:
    if not path.exists():
        raise UserError(f"The {what} {path} does not exist; check {option}.")
    return path


def _list_shapes(cfg: PrepareConfig, lister: _Lister) -> None:
    from lmfusion_cli.data.shapes import make_item

    # Caption and attributes do not depend on the resolution: list them from a tiny render;
    # `load_image` draws the item again at full size in the worker.
    for index in range(cfg.num_items):
        item = make_item(index, cfg.seed, resolution=8)  # tiny render: only caption/attributes used
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


def _list_coco(cfg: PrepareConfig, lister: _Lister) -> None:
    root = _need(Path(cfg.input), "COCO root", "--coco-root")
    if cfg.karpathy_split:
        data = _read_json(_need(Path(cfg.karpathy_split), "Karpathy split file", "--karpathy-split"))
        for n, img in enumerate(data.get("images", []) if isinstance(data, dict) else []):
            try:
                sentences = img.get("sentences", [])
                caption, captions = _first_caption([s["raw"] for s in sentences])
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
            caption, captions = _first_caption([c for _, c in sorted(by_image.get(img["id"], []), key=str)])
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


def _list_folder(cfg: PrepareConfig, lister: _Lister) -> None:
    root = _need(Path(cfg.input), "input folder")
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


def _list_jsonl(cfg: PrepareConfig, lister: _Lister) -> None:
    path = _need(Path(cfg.input), "JSONL file")
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
                caption, captions = _first_caption(record["caption"])
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                lister.log.skip(where, "bad-record", f"{type(e).__name__}: {e}")
                continue
            image_path = Path(image) if os.path.isabs(image) else base / image
            key = safe_key(str(record.get("key") or Path(image).with_suffix("")))
            split = SPLIT_NAMES.get(record["split"]) if record.get("split") else None
            extra = {"source": str(image)} | ({"captions": captions} if len(captions) > 1 else {})
            lister.add(ItemSpec(key, caption, ("file", str(image_path)), split, record.get("attributes"), extra), base)


def _add_document(record: dict[str, Any], base: Path, lister: _Lister, where: str) -> None:
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


@functools.lru_cache(maxsize=4)
def _load_hf(path: str):  # one open dataset per worker process (memory-mapped Arrow, cheap)
    import datasets

    try:
        return datasets.load_from_disk(path)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"{path} is not a dataset saved with `save_to_disk` ({e}); check --input.") from e


@functools.lru_cache(maxsize=8)
def _hf_undecoded(path: str, split_name: str, column: str):
    """The dataset with its image column as raw {bytes, path}, so bad images are counted by reason."""
    import datasets

    loaded = _load_hf(path)
    ds = loaded[split_name] if split_name else loaded
    return ds.cast_column(column, datasets.Image(decode=False))


def _hf_columns(ds, path: str) -> tuple[str, str]:
    import datasets

    image_col = next((n for n, f in ds.features.items() if isinstance(f, datasets.Image)), None)
    caption_col = next((n for n in CAPTION_COLUMNS if n in ds.features), None)
    if image_col is None or caption_col is None:
        raise UserError(
            f"Dataset {path} needs an Image column and one of the caption columns "
            f"{', '.join(CAPTION_COLUMNS)}; it has {', '.join(ds.features)}."
        )
    return image_col, caption_col


def _list_hf_disk(cfg: PrepareConfig, lister: _Lister) -> None:
    import datasets

    path = str(_need(Path(cfg.input), "dataset folder"))
    loaded = _load_hf(path)
    parts = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [("", loaded)]
    for split_name, ds in parts:
        image_col, caption_col = _hf_columns(ds, path)
        key_col = next((n for n in ("key", "__key__", "id") if n in ds.features), None)
        keys = ds[key_col] if key_col else None
        for row, value in enumerate(ds[caption_col]):
            caption, captions = _first_caption(value)
            key = safe_key(str(keys[row])) if keys else f"{split_name or 'row'}-{row:08d}"
            extra = {"source": f"{split_name}[{row}]"} | ({"captions": captions} if len(captions) > 1 else {})
            lister.add(
                ItemSpec(
                    key, caption, ("hf", path, split_name, row, image_col), SPLIT_NAMES.get(split_name), None, extra
                )
            )


def _imagefolder_rows(meta_path: Path) -> list[dict[str, Any]]:
    if meta_path.suffix == ".csv":
        with open(meta_path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    rows = []
    for line in meta_path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def _list_imagefolder(cfg: PrepareConfig, lister: _Lister) -> None:
    root = _need(Path(cfg.input), "imagefolder")
    metas = sorted(root.rglob("metadata.jsonl")) + sorted(root.rglob("metadata.csv"))
    if not metas:
        raise UserError(
            f"{root} has no metadata.jsonl or metadata.csv with file_name and caption columns; "
            f"add one (the Hugging Face imagefolder layout) or use --source folder."
        )
    described: set[Path] = set()
    for meta in metas:
        top = meta.parent.relative_to(root).parts
        split = SPLIT_NAMES.get(top[0]) if top else None
        try:
            rows = _imagefolder_rows(meta)
        except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
            raise UserError(f"{meta} cannot be parsed ({type(e).__name__}: {e}); fix the metadata file.") from e
        for n, row in enumerate(rows):
            name = row.get("file_name") if isinstance(row, dict) else None
            col = next((c for c in CAPTION_COLUMNS if c in row), None) if isinstance(row, dict) else None
            if not isinstance(name, str) or not name or col is None:
                lister.log.skip(
                    f"{meta.name}:{n + 1}", "bad-record", "needs a JSON object with file_name and a caption column"
                )
                continue
            image_path = meta.parent / name
            described.add(image_path.resolve())
            if not lister.inside(root, image_path) or os.path.isabs(name):
                if not lister.allow_outside_root:
                    lister.log.skip(
                        f"{meta.name}:{n + 1}",
                        "outside-root",
                        f"{name} is outside {root} (--allow-outside-root reads it)",
                    )
                    continue
            caption, captions = _first_caption(row[col])
            rel = Path(os.path.relpath(image_path, root))
            extra = {"source": str(rel)} | ({"captions": captions} if len(captions) > 1 else {})
            lister.add(
                ItemSpec(safe_key(str(rel.with_suffix(""))), caption, ("file", str(image_path)), split, None, extra)
            )
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS):
        if path.resolve() not in described:
            rel = path.relative_to(root)
            lister.log.skip(safe_key(str(rel.with_suffix(""))), "missing-caption", f"{rel} is not in any metadata file")


_LISTERS = {
    "shapes": _list_shapes,
    "coco": _list_coco,
    "folder": _list_folder,
    "jsonl": _list_jsonl,
    "hf-disk": _list_hf_disk,
    "imagefolder": _list_imagefolder,
}


def list_items(cfg: PrepareConfig) -> tuple[list[ItemSpec], SkipLog]:
    """List the source's items (no pixels read); bad entries are counted in the returned log. The
    log's `truncated` attribute counts captions cut to `max_caption_chars` (kept, not skipped)."""
    lister = _Lister(cfg)
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
        _, path, split_name, row, column = spec.loader
        value = _hf_undecoded(path, split_name, column)[row][column]
        if value is None:
            raise BadImage("missing-image", f"row {row}")
        if value.get("bytes") is not None:
            return decode_image(value["bytes"], cfg.max_pixels)
        try:
            return decode_image(Path(value["path"]).read_bytes(), cfg.max_pixels)
        except (FileNotFoundError, TypeError):
            raise BadImage("missing-image", str(value.get("path"))) from None
    raise ValueError(f"unknown loader {kind!r}")
