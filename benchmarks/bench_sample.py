"""Sampling speed: prefix KV cache vs recomputing the prefix, and batched CFG vs two passes.

    python benchmarks/bench_sample.py                      # CPU, tiny-LM-sized model (issue 8 goals)
    python benchmarks/bench_sample.py --size 1b --device cuda --batch 16   # images/s, Llama-3.2-1B shape

Models are random (speed does not depend on the weights): `tiny` has the shape of the embedded tiny
LM (hidden 256, 4 layers, 4/2 heads, intermediate 688, vocabulary 2048); `1b` the shape of
Llama-3.2-1B (hidden 2048, 16 layers, 32/8 heads, intermediate 8192, vocabulary 128256). Images are
16×16×4 latents in 2×2 patches = 64 tokens through the U-Net patcher (64, 128 channels).

Printed: seconds for one text→image sample (prompt of --prompt-tokens tokens, --steps steps, CFG)
with and without the cache, and seconds per guided denoising step batched (one pass of 2B rows)
vs two passes of B rows; the ratios and the issue's goals (cache ≥ 3×, batched ≥ 1.5×).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import transformers

from lmfusion_cli.model import LMFusionModel
from lmfusion_cli.sampling.config import DecodingOptions
from lmfusion_cli.sampling.generate import generate_latents
from lmfusion_cli.sampling.t2i import image_prefix, prompt_denoiser

SIZES = {
    "tiny": dict(
        vocab_size=2048,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "1b": dict(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        rope_theta=500000.0,
        tie_word_embeddings=True,
    ),
}


def build(size: str, device: str, dtype: torch.dtype, patcher: str = "unet") -> LMFusionModel:
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(transformers.LlamaConfig(max_position_embeddings=4096, **SIZES[size]))
    vocab = SIZES[size]["vocab_size"]
    model = LMFusionModel.from_base(
        base,
        latent_size=16,
        latent_channels=4,
        patch_size=2,
        unet_channels=(64, 128),
        patcher=patcher,
        boi_id=vocab - 2,
        eoi_id=vocab - 1,
    )
    return model.to(device=device, dtype=dtype).eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> float:
    """Median wall time of `fn()` over `repeats` runs (after one warm-up run)."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument(
        "--patcher",
        choices=["unet", "linear"],
        default="unet",
        help="unet: the paper's (and the GPU configs'); linear: the tiny demo's",
    )
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--cfg-scale", type=float, default=DecodingOptions.cfg_scale)
    parser.add_argument("--batch", type=int, default=1, help="images per batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build(args.size, args.device, getattr(torch, args.dtype), args.patcher)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 1000, (args.prompt_tokens,), generator=g).tolist() for _ in range(args.batch)]
    seeds = list(range(args.batch))
    print(
        f"model {args.size} ({args.patcher} patcher) on {args.device} ({args.dtype}), {args.prompt_tokens}-token prompt, "
        f"{model.num_image_tokens} image tokens, {args.steps} steps, cfg {args.cfg_scale}, batch {args.batch}, "
        f"torch threads {torch.get_num_threads()}"
    )

    def sample(use_cache: bool, batch_branches: bool = True):
        return lambda: generate_latents(
            model,
            prompts,
            seeds,
            bos_id=1,
            options=DecodingOptions(cfg_scale=args.cfg_scale, steps=args.steps, sampler="ddim", cache=use_cache),
            batch_branches=batch_branches,
        )

    with torch.no_grad():
        cached = timed(sample(True), args.device, args.repeats)
        uncached = timed(sample(False), args.device, max(1, args.repeats - 2))
        print(f"full sample, cached   : {cached:8.3f} s  ({args.batch / cached:.2f} images/s)")
        print(f"full sample, uncached : {uncached:8.3f} s")
        print(f"cache speed-up        : {uncached / cached:8.2f}x   (goal >= 3x)")

        x = torch.randn(args.batch, 4, 16, 16, generator=g).to(args.device, getattr(torch, args.dtype))
        prefixes = [image_prefix(p, bos_id=1, boi_id=model.boi_id) for p in prompts]
        uncond = image_prefix([], bos_id=1, boi_id=model.boi_id)
        step_repeats = max(5, args.repeats * 5)
        results = {}
        for name, batched in (("batched (one pass, 2B rows)", True), ("two passes (B rows each)", False)):
            denoiser = prompt_denoiser(model, prefixes, uncond, args.cfg_scale, batch_branches=batched)
            results[name] = timed(lambda d=denoiser: d.predict(x, 500.0), args.device, step_repeats)
            print(f"CFG step, {name:28s}: {results[name] * 1e3:8.2f} ms")
        ratio = results["two passes (B rows each)"] / results["batched (one pass, 2B rows)"]
        print(f"batched CFG speed-up  : {ratio:8.2f}x   (goal >= 1.5x)")


if __name__ == "__main__":
    main()
