"""What a source lists for `prepare`: `ItemSpec` (an item without its pixels) and the `Lister` that collects
them, counting duplicate keys, empty captions and images outside the input's root (`sources.py` and
`hf_sources.py` list into it); caption helpers shared by the layouts."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.manifest import SkipLog
from lmfusion_cli.data.config import PrepareConfig

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


def first_caption(value: Any) -> tuple[str, list[str]]:
    """A caption field (string or list of strings) → (first non-empty caption, all non-empty ones)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    captions = [v.strip() for v in values if isinstance(v, str) and v.strip()]
    return (captions[0] if captions else ""), captions


class Lister:
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


def need_path(path: Path, what: str, option: str = "--input") -> Path:
    if not path.exists():
        raise UserError(f"The {what} {path} does not exist; check {option}.")
    return path
