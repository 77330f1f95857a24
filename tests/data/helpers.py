"""Fixtures shared by the data-stage tests: tiny image files, bad files, a COCO layout."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image


def image_bytes(colour=(200, 30, 30), size=(40, 30), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return buf.getvalue()


def truncated_jpeg() -> bytes:
    data = image_bytes((10, 120, 250), (64, 64), "JPEG")
    return data[: len(data) // 2]


def make_coco(root: Path) -> dict[str, str]:
    """A COCO layout with 2 good images and one each of corrupt, missing, empty-caption, truncated, 0-byte.

    Returns key → expected outcome ('kept' or the skip reason)."""
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    files = {
        1: ("a.jpg", image_bytes((255, 0, 0), (50, 40), "JPEG"), ["a red thing", "red again"], "kept"),
        2: ("b.png", image_bytes((0, 255, 0)), ["a green thing"], "kept"),
        3: ("c.jpg", b"this is not an image at all", ["corrupt"], "corrupt-image"),
        4: ("d.jpg", None, ["missing file"], "missing-image"),
        5: ("e.jpg", image_bytes(), ["  ", ""], "empty-caption"),
        6: ("f.jpg", truncated_jpeg(), ["truncated"], "truncated-image"),
        7: ("g.jpg", b"", ["zero bytes"], "empty-image"),
    }
    images, anns = [], []
    for image_id, (name, data, captions, _) in files.items():
        images.append({"id": image_id, "file_name": name, "width": 10, "height": 10})
        if data is not None:
            (root / "val2017" / name).write_bytes(data)
        for j, c in enumerate(captions):
            anns.append({"id": image_id * 10 + j, "image_id": image_id, "caption": c})
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return {f"coco-{i}": outcome for i, (_, _, _, outcome) in files.items()}
