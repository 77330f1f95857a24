"""The Hugging Face layouts of `prepare`: `hf-disk` (a `datasets` Dataset/DatasetDict saved with `save_to_disk`;
its first `Image` column and first caption column, DatasetDict splits keep their names) and `imagefolder`
(`metadata.jsonl` / `metadata.csv` rows with `file_name` and a caption column, optionally under `train/`,
`validation/`, `test/`). Images stay undecoded until `load_hf_image` runs in a worker, so a bad one is
counted by reason. The other layouts are `sources.py`'s."""

from __future__ import annotations

import csv
import functools
import json
import os
from pathlib import Path
from typing import Any

from PIL import Image

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.data.config import PrepareConfig
from lmfusion_cli.data.images import IMAGE_EXTENSIONS, BadImage, decode_image
from lmfusion_cli.data.item_specs import CAPTION_COLUMNS, SPLIT_NAMES, ItemSpec, Lister, first_caption, need_path
from lmfusion_cli.data.shards import safe_key


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


def list_hf_disk(cfg: PrepareConfig, lister: Lister) -> None:
    import datasets

    path = str(need_path(Path(cfg.input), "dataset folder"))
    loaded = _load_hf(path)
    parts = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [("", loaded)]
    for split_name, ds in parts:
        image_col, caption_col = _hf_columns(ds, path)
        key_col = next((n for n in ("key", "__key__", "id") if n in ds.features), None)
        keys = ds[key_col] if key_col else None
        for row, value in enumerate(ds[caption_col]):
            caption, captions = first_caption(value)
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


def list_imagefolder(cfg: PrepareConfig, lister: Lister) -> None:
    root = need_path(Path(cfg.input), "imagefolder")
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
            caption, captions = first_caption(row[col])
            rel = Path(os.path.relpath(image_path, root))
            extra = {"source": str(rel)} | ({"captions": captions} if len(captions) > 1 else {})
            lister.add(
                ItemSpec(safe_key(str(rel.with_suffix(""))), caption, ("file", str(image_path)), split, None, extra)
            )
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS):
        if path.resolve() not in described:
            rel = path.relative_to(root)
            lister.log.skip(safe_key(str(rel.with_suffix(""))), "missing-caption", f"{rel} is not in any metadata file")


def load_hf_image(spec: ItemSpec, max_pixels: int | None) -> Image.Image:
    """The pixels of an `("hf", dataset_dir, split_name, row, image_column)` item; `BadImage` when absent."""
    _, path, split_name, row, column = spec.loader
    value = _hf_undecoded(path, split_name, column)[row][column]
    if value is None:
        raise BadImage("missing-image", f"row {row}")
    if value.get("bytes") is not None:
        return decode_image(value["bytes"], max_pixels)
    try:
        return decode_image(Path(value["path"]).read_bytes(), max_pixels)
    except (FileNotFoundError, TypeError):
        raise BadImage("missing-image", str(value.get("path"))) from None
