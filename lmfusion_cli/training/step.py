"""One optimizer step: micro-batches → globally normalised loss → backward → finite check → update.

Normalisation (so N processes == 1 process for the same global batch): with T the text targets and
I the generated images of the whole global batch (all processes, all accumulation micro-steps),

    loss = Σ_text CE / T + λ · Σ_images MSE / I

Each micro-step backpropagates its share times the world size, because FSDP/DDP *average*
gradients over processes. The finite check (issue 12, item 6) runs on every process: the step is
applied only if the global loss and the global gradient norm are finite everywhere; otherwise the
gradients are dropped, the step is counted as skipped and the keys of the offending samples are
reported (those whose per-sample loss is not finite, else the whole micro-batch).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from lmfusion_cli.training.distributed import DistContext, all_reduce, gather_objects, set_grad_sync
from lmfusion_cli.training.loader import Sample
from lmfusion_cli.training.workload import MicroBatch, Workload


@dataclass
class StepResult:
    applied: bool
    """False when the step was skipped for a non-finite loss or gradient."""
    loss: float
    text_loss: float
    image_loss: float
    grad_norm: float
    tokens: int
    """Non-padding tokens of the global batch."""
    images: int
    """Images of the global batch."""
    text_targets: int = 0
    """Learnable LM targets of the global batch: the count `text_loss` averages over."""
    bad_keys: list[str] = field(default_factory=list)
    """Sample keys whose loss was not finite (all processes), when the step was skipped."""


def chunk(samples: list[Sample], size: int) -> list[list[Sample]]:
    return [samples[i : i + size] for i in range(0, len(samples), size)]


def train_step(
    model: nn.Module,
    workload: Workload,
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    samples: list[Sample],
    micro_batch_size: int,
    grad_clip: float,
    autocast: contextlib.AbstractContextManager | None,
    ctx: DistContext,
) -> StepResult:
    """Run one optimizer step on this process's `samples` (its share of the global batch)."""
    micros = [workload.make_micro_batch(group, ctx.device) for group in chunk(samples, micro_batch_size)]
    seeds = [[s.noise_seed for s in group] for group in chunk(samples, micro_batch_size)]
    counts = torch.tensor(
        [
            sum(m.text_targets for m in micros),
            sum(m.generated_images for m in micros),
            sum(m.tokens for m in micros),
            sum(m.images for m in micros),
        ],
        dtype=torch.float64,
    )
    text_targets, gen_images, tokens, images = all_reduce(counts, ctx).tolist()
    sums = torch.zeros(2, dtype=torch.float64)  # Σ text CE, Σ image MSE (this process)
    bad_keys: list[str] = []
    for i, (micro, micro_seeds) in enumerate(zip(micros, seeds)):
        set_grad_sync(model, i == len(micros) - 1)
        with autocast or contextlib.nullcontext():
            out = workload.loss_sums(model, micro, micro_seeds)
        loss = out.text / max(text_targets, 1.0) + workload.lambda_image * out.image / max(gen_images, 1.0)
        (loss * ctx.world_size).backward()
        sums += torch.tensor([out.text.item(), out.image.item()], dtype=torch.float64)
        bad_keys += _bad_keys(micro, out.per_sample, sums)
    text_sum, image_sum = all_reduce(sums, ctx).tolist()
    text_loss = text_sum / max(text_targets, 1.0)
    image_loss = image_sum / max(gen_images, 1.0)
    total = text_loss + workload.lambda_image * image_loss
    grad_norm = _clip(params, grad_clip)
    finite = math.isfinite(total) and math.isfinite(grad_norm)
    # every process must agree, even if only its own norm or loss went bad
    finite = all_reduce(torch.tensor([0.0 if finite else 1.0], dtype=torch.float64), ctx, op="max").item() == 0
    if finite:
        optimizer.step()
        bad_keys = []
    else:
        bad_keys = [k for keys in gather_objects(bad_keys, ctx) for k in keys]
    optimizer.zero_grad(set_to_none=True)
    return StepResult(
        applied=finite,
        loss=total,
        text_loss=text_loss,
        image_loss=image_loss,
        grad_norm=grad_norm,
        tokens=int(tokens),
        images=int(images),
        text_targets=int(text_targets),
        bad_keys=bad_keys,
    )


def _bad_keys(micro: MicroBatch, per_sample: torch.Tensor | None, sums: torch.Tensor) -> list[str]:
    if per_sample is not None:
        finite = torch.isfinite(per_sample.detach().float().cpu()).tolist()
        return [k for k, ok in zip(micro.keys, finite) if not ok]
    return [] if bool(torch.isfinite(sums).all()) else list(micro.keys)


def _clip(params: list[nn.Parameter], max_norm: float) -> float:
    """Global gradient norm (over all shards), clipped to `max_norm` when > 0."""
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(
        with_grad, max_norm if max_norm > 0 else float("inf"), error_if_nonfinite=False
    )
    if hasattr(norm, "full_tensor"):  # DTensor under FSDP2
        norm = norm.full_tensor()
    return float(norm)
