"""Caption cost: beam search alone vs beam search reranked by the image's likelihood (`--rerank image`).

    python benchmarks/bench_rerank.py                       # CPU, tiny-LM-sized model, linear patcher
    python benchmarks/bench_rerank.py --size 1b --device cuda --dtype bfloat16 --batch 16

Models are random (`bench_sample.build`; speed does not depend on the weights): beams rarely end early,
so every image gets `--beams` candidates of `--max-new-tokens` tokens, the most a rerank scores. Printed:
seconds per image for beam search and for beam search + rerank, their ratio, and the rerank's own share
(len(LEVELS) × DRAWS training-style forwards of [BOS] caption [BOI] image [EOI] per candidate).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
from bench_sample import SIZES, build, timed

from lmfusion_cli.sampling import rerank
from lmfusion_cli.sampling.captioning import caption_latents
from lmfusion_cli.sampling.config import DecodingOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--patcher", choices=["unet", "linear"], default="linear")
    parser.add_argument("--batch", type=int, default=8, help="images per batch")
    parser.add_argument("--beams", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build(args.size, args.device, getattr(torch, args.dtype), args.patcher)
    side, channels = model.config.latent_size, model.config.latent_channels
    latents = torch.randn(args.batch, channels, side, side, generator=torch.Generator().manual_seed(0))
    latents = latents.to(args.device, getattr(torch, args.dtype))
    beam = DecodingOptions(decoding="beam", num_beams=args.beams, max_new_tokens=args.max_new_tokens)
    print(
        f"model {args.size} ({args.patcher} patcher) on {args.device} ({args.dtype}), {model.num_image_tokens} image "
        f"tokens, batch {args.batch}, {args.beams} beams, <= {args.max_new_tokens} tokens, rerank levels "
        f"{rerank.LEVELS} x {rerank.DRAWS} noise(s), torch threads {torch.get_num_threads()}"
    )
    seeds = list(range(args.batch))
    results = {}
    with torch.no_grad():
        for name, options in (("beam", beam), ("beam + rerank", replace(beam, rerank="image"))):
            seconds = timed(
                lambda o=options: caption_latents(model, latents, o, bos_id=1, eos_id=2, seeds=seeds),
                args.device,
                args.repeats,
            )
            results[name] = seconds / args.batch
            print(f"{name:14s}: {results[name]:8.3f} s per image")
    print(f"rerank / beam : {results['beam + rerank'] / results['beam']:8.2f}x")


if __name__ == "__main__":
    main()
