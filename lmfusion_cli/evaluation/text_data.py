"""The templated multiple-choice set shipped for the tiny LM (`evaluation/data/tiny_mc.jsonl`).

Made deterministically from a seed by `build_tiny_mc_set`, with four kinds of item:
- `caption`: the next word of a shapes caption (vocabulary from `lmfusion_cli.data.shapes`), against
  caption words that no shapes caption ever puts there, e.g. "a small red circle on a blue" →
  background (vs circle / small / left) — so every item has exactly one right answer;
- `counting`: "one, two, three," → four (vs other number words);
- `arithmetic`: "two plus three is" → five;
- `fact`: everyday colours and facts, "the sky is" → blue.
The shipped file must equal `build_tiny_mc_set()` (a test holds them equal): rebuild it with
`python -m lmfusion_cli.evaluation.text_data`."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np

from lmfusion_cli.common.atomic import atomic_write_text
from lmfusion_cli.data import shapes

TINY_MC_PATH = Path(__file__).parent / "data" / "tiny_mc.jsonl"
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
FACTS = (
    ("the sky is", "blue"),
    ("grass is", "green"),
    ("snow is", "white"),
    ("coal is", "black"),
    ("a banana is", "yellow"),
    ("a tomato is", "red"),
    ("an orange is", "orange"),
    ("the sun is", "yellow"),
    ("a lemon is", "yellow"),
    ("milk is", "white"),
    ("the night is", "black"),
    ("a leaf is", "green"),
    ("blood is", "red"),
    ("the sea is", "blue"),
    ("a plum is", "purple"),
    ("a grape is", "purple"),
)
NUM_CHOICES = 4


def _item(
    kind: str, index: int, context: str, answer: str, distractors: list[str], rng: np.random.Generator
) -> dict[str, Any]:
    wrong = [d for d in dict.fromkeys(distractors) if d != answer][: NUM_CHOICES - 1]
    label = int(rng.integers(len(wrong) + 1))
    choices = wrong[:label] + [answer] + wrong[label:]
    return {"id": f"{kind}-{index:04d}", "kind": kind, "context": context, "choices": choices, "label": label}


def _all_captions() -> list[str]:
    """Every caption the shapes set can produce (all attributes × all templates, both layouts)."""
    colours, out = list(shapes.COLOURS), []
    for bg, c1, c2 in itertools.permutations(colours, 3):
        for s1, s2 in itertools.product(shapes.SHAPES, repeat=2):
            for relation, templates in shapes.PAIR_TEMPLATES.items():
                attrs = {
                    "background": bg,
                    "layout": "pair",
                    "relation": relation,
                    "objects": [{"colour": c1, "shape": s1}, {"colour": c2, "shape": s2}],
                }
                out.extend(shapes.caption_for(attrs, t) for t in range(len(templates)))
    for bg, c1 in itertools.permutations(colours, 2):
        for shape, size, position in itertools.product(shapes.SHAPES, shapes.SIZES, shapes.POSITIONS):
            attrs = {
                "background": bg,
                "layout": "single",
                "relation": None,
                "objects": [{"colour": c1, "shape": shape, "size": size, "position": position}],
            }
            out.extend(shapes.caption_for(attrs, t) for t in range(len(shapes.SINGLE_TEMPLATES)))
    return out


def _caption_items(rng: np.random.Generator, count: int) -> list[dict[str, Any]]:
    """Next word of a single-object caption; distractors are caption words that never follow that prefix."""
    valid_next: dict[str, set[str]] = {}
    vocabulary: set[str] = set()
    for caption in _all_captions():
        words = caption.split()
        vocabulary.update(words)
        for cut in range(1, len(words)):
            valid_next.setdefault(" ".join(words[:cut]), set()).add(words[cut])
    pool = sorted(vocabulary)
    items = []
    for i in range(count):
        attrs = shapes.sample_attributes(rng, pair_fraction=0.0)
        words = shapes.caption_for(attrs, int(rng.integers(len(shapes.SINGLE_TEMPLATES)))).split()
        cut = int(rng.integers(2, len(words)))  # predict word `cut` from the words before it
        context = " ".join(words[:cut])
        distractors = [str(w) for w in rng.permutation(pool) if w not in valid_next[context]]
        items.append(_item("caption", i, context, words[cut], distractors, rng))
    return items


def _counting_items(rng: np.random.Generator) -> list[dict[str, Any]]:
    items, i = [], 0
    for start in range(0, 8):
        for length in (2, 3):
            if start + length > 10:
                continue
            seq = NUMBERS[start : start + length]
            answer = NUMBERS[start + length]
            distractors = [str(n) for n in rng.permutation(NUMBERS) if n != answer]
            items.append(_item("counting", i, ", ".join(seq) + ",", answer, distractors, rng))
            i += 1
    return items


def _arithmetic_items(rng: np.random.Generator) -> list[dict[str, Any]]:
    items, i = [], 0
    for a in range(1, 6):
        for b in range(1, 6):
            answer = NUMBERS[a + b]
            distractors = [NUMBERS[(a + b + d) % 11] for d in (1, -1, 2, 3, -2)]
            items.append(
                _item(
                    "arithmetic",
                    i,
                    f"{NUMBERS[a]} plus {NUMBERS[b]} is",
                    answer,
                    [str(d) for d in rng.permutation(distractors)],
                    rng,
                )
            )
            i += 1
    return items


def _fact_items(rng: np.random.Generator) -> list[dict[str, Any]]:
    colours = list(shapes.COLOURS)
    return [
        _item("fact", i, context, answer, [str(c) for c in rng.permutation(colours)], rng)
        for i, (context, answer) in enumerate(FACTS)
    ]


def build_tiny_mc_set(seed: int = 0, num_caption_items: int = 200) -> list[dict[str, Any]]:
    """The templated set as JSON-ready dicts (id, kind, context, choices, label), same for the same seed."""
    rng = np.random.default_rng(seed)
    return _caption_items(rng, num_caption_items) + _counting_items(rng) + _arithmetic_items(rng) + _fact_items(rng)


def to_jsonl(items: list[dict[str, Any]]) -> str:
    import json

    return "".join(json.dumps(item, sort_keys=True) + "\n" for item in items)


def write_tiny_mc_set(path: str | Path = TINY_MC_PATH, seed: int = 0) -> Path:
    """Write the set to `path` atomically and return the path."""
    atomic_write_text(path, to_jsonl(build_tiny_mc_set(seed)))
    return Path(path)


if __name__ == "__main__":
    print(write_tiny_mc_set())
