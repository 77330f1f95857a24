"""Routed LMFusion vs the base model and vs both-experts-on-every-token: forward+backward time.

Prints medians of several interleaved runs in one process, CPU fp32, on a mid-size random
Llama-layout model (hidden 512, 8 layers, one row of 1024 tokens, half of them image tokens):
- routed / base: the LMFusion training step (frozen text, trainable image experts + U-Net patcher)
  over the time of the base model's own training step on 1024 text tokens (goal <= 1.15);
- routed-unfrozen / base: the same with the text modules trainable (equal weight-gradient work);
- routed / both-experts: over a naive layer that runs the text and the image expert on every token
  and picks by modality (tests/model/naive.py; same SDPA kernel and mask) (goal <= 0.6).

    .venv/bin/python benchmarks/bench_model.py [--runs 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lmfusion_cli.model import ImagePart, LMFusionModel, TextPart, build_example, pack  # noqa: E402
from lmfusion_cli.model.attention import MaskInfo, dense_mask  # noqa: E402
from tests.model.naive import naive_hidden  # noqa: E402


def build(args):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 11 // 4,
        num_hidden_layers=args.layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=4096,
    )
    base = LlamaForCausalLM(config)
    latent = 2 * int((args.tokens // 4) ** 0.5)  # two images of tokens/4 tokens each, patch 2
    model = LMFusionModel.from_base(LlamaForCausalLM(config), latent_size=latent, unet_channels=(64, 128))
    model.base.load_state_dict(base.state_dict())
    unfrozen = LMFusionModel.from_base(LlamaForCausalLM(config), model.config, freeze_text=False)
    unfrozen.load_state_dict(model.state_dict())
    N = model.num_image_tokens
    text = (args.tokens - 2 * N - 4) // 2
    ids = lambda n: torch.randint(3, args.vocab, (n,)).tolist()  # noqa: E731
    parts = [TextPart(ids(text)), ImagePart(True), TextPart(ids(args.tokens - 2 * N - 4 - text)), ImagePart(True)]
    example = build_example(
        parts, num_image_tokens=N, boi_id=model.boi_id, eoi_id=model.eoi_id, latents=torch.randn(2, 4, latent, latent)
    )
    batch, latents = pack([example], row_length=args.tokens)
    return base, model, unfrozen, batch, latents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (1: steadiest on a shared CPU)")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=8192)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base, model, unfrozen, batch, latents = build(args)
    ids = torch.randint(3, args.vocab, (1, args.tokens))
    t = torch.tensor([300.0, 700.0])
    noise = torch.randn_like(latents)
    mask = dense_mask(MaskInfo(batch.image_index, batch.image_index, batch.document_ids, batch.document_ids, 0))
    labels = batch.labels.reshape(-1)

    def base_step():
        base(ids, labels=ids).loss.backward()

    def routed_step():
        model(batch, latents, timesteps=t, noise=noise).loss.backward()

    def unfrozen_step():  # same work as the base's step: every text weight gets a gradient too
        unfrozen(batch, latents, timesteps=t, noise=noise).loss.backward()

    def both_experts_step():  # same loss as routed_step, both experts on every token
        noisy = model.diffusion.add_noise(latents, noise, t)
        tokens, skips = model.patcher.encode(noisy, t)
        h = naive_hidden(model, batch, tokens, mask=mask, sdpa=True).view(-1, args.hidden)
        targets = (labels != -100).nonzero().squeeze(1)
        text_loss = F.cross_entropy(model._text_head(h[targets]), labels[targets])
        image = batch.modality.reshape(-1) == 1
        grid = model.image_norm(h[image]).view(2, model.num_image_tokens, -1)
        prediction = model.patcher.decode(grid, t, skips)
        (text_loss + model.config.lambda_image * F.mse_loss(prediction, noise)).backward()

    steps = {"base": base_step, "routed": routed_step, "routed-unfrozen": unfrozen_step, "both": both_experts_step}
    times = {name: [] for name in steps}
    for run in range(args.runs + 1):  # interleaved, first round is warm-up
        for name, step in steps.items():
            base.zero_grad(set_to_none=True)
            model.zero_grad(set_to_none=True)
            unfrozen.zero_grad(set_to_none=True)
            start = time.perf_counter()
            step()
            if run:
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    print(
        f"config: hidden {args.hidden}, {args.layers} layers, {args.tokens} tokens "
        f"({2 * model.num_image_tokens} image), fp32 CPU, {args.threads} threads, median of {args.runs}"
    )
    for name, value in median.items():
        print(f"  {name:>15} forward+backward: {value * 1000:8.1f} ms")
    print(f"routed / base                  = {median['routed'] / median['base']:.3f}   (goal <= 1.15)")
    print(f"routed / both-experts          = {median['routed'] / median['both']:.3f}   (goal <= 0.6)")
    print(
        f"routed-unfrozen / base         = {median['routed-unfrozen'] / median['base']:.3f}   (same weight-grad work as base)"
    )


if __name__ == "__main__":
    main()
