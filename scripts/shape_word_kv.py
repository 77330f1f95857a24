"""How far apart does a frozen base put the shape words, in what the image experts read? (issue 23)

    PYTHONPATH=$PWD .venv/bin/python scripts/shape_word_kv.py                       # the shipped tiny LM
    PYTHONPATH=$PWD .venv/bin/python scripts/shape_word_kv.py --base .cache/smollm2-135m-instruct

In LMFusion an image token reads the caption through the *frozen* text layers' keys and values. The shapes
captions are rendered with every template of `data.shapes` and every background colour; one word is swapped
at a time, either the shape word (circle / square / triangle) or the object's colour word, all else equal.
For each layer the script prints the relative distance ‖a − b‖ / mean(‖a‖, ‖b‖) of the keys and of the
values, at the swapped word's own position and averaged over it and every later caption position, mean over
all pairs. If the shape words sit much closer together than the colour words, the generator has a weaker
handle on the shape than on the colour, whatever the image experts learn."""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lmfusion_cli.data import shapes  # noqa: E402

OBJECT_COLOURS = ("red", "yellow", "purple")  # three, as there are three shapes


def keys_values(lm, tok, text: str) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Token ids of `text` and, per layer, its keys and values as the frozen attention computes them."""
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        out = lm(ids, output_hidden_states=True)
        per_layer = []
        for i, layer in enumerate(lm.model.layers):
            h = layer.input_layernorm(out.hidden_states[i][0])
            per_layer.append((layer.self_attn.k_proj(h), layer.self_attn.v_proj(h)))
    return ids[0], per_layer


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm(dim=-1) / ((a.norm(dim=-1) + b.norm(dim=-1)) / 2)).mean().item()


def captions(swap: str) -> list[list[str]]:
    """Groups of captions equal but for the swapped word (`shape` or `colour`)."""
    groups = []
    for template, bg in itertools.product(shapes.SINGLE_TEMPLATES, [c for c in shapes.COLOURS if c != "red"]):
        fill = {"size": "small", "where": "on the left", "bg": bg}
        if swap == "shape":
            groups.append([template.format(colour="red", shape=s, **fill) for s in shapes.SHAPES])
        else:
            groups.append([template.format(colour=c, shape="circle", **fill) for c in OBJECT_COLOURS if c != bg])
    return groups


def measure(lm, tok, swap: str) -> torch.Tensor:
    """(layers, 4): key and value distance at the word, then key and value distance from the word on."""
    rows = []
    for group in captions(swap):
        encoded = [keys_values(lm, tok, text) for text in group]
        for (ids_a, a), (ids_b, b) in itertools.combinations(encoded, 2):
            if len(ids_a) != len(ids_b):  # a word of several tokens would shift the positions
                continue
            first = int((ids_a != ids_b).nonzero()[0])
            rows.append(
                [
                    [
                        relative(ka[first], kb[first]),
                        relative(va[first], vb[first]),
                        relative(ka[first:], kb[first:]),
                        relative(va[first:], vb[first:]),
                    ]
                    for (ka, va), (kb, vb) in zip(a, b)
                ]
            )
    if not rows:
        sys.exit(f"error: every {swap} swap changes the caption's length in tokens; this base cannot be compared")
    return torch.tensor(rows).mean(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=str(Path(__file__).resolve().parents[1] / "lmfusion_cli/assets/tiny-lm"))
    args = parser.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.base)
    lm = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32).eval()
    results = {swap: measure(lm, tok, swap) for swap in ("shape", "colour")}
    print(f"base {args.base}: relative distance of the frozen keys / values when one word is swapped")
    print(
        "| layer | shape word: K / V at it | colour word: K / V at it | shape: K / V from it on | colour: K / V from it on |"
    )
    print("|---|---|---|---|---|")
    for i in range(results["shape"].shape[0]):
        s, c = results["shape"][i].tolist(), results["colour"][i].tolist()
        print(
            f"| {i} | {s[0]:.3f} / {s[1]:.3f} | {c[0]:.3f} / {c[1]:.3f} | {s[2]:.3f} / {s[3]:.3f} | {c[2]:.3f} / {c[3]:.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
