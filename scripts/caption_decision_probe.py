"""Where the demo's captions lose the background (issue 18): the "a <colour> background" decision.

  PYTHONPATH=. python scripts/caption_decision_probe.py --checkpoint CK [--num 100] [--captions EVAL/shapes]

Two readings of one checkpoint, on held-out single-object shapes items (`shapes.make_item(i, 1000)`):

- teacher-forced, after `[BOS][BOI] image [EOI] a`: the probability of the background colour and of the
  object's colour as the next word, then, after `a <background colour>` and after `a <object colour>`,
  the probability that the next word is "background" (right after the former, wrong after the latter;
  the captions put the background first in about a third of the cases, so a model that does not look
  gives both about a third) and how often "background" is the most likely next word;
- with `--captions` (an `evaluate --suite shapes` output's `shapes/` folder: prompts.jsonl +
  captions.jsonl): the background accuracy of captions that start with "a <colour> background" and of
  the others, and which colour the background-first ones named.

Prints one JSON record.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch

from lmfusion_cli.data import shapes
from lmfusion_cli.data.images import to_unit_tensor_array
from lmfusion_cli.evaluation.shapes_captions import parse_caption
from lmfusion_cli.sampling.captioning import caption_prefix
from lmfusion_cli.sampling.context import SequenceContext
from lmfusion_cli.sampling.loading import load_for_sampling


def word_id(tokenizer, word: str) -> int:
    ids = tokenizer.encode(" " + word, add_special_tokens=False)
    if len(ids) != 1:
        raise SystemExit(f"error: '{word}' is {len(ids)} tokens for this tokenizer; the probe needs one")
    return ids[0]


@torch.no_grad()
def next_word_probs(model, tokenizer, latents: torch.Tensor, words: list[int]) -> torch.Tensor:
    """(V,) next-token probabilities after `[BOS][BOI] image [EOI] words…`."""
    context = SequenceContext(
        model, caption_prefix(model, 1, tokenizer.bos_token_id), latents, torch.zeros(1), use_cache=False
    )
    for token in words:
        context.add_tokens(torch.tensor([token]))
    return context.logits()[0].softmax(-1)


def teacher_forced(model, tokenizer, codec, num: int) -> dict:
    a = tokenizer.encode("a", add_special_tokens=False)[0]
    background = word_id(tokenizer, "background")
    sums: Counter = Counter()
    items = [shapes.make_item(i, 1000, codec.resolution) for i in range(num)]
    items = [it for it in items if it.attributes["layout"] == "single"]
    for it in items:
        latents = codec.encode(torch.from_numpy(to_unit_tensor_array(it.image))[None])
        bg, obj = (
            word_id(tokenizer, it.attributes["background"]),
            word_id(tokenizer, it.attributes["objects"][0]["colour"]),
        )
        first = next_word_probs(model, tokenizer, latents, [a])
        sums["p_background_colour_after_a"] += first[bg].item()
        sums["p_object_colour_after_a"] += first[obj].item()
        for name, colour in (("background_colour", bg), ("object_colour", obj)):
            probs = next_word_probs(model, tokenizer, latents, [a, colour])
            sums[f"p_background_after_a_{name}"] += probs[background].item()
            sums[f"background_is_argmax_after_a_{name}"] += float(probs.argmax().item() == background)
    return {"single_object_items": len(items), **{k: round(v / len(items), 4) for k, v in sums.items()}}


def caption_breakdown(folder: Path) -> dict:
    prompts = [json.loads(line) for line in (folder / "prompts.jsonl").read_text().splitlines()]
    captions = {r["index"]: r["caption"] for r in map(json.loads, (folder / "captions.jsonl").read_text().splitlines())}
    counts: Counter = Counter()
    for p in prompts:
        caption = captions.get(p["index"])
        if caption is None:
            continue
        words = caption.split()
        first = len(words) > 2 and words[2] == "background"
        kind = "background_first" if first else "other"
        counts[kind] += 1
        counts[f"{kind}_right"] += parse_caption(caption).get("background") == p["attributes"]["background"]
        if first:
            objects = {o["colour"] for o in p["attributes"]["objects"]}
            named = words[1]
            counts[
                "background_first_named_the_"
                + (
                    "background"
                    if named == p["attributes"]["background"]
                    else "object"
                    if named in objects
                    else "other"
                )
            ] += 1
    out = dict(counts)
    for kind in ("background_first", "other"):
        if counts[kind]:
            out[f"{kind}_accuracy"] = round(counts[f"{kind}_right"] / counts[kind], 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--num", type=int, default=100, help="held-out items read (single-object ones are used)")
    parser.add_argument("--captions", type=Path, help="an `evaluate --suite shapes` output's shapes/ folder")
    args = parser.parse_args()
    torch.set_num_threads(1)
    loaded = load_for_sampling(args.checkpoint)
    record = {"checkpoint": args.checkpoint, **teacher_forced(loaded.model, loaded.tokenizer, loaded.codec, args.num)}
    if args.captions:
        record["captions"] = caption_breakdown(args.captions)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
