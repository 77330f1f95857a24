"""Scoring captions of shapes images: CIDEr against the shapes references, and attribute accuracy.

References: every template of `lmfusion_cli.data.shapes` rendered with the item's attributes
(`shapes.caption_for(attributes, i)` for each template index) — all of them describe the image
correctly, so a caption in any template style can reach a high CIDEr.

Attribute accuracy reads the caption's words (lower-cased, punctuation ignored):
- background: a colour word followed by `background` / `image`, or `on <colour>` at the end;
- objects: `<colour> <shape>` bigrams (optionally after a size word);
- position (single object): one of `shapes.POSITION_PHRASES`; size: a size word before the object;
- relation (pairs): `X to the left of Y`, `X to the right of Y`, `X above Y`, `X below Y`, or
  `X on the left/at the top and Y on the right/at the bottom`.
Background, colour and shape are always scored (a caption that omits them is wrong); position,
size and relation are scored only when the caption states them (the templates may omit position
and size), and how often they are stated is reported beside the accuracy.

Image checking is `shapes_checker.py`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from lmfusion_cli.data import shapes
from lmfusion_cli.evaluation.metrics import cider_scores
from lmfusion_cli.evaluation.ptb import Backend

_COLOUR = "|".join(shapes.COLOURS)
_SHAPE = "|".join(shapes.SHAPES)
_SIZE = "|".join(shapes.SIZES)
_OBJECT = re.compile(rf"\b(?:(?P<size>{_SIZE}) )?(?P<colour>{_COLOUR}) (?P<shape>{_SHAPE})\b")
_BACKGROUND = re.compile(rf"\b(?P<colour>{_COLOUR}) (?:background|image)\b|\bon (?P<end>{_COLOUR})$")
_POSITION = {phrase: name for name, phrase in shapes.POSITION_PHRASES.items()}
_RELATIONS = (  # pattern → (relation, whether the first-mentioned object is the relation's first)
    (re.compile(r"to the left of"), "left of", True),
    (re.compile(r"to the right of"), "left of", False),
    (re.compile(r"\babove\b"), "above", True),
    (re.compile(r"\bbelow\b"), "above", False),
    (re.compile(r"on the left and .* on the right"), "left of", True),
    (re.compile(r"on the right and .* on the left"), "left of", False),
    (re.compile(r"at the top and .* at the bottom"), "above", True),
    (re.compile(r"at the bottom and .* at the top"), "above", False),
)


def shapes_references(attributes: dict[str, Any]) -> list[str]:
    """All template captions of `attributes` (the reference set for CIDEr)."""
    count = (
        len(shapes.SINGLE_TEMPLATES)
        if attributes["layout"] == "single"
        else len(shapes.PAIR_TEMPLATES[attributes["relation"]])
    )
    return [shapes.caption_for(attributes, i) for i in range(count)]


def _normalise(caption: str) -> str:
    return " ".join(re.sub(r"[^a-z ]+", " ", caption.lower()).split())


def parse_caption(caption: str) -> dict[str, Any]:
    """Attributes stated by a caption: background, objects (in order of mention), positions, relation."""
    text = _normalise(caption)
    bg = None
    for m in _BACKGROUND.finditer(text):
        bg = m.group("colour") or m.group("end")
        break
    objects = [
        {"colour": m.group("colour"), "shape": m.group("shape"), "size": m.group("size")}
        for m in _OBJECT.finditer(text)
    ]
    positions = [name for phrase, name in _POSITION.items() if phrase in text]
    relation, first_is_first = None, True
    for pattern, rel, forward in _RELATIONS:
        if pattern.search(text):
            relation, first_is_first = rel, forward
            break
    ordered = objects[:2] if first_is_first else objects[:2][::-1]
    return {
        "background": bg,
        "objects": objects,
        "positions": positions,
        "relation": relation,
        "relation_order": [o["colour"] for o in ordered] if relation else None,
    }


def score_caption(caption: str, attributes: dict[str, Any]) -> dict[str, list[bool]]:
    """Per-attribute correctness of one caption (see the module docstring for what is scored when)."""
    parsed = parse_caption(caption)
    said = {o["colour"]: o for o in parsed["objects"]}
    want = attributes["objects"]
    checks: dict[str, list[bool]] = {
        "background": [parsed["background"] == attributes["background"]],
        "colour": [w["colour"] in said for w in want],
        "shape": [w["colour"] in said and said[w["colour"]]["shape"] == w["shape"] for w in want],
    }
    if attributes["layout"] == "single":
        if parsed["positions"]:
            checks["position"] = [parsed["positions"] == [want[0]["position"]]]
        size = said.get(want[0]["colour"], {}).get("size")
        if size is not None:
            checks["size"] = [size == want[0]["size"]]
    elif parsed["relation"] is not None:
        checks["relation"] = [
            parsed["relation"] == attributes["relation"] and parsed["relation_order"] == [w["colour"] for w in want]
        ]
    return checks


def score_captions(
    captions: Mapping[str, str], attributes: Mapping[str, dict[str, Any]], tokenizer: Backend = "auto"
) -> dict[str, Any]:
    """CIDEr against the template references plus attribute accuracy, for id → caption.

    Returns {"cider": float, "cider_per_item": {id: float}, "accuracy": {attr: float | None (never stated)},
    "stated": {attr: fraction of captions stating it}, "counts": {attr: n_checks}}."""
    missing = [k for k in captions if k not in attributes]
    if missing:
        raise ValueError(f"{len(missing)} caption id(s) have no attributes, e.g. {missing[:3]}")
    refs = {k: shapes_references(attributes[k]) for k in captions}
    cider, per_item = cider_scores(refs, dict(captions), tokenizer)
    totals: dict[str, list[bool]] = {}
    stated: dict[str, int] = {}
    applicable: dict[str, int] = {}
    for key, caption in captions.items():
        attrs = attributes[key]
        names = ["background", "colour", "shape"] + (
            ["position", "size"] if attrs["layout"] == "single" else ["relation"]
        )
        for name in names:
            applicable[name] = applicable.get(name, 0) + 1
        for name, values in score_caption(caption, attrs).items():
            totals.setdefault(name, []).extend(values)
            stated[name] = stated.get(name, 0) + 1
    return {
        "cider": cider,
        "cider_per_item": per_item,
        "accuracy": {k: float(np.mean(totals[k])) if k in totals else None for k in applicable},
        "stated": {k: stated.get(k, 0) / n for k, n in applicable.items()},
        "counts": {k: len(totals.get(k, [])) for k in applicable},
    }
