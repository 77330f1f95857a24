"""Does a trained model open images by itself, and only where the prose asks for one? (issue 18)

  PYTHONPATH=. python scripts/measure_interleaved.py --checkpoint RUN [--num 100] [--out m.json]

- picture prompts: held-out shapes items (`shapes.make_item(i, 1000)`, a seed training did not use),
  each as "Here is a picture of <caption>:" with the intro templates of data/interleaved.py in turn;
  greedy text, up to 8 new tokens and one image. Counted: documents that open an image, and among
  those, images whose background (pixel checker) is the prompt's background colour (chance 1/8).
- plain prompts: the first sentence of held-out documents of the tiny LM's general corpus; greedy, up
  to 32 new tokens; a BOI ends the document (`max_images=0`). Counted: documents that open an image.

Prints and writes one JSON record with the rates and counts.
"""

from __future__ import annotations

import argparse
import json

import torch

from lmfusion_cli.data import shapes
from lmfusion_cli.data.corpus import make_document
from lmfusion_cli.data.interleaved import INTRO_TEMPLATES, shapes_prompt
from lmfusion_cli.evaluation.shapes_checker import predict_attributes
from lmfusion_cli.sampling.interleaved import generate_interleaved
from lmfusion_cli.sampling.loading import load_for_sampling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--num", type=int, default=100)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--cfg-scale", type=float, default=3.0)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    loaded = load_for_sampling(args.checkpoint)
    model, tok, codec = loaded.model, loaded.tokenizer, loaded.codec

    items = [shapes.make_item(i, 1000, resolution=8) for i in range(args.num)]
    prompts = [shapes_prompt(it.caption, i) for i, it in enumerate(items)]
    docs = generate_interleaved(
        model,
        prompts,
        tokenizer=tok,
        vae=codec,
        max_new_tokens=8,
        max_images=1,
        cfg_scale=args.cfg_scale,
        steps=args.steps,
        sampler="dpm-solver",
        seed=0,
    )
    opened = [bool(d.images) for d in docs]
    follows = [
        predict_attributes(d.images[0])["background"] == it.attributes["background"]
        for d, it in zip(docs, items)
        if d.images
    ]

    plain = []
    for i in range(10 * args.num):
        if len(plain) == args.num:
            break
        sentence = make_document("general", "heldout", i).sentences[0]
        if sentence not in plain:
            plain.append(sentence)
    plain_docs = generate_interleaved(model, plain, tokenizer=tok, vae=codec, max_new_tokens=32, max_images=0, seed=0)
    plain_opened = [d.stop_reason == "image-limit" for d in plain_docs]

    record = {
        "checkpoint": str(args.checkpoint),
        "num": args.num,
        "templates": len(INTRO_TEMPLATES),
        "picture_prompts_open_image": sum(opened) / len(opened),
        "background_follows_prose": (sum(follows) / len(follows)) if follows else None,
        "background_chance": 1 / len(shapes.COLOURS),
        "plain_prompts_open_image": sum(plain_opened) / len(plain_opened),
        "counts": {
            "picture_opened": sum(opened),
            "background_right": sum(follows),
            "plain_opened": sum(plain_opened),
            "plain": len(plain_opened),
        },
        "examples": [
            {
                "prompt": d.prompt,
                "text": [s.get("text") for s in d.segments if s["type"] == "text"],
                "image": bool(d.images),
            }
            for d in docs[:3]
        ]
        + [
            {
                "prompt": d.prompt,
                "text": [s.get("text") for s in d.segments if s["type"] == "text"],
                "stop": d.stop_reason,
            }
            for d in plain_docs[:3]
        ],
    }
    print(json.dumps(record, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
