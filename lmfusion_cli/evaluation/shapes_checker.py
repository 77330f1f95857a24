"""A deterministic, non-learned checker of generated shapes images (issue 9, the shapes suite).

From pixels alone it estimates what `lmfusion_cli.data.shapes` draws: the background colour, the
objects' colours, positions, sizes and shapes, and for pairs their relation; then it scores an image
against the attributes of the prompt that generated it.

How (all in float RGB):
- background: each border pixel's nearest palette colour (`shapes.COLOURS`); the most common wins;
- objects: each pixel is explained as a blend `bg + α·(c − bg)` of the background and one palette
  colour c (the one with the smallest residual); α ∈ [0, 1] is the pixel's soft coverage by an object
  of colour c, which makes areas and extents sub-pixel accurate despite anti-aliasing;
- colour: the palette colours with the largest α mass (one for a single object, two for a pair);
- position: the α-weighted centroid → nearest `shapes.POSITIONS` centre;
- size: the widest row's α sum / image width → nearest `shapes.SIZES` value;
- shape: area / (widest row · tallest column) of the α mask: square ≈ 1, circle ≈ π/4 ≈ 0.785,
  triangle ≈ 0.5 (thresholds at the midpoints);
- relation (pairs): which centroid is left of / above the other.

This module scores images; caption scoring is `shapes_captions.py`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from lmfusion_cli.data import shapes

_NAMES = list(shapes.COLOURS)
_PALETTE = np.array([shapes.COLOURS[n] for n in _NAMES], dtype=np.float64) / 255.0  # (K, 3)
SHAPE_RATIOS = {"triangle": 0.5, "circle": np.pi / 4, "square": 1.0}
MIN_ALPHA = 0.15  # pixels covered less than this are treated as background
MAX_RESIDUAL = 0.12  # RGB distance (0..√3) from the blend line beyond which a pixel is unexplained
MIN_OBJECT_FRACTION = 0.004  # an object must cover at least this fraction of the image (α mass)
RELATION_CHANCE = 0.5


@dataclass(frozen=True)
class DetectedObject:
    colour: str
    """Palette colour name of the object."""
    area: float
    """α mass in pixels (soft area)."""
    centroid: tuple[float, float]
    """(x, y) of the α-weighted centroid, as fractions of width and height."""
    width: float
    """Widest row's α sum as a fraction of the image width."""
    fill_ratio: float
    """area / (widest row · tallest column): square 1, circle π/4, triangle 1/2."""

    @property
    def shape(self) -> str:
        return min(SHAPE_RATIOS, key=lambda s: abs(SHAPE_RATIOS[s] - self.fill_ratio))

    @property
    def position(self) -> str:
        x, y = self.centroid
        return min(
            shapes.POSITIONS, key=lambda p: (shapes.POSITIONS[p][0] - x) ** 2 + (shapes.POSITIONS[p][1] - y) ** 2
        )

    @property
    def size(self) -> str:
        return min(shapes.SIZES, key=lambda s: abs(shapes.SIZES[s] - self.width))


@dataclass(frozen=True)
class ImageAnalysis:
    background: str
    """Palette name of the estimated background colour."""
    objects: tuple[DetectedObject, ...]
    """Detected objects, largest α mass first."""


def _as_rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W, 3) float64 in [0, 1] from a PIL image or a uint8 / float array."""
    if isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    else:
        arr = np.asarray(image)
        arr = arr.astype(np.float64) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float64)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {arr.shape}")
    return arr


def nearest_colour(rgb: np.ndarray) -> np.ndarray:
    """Index into the palette of the nearest colour of each (..., 3) pixel."""
    d = ((rgb[..., None, :] - _PALETTE) ** 2).sum(-1)  # (..., K)
    return d.argmin(-1)


def _background(rgb: np.ndarray) -> int:
    border = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]])  # (P, 3)
    return int(np.bincount(nearest_colour(border), minlength=len(_NAMES)).argmax())


def _coverage(rgb: np.ndarray, bg: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: the palette colour best explaining it as a bg blend, and its coverage α ∈ [0, 1]."""
    base = _PALETTE[bg]
    delta = rgb - base  # (H, W, 3)
    dirs = _PALETTE - base  # (K, 3)
    norms = (dirs**2).sum(-1)  # (K,)
    norms[bg] = np.inf
    alpha = np.clip((delta @ dirs.T) / norms, 0.0, 1.0)  # (H, W, K)
    residual = np.linalg.norm(delta[..., None, :] - alpha[..., None] * dirs, axis=-1)  # (H, W, K)
    residual[..., bg] = np.inf
    best = residual.argmin(-1)  # (H, W)
    best_alpha = np.take_along_axis(alpha, best[..., None], -1)[..., 0]
    best_residual = np.take_along_axis(residual, best[..., None], -1)[..., 0]
    valid = (best_alpha >= MIN_ALPHA) & (best_residual <= MAX_RESIDUAL)
    return best, np.where(valid, best_alpha, 0.0)


def _describe(colour: int, alpha: np.ndarray) -> DetectedObject:
    h, w = alpha.shape
    area = float(alpha.sum())
    ys, xs = np.mgrid[0:h, 0:w]
    cx = float((alpha * (xs + 0.5)).sum() / area) / w
    cy = float((alpha * (ys + 0.5)).sum() / area) / h
    widest, tallest = float(alpha.sum(1).max()), float(alpha.sum(0).max())
    return DetectedObject(
        colour=_NAMES[colour],
        area=area,
        centroid=(cx, cy),
        width=widest / w,
        fill_ratio=area / max(widest * tallest, 1e-9),
    )


def analyze_image(image: Image.Image | np.ndarray, max_objects: int = 2) -> ImageAnalysis:
    """Background colour and up to `max_objects` objects (largest first) found in one image."""
    rgb = _as_rgb(image)
    bg = _background(rgb)
    best, alpha = _coverage(rgb, bg)
    masses = np.bincount(best.ravel(), weights=alpha.ravel(), minlength=len(_NAMES))
    min_mass = MIN_OBJECT_FRACTION * best.size
    order = [int(k) for k in np.argsort(-masses, kind="stable") if masses[k] >= min_mass and k != bg]
    objects = tuple(_describe(k, np.where(best == k, alpha, 0.0)) for k in order[:max_objects])
    return ImageAnalysis(background=_NAMES[bg], objects=objects)


def predict_attributes(image: Image.Image | np.ndarray, layout: str = "single") -> dict[str, Any]:
    """The checker's reading of an image in the format of `shapes` attributes (objects may be missing)."""
    analysis = analyze_image(image, max_objects=1 if layout == "single" else 2)
    objs = [{"shape": o.shape, "colour": o.colour, "size": o.size, "position": o.position} for o in analysis.objects]
    relation = None
    if layout == "pair" and len(analysis.objects) == 2:
        (x1, y1), (x2, y2) = (o.centroid for o in analysis.objects)
        horizontal = abs(x2 - x1) >= abs(y2 - y1)
        relation = "left of" if horizontal else "above"
        first_is_second = (x1 > x2) if horizontal else (y1 > y2)
        if first_is_second:  # report objects in the order the relation reads (left/top first)
            objs = objs[::-1]
    return {"background": analysis.background, "layout": layout, "relation": relation, "objects": objs}


def score_image(image: Image.Image | np.ndarray, attributes: dict[str, Any]) -> dict[str, list[bool]]:
    """Per-attribute correctness of one image against its prompt's `attributes`.

    Single object: background, colour, shape, position, size (one check each). Pair: background,
    colour and shape per object (the shape of the blob of the prompted colour), and relation (the
    blob of the first colour is left of / above the blob of the second)."""
    layout = attributes["layout"]
    want = attributes["objects"]
    analysis = analyze_image(image, max_objects=len(want))
    found = {o.colour: o for o in analysis.objects}
    checks: dict[str, list[bool]] = {"background": [analysis.background == attributes["background"]]}
    checks["colour"] = [w["colour"] in found for w in want]
    checks["shape"] = [w["colour"] in found and found[w["colour"]].shape == w["shape"] for w in want]
    if layout == "single":
        obj = analysis.objects[0] if analysis.objects else None
        checks["position"] = [obj is not None and obj.position == want[0]["position"]]
        checks["size"] = [obj is not None and obj.size == want[0]["size"]]
    else:
        a, b = (found.get(w["colour"]) for w in want)
        ok = False
        if a is not None and b is not None:
            dx, dy = b.centroid[0] - a.centroid[0], b.centroid[1] - a.centroid[1]
            ok = (dx > abs(dy)) if attributes["relation"] == "left of" else (dy > abs(dx))
        checks["relation"] = [ok]
    return checks


def chance_levels() -> dict[str, float]:
    """Chance accuracy per scored attribute: `shapes.chance_levels()` plus the pair relation."""
    return {**shapes.chance_levels(), "relation": RELATION_CHANCE}


def score_images(images: Iterable[Image.Image | np.ndarray], attributes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy per attribute over many images, with chance beside it and the per-image checks.

    Returns {"accuracy": {attr: float}, "chance": {attr: float}, "counts": {attr: n_checks},
    "per_image": [checks, ...]}."""
    per_image = [score_image(img, attrs) for img, attrs in zip(images, attributes, strict=True)]
    totals: dict[str, list[bool]] = {}
    for checks in per_image:
        for name, values in checks.items():
            totals.setdefault(name, []).extend(values)
    chance = chance_levels()
    return {
        "accuracy": {k: float(np.mean(v)) for k, v in totals.items()},
        "chance": {k: chance[k] for k in totals},
        "counts": {k: len(v) for k, v in totals.items()},
        "per_image": per_image,
    }
