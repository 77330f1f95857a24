"""Interleaved documents: text, an image, more text — so a model learns *when* to open an image.

One data item holds one image; its document is the text around it: `{"before": str, "after": str}` in
the item's metadata (`meta["document"]`, carried by `prepare` into the shards and by `encode-latents`
into the latent cache). Training lays it out as `[bos] before BOI image EOI after [eos]`, the image a
generation target (`training/loader.py`, `data.interleaved_fraction`).

- `shapes_document`: the shapes set's documents (`prepare --source shapes --interleaved`), e.g.
  "Here is a picture of a red circle on a blue background: <image> The circle is on the left.", from
  several intro and follow-up templates.
- `jsonl_items`: `prepare --source jsonl` lines with `parts` (a list of `{"text": ...}` and
  `{"image": path}`) become one item per image, its document the text since the previous image and up
  to the next one. A web corpus maps onto it directly: an OBELICS row (`texts`, `images`: aligned
  lists, one of the two None per slot) gives `parts` in slot order; an MMC4 document (`text_list`,
  `image_info` with `matched_text_index`) gives `parts` with each image placed before its matched
  sentence. Documents with more images become several items (one image each, with its own context).
- `text_only_document`: the negatives, text from the tiny LM's corpus in which no image follows.

This module builds strings; it does not tokenise or touch images.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmfusion_cli.data import shapes

INTRO_TEMPLATES = (
    "Here is a picture of {caption}:",
    "Here is an image of {caption}:",
    "This is a picture of {caption}:",
    "Look at this picture of {caption}:",
    "Below is an image of {caption}:",
)
"""The text that opens an image; held-out prompts use the same templates on held-out items."""
SINGLE_FOLLOW_UPS = (
    "The {shape} is {where}.",
    "The background is {bg}.",
    "The {shape} is {colour}.",
    "It is a {size} {shape}.",
)
PAIR_FOLLOW_UPS = (
    "The {c1} {s1} is {relation} the {c2} {s2}.",
    "The background is {bg}.",
    "There are two shapes.",
)


def shapes_document(attributes: dict[str, Any], caption: str, rng: np.random.Generator) -> dict[str, str]:
    """The document of one shapes item: an intro naming `caption`, then one follow-up sentence."""
    intro = INTRO_TEMPLATES[int(rng.integers(len(INTRO_TEMPLATES)))].format(caption=caption)
    objs, bg = attributes["objects"], attributes["background"]
    if attributes["layout"] == "single":
        o = objs[0]
        follow = SINGLE_FOLLOW_UPS[int(rng.integers(len(SINGLE_FOLLOW_UPS)))].format(
            shape=o["shape"], where=shapes.POSITION_PHRASES[o["position"]], bg=bg, colour=o["colour"], size=o["size"]
        )
    else:
        relation = "to the left of" if attributes["relation"] == "left of" else "above"
        follow = PAIR_FOLLOW_UPS[int(rng.integers(len(PAIR_FOLLOW_UPS)))].format(
            c1=objs[0]["colour"],
            s1=objs[0]["shape"],
            c2=objs[1]["colour"],
            s2=objs[1]["shape"],
            relation=relation,
            bg=bg,
        )
    return {"before": intro[0].upper() + intro[1:], "after": follow}


def shapes_prompt(caption: str, template_index: int) -> str:
    """A held-out interleaved prompt: intro template `template_index` on `caption` (ends with ':')."""
    intro = INTRO_TEMPLATES[template_index % len(INTRO_TEMPLATES)].format(caption=caption)
    return intro[0].upper() + intro[1:]


def jsonl_items(parts: Any) -> list[tuple[str, dict[str, str], str | None]]:
    """`parts` of one JSONL document → per image: (image path, {"before", "after"}, its caption or None).

    Raises ValueError (the caller skips and counts the line) for a malformed list or one without images.
    """
    if not isinstance(parts, list) or not parts:
        raise ValueError("parts must be a non-empty list of {'text': ...} and {'image': ...} objects")
    kinds = []
    for part in parts:
        if isinstance(part, dict) and isinstance(part.get("text"), str) and "image" not in part:
            kinds.append("text")
        elif isinstance(part, dict) and isinstance(part.get("image"), str):
            kinds.append("image")
        else:
            raise ValueError(f"a part must be {{'text': str}} or {{'image': path}}, got {part!r:.60}")
    images = [i for i, kind in enumerate(kinds) if kind == "image"]
    if not images:
        raise ValueError("the document has no image part")
    out = []
    for n, i in enumerate(images):
        start = images[n - 1] + 1 if n else 0
        end = images[n + 1] if n + 1 < len(images) else len(parts)
        before = " ".join(parts[j]["text"].strip() for j in range(start, i)).strip()
        after = " ".join(parts[j]["text"].strip() for j in range(i + 1, end)).strip()
        caption = parts[i].get("caption")
        out.append(
            (parts[i]["image"], {"before": before, "after": after}, caption if isinstance(caption, str) else None)
        )
    return out


def text_only_document(index: int, seed: int = 0) -> str:
    """Text-only negative `index`: a training document of the tiny LM's general corpus (no image follows)."""
    from lmfusion_cli.data.corpus import make_document

    return make_document("general", "train", index, seed).text
