"""Training throughput of LMFusion (issues 7, 22): frozen text vs full fine-tuning vs both experts on every token.

Runs the real training step (`training.step.train_step`: micro-batches, backward, clip, AdamW) on a
randomly initialised Llama-layout base of the tiny-LM size and prints tokens/s for

  routed-frozen   LMFusion: text modules frozen, each expert runs only on its own tokens (index routing),
                  a caption before its image runs forward only (the detached frozen prefix, issue 22)
  routed-graph    the same without the detached prefix (the caption's graph is built and walked back)
  full-finetune   the same model with the text modules trainable (freeze_text=False)
  both-experts    the anti-pattern: both experts run on every token and `torch.where` keeps one

next to what FLOP counting predicts for the batch's token mix (per token and layer, forward = F,
input-gradient = F, weight-gradient = F; frozen text tokens need no weight gradient):

  full / routed  = 3·N / (2·N_text + 3·N_image)
  both / routed  = 5·N / (2·N_text + 3·N_image)     (both experts forward: 2F; backward: frozen text
                                                    expert F + image expert 2F, on every token)

Issue 22: the FLOPs of one step are also *counted* (torch.utils.flop_counter, forward and backward) for
each variant; full/routed counted FLOPs is the FLOP-predicted speed-up, and the measured tokens/s ratio
should reach ≥ 0.95 of it. routed-graph minus routed-frozen is the caption-prefix backward that is gone.

Goals (issue 7): routed/full ≥ 0.9 × predicted; routed/both ≥ 1.6. On a GPU it also prints the model
FLOPs utilisation of the routed run, 2·P·(2·N_text + 3·N_image) FLOPs per step (P = non-embedding
parameters of one expert path; attention scores ignored) over `--peak-tflops` (H100 bf16: 989);
pass a 1B-class size (--hidden 2048 --layers 16) for issue 7's goal of ≥ 40 %.

    python benchmarks/bench_train.py [--steps 3] [--repeats 2] [--hidden 256] [--layers 4] [--batch 16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "training"))


def both_experts_layer(text_layer, image_expert, hidden, routes, shape, rope, attention, past_kv=None):
    """`routed_layer` computed the wasteful way: every expert on every token, then select (2× FLOPs)."""
    from lmfusion_cli.model.layers import _project, rope_function

    B, T = shape
    is_image = torch.zeros(hidden.shape[0], dtype=torch.bool, device=hidden.device)
    is_image[routes.image] = True
    pick = lambda image_rows, text_rows: torch.where(is_image[:, None], image_rows, text_rows)  # noqa: E731
    image = image_expert if image_expert is not None else text_layer
    text_attn, image_attn = text_layer.self_attn, getattr(image, "self_attn", text_layer.self_attn)
    x_text, x_image = text_layer.input_layernorm(hidden), image.input_layernorm(hidden)
    q, k, v = (
        pick(_project(image_attn, n, x_image), _project(text_attn, n, x_text))
        .view(B, T, -1, text_attn.head_dim)
        .transpose(1, 2)
        for n in ("q", "k", "v")
    )
    cos, sin = rope
    q, k = rope_function(text_layer)(q, k, cos, sin)
    attended = attention(q, k, v, scale=text_attn.scaling).transpose(1, 2).reshape(B * T, -1)
    hidden = hidden + pick(image_attn.o_proj(attended), text_attn.o_proj(attended))
    h = pick(
        image.mlp(image.post_attention_layernorm(hidden)), text_layer.mlp(text_layer.post_attention_layernorm(hidden))
    )
    return hidden + h, (k, v)


def build_base(folder: Path, hidden: int, layers: int) -> Path:
    from tiny_base import build_tiny_base
    from transformers import LlamaConfig, LlamaForCausalLM

    build_tiny_base(folder)  # tokenizer (+ a 2-layer model, replaced below)
    heads = max(hidden // 64, 2)
    config = LlamaConfig(
        vocab_size=24,
        hidden_size=hidden,
        intermediate_size=int(hidden * 2.6875),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


class Variant:
    """One variant's workload, optimizer and sample stream; `time_once` times `args.steps` real train steps.

    The variants' timed repeats are interleaved (round robin) by `main`, so a load change on a shared
    machine hits them alike; the best repeat of each is kept."""

    def __init__(self, variant: str, base: Path, args):
        from tiny_base import FakeLatentCache
        from torch.utils.flop_counter import FlopCounterMode

        from lmfusion_cli.common.configs import build_config
        from lmfusion_cli.training.config import TrainRunConfig
        from lmfusion_cli.training.lmfusion_workload import build_lmfusion_workload
        from lmfusion_cli.training.loader import SampleStream
        from lmfusion_cli.training.optim import build_optimizer

        self.variant, self.args = variant, args
        model_options = {"patcher": "linear", "patch_size": 2, "freeze_text": variant != "full-finetune"}
        config = build_config(
            TrainRunConfig,
            {
                "base": {"path": str(base)},
                "model": model_options,
                "data": {"latents": "fake"},
                "train": {"out": "unused", "batch_size": args.batch, "micro_batch_size": args.batch},
            },
        )
        source = FakeLatentCache(num_items=256, shape=(4, args.latent, args.latent))
        torch.manual_seed(0)
        self.workload = build_lmfusion_workload(config, source, torch.device(args.device))
        self.workload.model.detach_frozen_prefix = variant != "routed-graph"
        named = [(n, p) for n, p in self.workload.model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        self.optimizer = build_optimizer(named, config.optim)
        self.stream = SampleStream(source, 0, generation_fraction=0.8, caption_dropout=0.1)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if args.device == "cuda" else None
        batch = self.workload.make_micro_batch(self.stream.next_step(args.batch), torch.device("cpu")).inputs.batch
        self.n_image, self.n_text = int((batch.modality == 1).sum()), int((batch.modality == 0).sum())
        counter = FlopCounterMode(display=False)
        with counter:  # warm-up, counted
            self._step(self.stream.next_step(args.batch))
        self.flops = counter.get_total_flops()
        self.best = float("inf")  # seconds per token
        self.path_params = sum(p.numel() for p in self.workload.model.base.model.layers.parameters())

    def _step(self, samples):
        import lmfusion_cli.model.fusion as fusion
        from lmfusion_cli.model.layers import routed_layer
        from lmfusion_cli.training.distributed import DistContext
        from lmfusion_cli.training.step import train_step

        fusion.routed_layer = both_experts_layer if self.variant == "both-experts" else routed_layer
        try:
            return train_step(
                self.workload.model,
                self.workload,
                self.optimizer,
                self.params,
                samples,
                self.args.batch,
                1.0,
                self.autocast,
                DistContext(device=torch.device(self.args.device)),
            )
        finally:
            fusion.routed_layer = routed_layer

    def time_once(self) -> None:
        samples = [self.stream.next_step(self.args.batch) for _ in range(self.args.steps)]
        _sync(self.args.device)
        t0 = time.perf_counter()
        tokens = sum(self._step(step_samples).tokens for step_samples in samples)
        _sync(self.args.device)
        self.best = min(self.best, (time.perf_counter() - t0) / tokens)

    @property
    def rate(self) -> float:
        return 1.0 / self.best


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per timed repeat")
    parser.add_argument(
        "--repeats", type=int, default=4, help="timed repeats per variant, interleaved across variants (best is kept)"
    )
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16, help="examples per step")
    parser.add_argument("--latent", type=int, default=16, help="latent side (image tokens = (side/2)²)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="device peak (H100 SXM bf16 dense: 989)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        base = build_base(Path(tmp) / "base", args.hidden, args.layers)
        variants = {
            name: Variant(name, base, args)
            for name in ("routed-frozen", "routed-graph", "full-finetune", "both-experts")
        }
        for _ in range(args.repeats):  # round robin: load changes hit every variant alike
            for variant in variants.values():
                variant.time_once()
        rates = {name: v.rate for name, v in variants.items()}
        flops = {name: v.flops for name, v in variants.items()}
        first = variants["routed-frozen"]
        n_text, n_image, path_params = first.n_text, first.n_image, first.path_params
    n = n_text + n_image
    routed_cost = 2 * n_text + 3 * n_image
    predicted_full, predicted_both = 3 * n / routed_cost, 5 * n / routed_cost
    measured_full = rates["routed-frozen"] / rates["full-finetune"]
    measured_both = rates["routed-frozen"] / rates["both-experts"]
    print(
        f"device {args.device}, hidden {args.hidden}, layers {args.layers}, batch {args.batch}, "
        f"tokens per step {n} ({n_text} text incl. BOI/EOI, {n_image} image)"
    )
    for variant, rate in rates.items():
        print(f"  {variant:14s} {rate:10.0f} tokens/s   {flops[variant]:.4e} FLOPs per step (counted)")
    counted_full = flops["full-finetune"] / flops["routed-frozen"]
    print(
        f"caption-prefix backward gone: routed-graph - routed-frozen = "
        f"{flops['routed-graph'] - flops['routed-frozen']:.4e} FLOPs per step "
        f"({100 * (1 - flops['routed-frozen'] / flops['routed-graph']):.1f}% of the step)"
    )
    print(
        f"routed-frozen / full-finetune (issue 22): measured {measured_full:.2f}x, counted-FLOP-predicted "
        f"{counted_full:.2f}x -> {measured_full / counted_full:.2f} of predicted (goal >= 0.95)"
    )
    print(
        f"routed-frozen / full-finetune: measured {measured_full:.2f}x, FLOP-predicted {predicted_full:.2f}x "
        f"-> {measured_full / predicted_full:.2f} of predicted (goal >= 0.90)"
    )
    print(
        f"routed-frozen / both-experts:  measured {measured_both:.2f}x, FLOP-predicted {predicted_both:.2f}x "
        f"(goal >= 1.60)"
    )
    if args.device == "cuda":
        flops_per_token = 2 * path_params * routed_cost / n
        mfu = rates["routed-frozen"] * flops_per_token / (args.peak_tflops * 1e12)
        print(
            f"model FLOPs utilisation (routed-frozen): {100 * mfu:.1f}% of {args.peak_tflops:g} TFLOP/s "
            f"({path_params / 1e6:.0f} M parameters per expert path)"
        )
    else:
        print("model FLOPs utilisation: not measured (no GPU here; on a GPU pass --hidden 2048 --layers 16)")


if __name__ == "__main__":
    main()
