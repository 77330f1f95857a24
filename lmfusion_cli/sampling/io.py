"""Sampling's files: prompt lists in, PNGs + grid + JSONL records out, all byte-deterministic and atomic.

- `read_prompts(path)`: a `.txt` file (one prompt per line) or `.jsonl` (`{"prompt": ...}` per line);
  blank lines are ignored; no prompt at all is a one-sentence `UserError`.
- `list_images(paths)`: folders are expanded (sorted, image extensions only), files kept in order.
- `to_uint8(images)`: decoded images in [-1, 1] → uint8 HWC arrays (round half to even, clamped).
- `png_bytes(array)`: fixed PNG settings and no metadata (no time stamps), so the same pixels always
  give the same bytes; `make_grid` tiles images with a fixed gap.
- `write_jsonl(path, records)`: one JSON object per line, keys sorted, written atomically.

Nothing here knows about the model or the VAE.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lmfusion_cli.common.atomic import atomic_write_text
from lmfusion_cli.common.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
"""Extensions taken from a folder passed to `--images`."""
PNG_COMPRESS_LEVEL = 6
"""zlib level of every PNG we write (fixed: the level changes the bytes)."""
GRID_GAP = 2
"""Pixels of white between grid cells."""


def read_prompts(path: str | Path) -> list[str]:
    """Prompts of a `.txt` (one per line) or `.jsonl` (`{"prompt": ...}`) file, blank lines skipped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Prompt file {path} does not exist; check the --prompts path.")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"Prompt file {path} cannot be read as UTF-8 text ({e}); save it as UTF-8.") from e
    prompts: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                record = json.loads(line)
                prompt = record["prompt"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise UserError(
                    f'Line {number} of {path} is not a JSON object with a "prompt" string; fix that line.'
                ) from e
            if not isinstance(prompt, str):
                raise UserError(f'Line {number} of {path} has a non-string "prompt"; make it a string.')
            prompts.append(prompt)
        else:
            prompts.append(line.strip())
    if not prompts:
        raise UserError(f"Prompt file {path} holds no prompts; write one prompt per line.")
    return prompts


def list_images(paths: Sequence[str | Path]) -> list[Path]:
    """Expand folders (sorted, `IMAGE_EXTENSIONS` only, not recursive); files are kept as given.

    Missing files are kept too: captioning skips and counts them, like undecodable ones."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise UserError(f"Folder {path} holds no images ({', '.join(IMAGE_EXTENSIONS)}); check --images.")
            out.extend(found)
        else:
            out.append(path)
    if not out:
        raise UserError("No images were given; pass --images DIR or image files.")
    return out


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [-1, 1] → (B, H, W, 3) uint8 (values outside are clamped)."""
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return pixels.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def png_bytes(array: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 array: fixed compression, no metadata chunks."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def make_grid(arrays: Sequence[np.ndarray], columns: int = 0) -> np.ndarray:
    """Tile (H, W, 3) uint8 arrays row-major on white; `columns` 0 = ⌈√n⌉."""
    if not arrays:
        raise ValueError("make_grid needs at least one image")
    n = len(arrays)
    columns = columns if columns > 0 else math.ceil(math.sqrt(n))
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    h, w = arrays[0].shape[:2]
    grid = np.full((rows * h + (rows - 1) * GRID_GAP, columns * w + (columns - 1) * GRID_GAP, 3), 255, np.uint8)
    for k, array in enumerate(arrays):
        r, c = divmod(k, columns)
        top, left = r * (h + GRID_GAP), c * (w + GRID_GAP)
        grid[top : top + h, left : left + w] = array
    return grid


def jsonl_text(records: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records)


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, jsonl_text(records))
