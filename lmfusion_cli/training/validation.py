"""Held-out validation with fixed noise: curves comparable between runs and across resumes.

For the first `log.val_items` items of the held-out latent cache: the diffusion loss of each
caption→image example at each noise level in `log.val_timesteps` (fractions of the schedule), with
noise seeded by (val_seed, item, level) and the latent posterior drawn with a seeded generator; and
the caption loss of each image→caption example (clean image). Nothing depends on the training RNG,
the step or the process layout (items are split over processes and the sums all-reduced).

This file owns which samples and seeds make up the validation set; the workload computes the losses.
"""

from __future__ import annotations

import torch
from torch import nn

from lmfusion_cli.training.config import LogConfig
from lmfusion_cli.training.distributed import DistContext, all_reduce
from lmfusion_cli.training.loader import GENERATION, UNDERSTANDING, LatentSource, Sample, item_field, sample_seed
from lmfusion_cli.training.step import chunk
from lmfusion_cli.training.workload import Workload


def validation_samples(source: LatentSource, config: LogConfig, task: str, level: int) -> list[Sample]:
    """The fixed held-out samples for one task and noise level (level index into val_timesteps)."""
    samples = []
    for i in range(min(config.val_items, len(source))):
        item = source[i]
        g = torch.Generator().manual_seed(sample_seed(config.val_seed, i, salt=7))
        latent = source.draw(i, g).float()
        samples.append(
            Sample(
                key=str(item_field(item, "key")),
                task=task,
                caption=item_field(item, "caption"),
                latent=latent,
                position=i,
                noise_seed=sample_seed(config.val_seed, i, salt=100 + level),
            )
        )
    return samples


@torch.no_grad()
def validate(
    model: nn.Module,
    workload: Workload,
    source: LatentSource,
    config: LogConfig,
    micro_batch_size: int,
    ctx: DistContext,
) -> dict[str, float]:
    """{"val_loss": mean diffusion loss over levels, "val_loss@0.5": ..., "val_caption_loss": ...}."""
    was_training = model.training
    model.eval()
    results: dict[str, float] = {}
    jobs = [(GENERATION, level, fraction) for level, fraction in enumerate(config.val_timesteps)]
    jobs.append((UNDERSTANDING, len(config.val_timesteps), 0.0))
    level_losses = []
    for task, level, fraction in jobs:
        every = validation_samples(source, config, task, level)
        every = every[: max(len(every) - len(every) % ctx.world_size, ctx.world_size)]  # same work per rank (FSDP)
        mine = every[ctx.rank :: ctx.world_size]
        sums = torch.zeros(4, dtype=torch.float64)  # text Σ, text n, image Σ, image n
        for group in chunk(mine, micro_batch_size):
            micro = workload.make_micro_batch(group, ctx.device)
            out = workload.validation_sums(model, micro, [s.noise_seed for s in group], fraction)
            sums += torch.tensor([out.text, out.text_targets, out.image, out.images], dtype=torch.float64)
        text, text_n, image, image_n = all_reduce(sums, ctx).tolist()
        if task == GENERATION:
            level_losses.append(image / max(image_n, 1.0))
            results[f"val_loss@{fraction:g}"] = level_losses[-1]
        else:
            results["val_caption_loss"] = text / max(text_n, 1.0)
    results["val_loss"] = sum(level_losses) / len(level_losses)
    model.train(was_training)
    return results
