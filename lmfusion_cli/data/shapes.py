"""The synthetic "shapes" image/caption set of the embedded default.

One or two coloured shapes (circle, square, triangle) of a few sizes on a coloured background, with a
caption and the structured attributes that made it, so evaluation can score captions and generated
images. Captions are `fixed` (one template per layout, every attribute in its own slot: the default) or
`varied` (one of several templates per item); docs/training.md "It is the caption's wording" measured why
the demo's budget needs the former. Item `i` of seed `s` depends only on (s, i): shards made by any
number of workers are byte-identical.

This module owns the vocabulary (colours, shapes, sizes, positions, templates); the text corpus of the
embedded LM and the shapes evaluator read it from here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

import numpy as np
from PIL import Image, ImageDraw

from lmfusion_cli.data.config import CaptionStyle

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 50, 180),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.26, "large": 0.42}  # object width as a fraction of the image width
POSITIONS = {  # object centre (x, y) as fractions of the image, single-object layout
    "left": (0.27, 0.5),
    "right": (0.73, 0.5),
    "top": (0.5, 0.27),
    "bottom": (0.5, 0.73),
    "center": (0.5, 0.5),
}
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
RELATIONS = ("left of", "above")  # pair layouts: first object left of / above the second
PAIR_SIZE = 0.3
JITTER = 0.04
SUPERSAMPLE = 4

SINGLE_TEMPLATES = (
    "a {size} {colour} {shape} on a {bg} background",
    "a {colour} {shape} {where} on a {bg} background",
    "a {size} {colour} {shape} {where} of a {bg} image",
    "a {bg} background with a {size} {colour} {shape} {where}",
    "there is a {colour} {shape} {where} on a {bg} background",
    "a {colour} {shape} on {bg}",
)
PAIR_TEMPLATES = {
    "left of": (
        "a {c1} {s1} to the left of a {c2} {s2} on a {bg} background",
        "a {c2} {s2} to the right of a {c1} {s1} on a {bg} background",
        "a {bg} background with a {c1} {s1} on the left and a {c2} {s2} on the right",
    ),
    "above": (
        "a {c1} {s1} above a {c2} {s2} on a {bg} background",
        "a {c2} {s2} below a {c1} {s1} on a {bg} background",
        "a {bg} background with a {c1} {s1} at the top and a {c2} {s2} at the bottom",
    ),
}


FIXED_TEMPLATES = {"single": 3, "pair": 2}
"""The template index of each layout under `captions="fixed"`: "a {bg} background with a {size} {colour}
{shape} {where}" and "a {bg} background with a {c1} {s1} on the left and a {c2} {s2} on the right" (or
"at the top … at the bottom"). Each attribute keeps its word position whatever the scene, which is what a
small generator learns to read from ~10⁵ examples; with the templates shuffled per item it drew shapes at
chance (docs/training.md, "It is the caption's wording, not the generator")."""
CAPTION_STYLES = get_args(CaptionStyle)


@dataclass(frozen=True)
class ShapesItem:
    key: str
    image: Image.Image
    caption: str
    attributes: dict[str, Any]


def item_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def sample_attributes(rng: np.random.Generator, pair_fraction: float = 0.4) -> dict[str, Any]:
    """Draw a scene: background colour and one or two objects (colours all different from each other)."""
    colour_names = list(COLOURS)
    pair = rng.random() < pair_fraction
    picks = rng.choice(len(colour_names), size=3 if pair else 2, replace=False)
    bg = colour_names[picks[0]]
    if not pair:
        obj = {
            "shape": SHAPES[rng.integers(len(SHAPES))],
            "colour": colour_names[picks[1]],
            "size": list(SIZES)[rng.integers(len(SIZES))],
            "position": list(POSITIONS)[rng.integers(len(POSITIONS))],
        }
        return {"background": bg, "layout": "single", "relation": None, "objects": [obj]}
    relation = RELATIONS[rng.integers(len(RELATIONS))]
    first_pos, second_pos = ("left", "right") if relation == "left of" else ("top", "bottom")
    objs = [
        {
            "shape": SHAPES[rng.integers(len(SHAPES))],
            "colour": colour_names[picks[1]],
            "size": "small",
            "position": first_pos,
        },
        {
            "shape": SHAPES[rng.integers(len(SHAPES))],
            "colour": colour_names[picks[2]],
            "size": "small",
            "position": second_pos,
        },
    ]
    return {"background": bg, "layout": "pair", "relation": relation, "objects": objs}


def caption_for(attributes: dict[str, Any], template_index: int) -> str:
    """Render the caption of `attributes` with template `template_index` (modulo the template count)."""
    bg = attributes["background"]
    objs = attributes["objects"]
    if attributes["layout"] == "single":
        o = objs[0]
        template = SINGLE_TEMPLATES[template_index % len(SINGLE_TEMPLATES)]
        return template.format(
            size=o["size"], colour=o["colour"], shape=o["shape"], where=POSITION_PHRASES[o["position"]], bg=bg
        )
    templates = PAIR_TEMPLATES[attributes["relation"]]
    template = templates[template_index % len(templates)]
    return template.format(c1=objs[0]["colour"], s1=objs[0]["shape"], c2=objs[1]["colour"], s2=objs[1]["shape"], bg=bg)


def _shape_polygon(shape: str, cx: float, cy: float, half: float) -> list[tuple[float, float]] | None:
    if shape == "square":
        return [(cx - half, cy - half), (cx + half, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    if shape == "triangle":  # isosceles, pointing up, filling half its bounding box
        return [(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    return None


def render(attributes: dict[str, Any], resolution: int, rng: np.random.Generator) -> Image.Image:
    """Draw the scene at `SUPERSAMPLE`× and downsample (box filter) to `resolution`² pixels, RGB."""
    big = resolution * SUPERSAMPLE
    img = Image.new("RGB", (big, big), COLOURS[attributes["background"]])
    draw = ImageDraw.Draw(img)
    for i, obj in enumerate(attributes["objects"]):
        if attributes["layout"] == "single":
            fx, fy = POSITIONS[obj["position"]]
            width = SIZES[obj["size"]]
        else:
            if attributes["relation"] == "left of":
                fx, fy = (0.28, 0.5) if i == 0 else (0.72, 0.5)
            else:
                fx, fy = (0.5, 0.28) if i == 0 else (0.5, 0.72)
            width = PAIR_SIZE
        jx, jy = rng.uniform(-JITTER, JITTER, size=2)
        cx, cy, half = (fx + jx) * big, (fy + jy) * big, width * big / 2
        colour = COLOURS[obj["colour"]]
        poly = _shape_polygon(obj["shape"], cx, cy, half)
        if poly is None:
            draw.ellipse([cx - half, cy - half, cx + half, cy + half], fill=colour)
        else:
            draw.polygon(poly, fill=colour)
    return img.resize((resolution, resolution), Image.Resampling.BOX)


def make_item(index: int, seed: int = 0, resolution: int = 64, captions: str = "fixed") -> ShapesItem:
    """Item `index` of the shapes set for `seed`: deterministic image, caption and attributes. `captions`
    ("fixed" or "varied", `CAPTION_STYLES`) changes the caption only: image and attributes are the same."""
    if captions not in CAPTION_STYLES:
        raise ValueError(f"captions must be one of {CAPTION_STYLES}, got {captions!r}")
    rng = item_rng(seed, index)
    attributes = sample_attributes(rng)
    template_index = int(rng.integers(1 << 16))  # drawn in both styles: the image's jitter comes next
    if captions == "fixed":
        template_index = FIXED_TEMPLATES[attributes["layout"]]
    image = render(attributes, resolution, rng)
    caption = caption_for(attributes, template_index)
    return ShapesItem(key=f"shapes-{seed}-{index:08d}", image=image, caption=caption, attributes=attributes)


def chance_levels() -> dict[str, float]:
    """Chance accuracy of guessing each attribute uniformly (for reports)."""
    return {
        "background": 1 / len(COLOURS),
        "colour": 1 / (len(COLOURS) - 1),
        "shape": 1 / len(SHAPES),
        "position": 1 / len(POSITIONS),
        "size": 1 / len(SIZES),
    }
