"""The optimiser and learning-rate schedule (LMFusion §4: AdamW, warmup, cosine to a floor).

AdamW sees only `trainable_parameters()`: frozen text weights get no gradient and no optimiser state.
Weight decay skips 1-D parameters (norm gains, biases) as is usual for transformers. This file does
not clip or step; the loop does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from lmfusion_cli.training.config import OptimConfig, ScheduleConfig


def build_optimizer(
    params: Iterable[tuple[str, torch.nn.Parameter]], config: OptimConfig, text_prefix: str = ""
) -> torch.optim.AdamW:
    """AdamW over named trainable parameters; decay on ≥2-D weights only.

    With `config.text_lr` set, trainable parameters whose name starts with `text_prefix` (the text
    modules, when unfrozen: the paper's ablation of training them at a small rate) get that peak rate;
    the schedule scales every group by the same factor."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in params:
        if not p.requires_grad:
            raise ValueError("build_optimizer got a frozen parameter; pass trainable parameters only")
        is_text = config.text_lr is not None and bool(text_prefix) and name.startswith(text_prefix)
        groups.setdefault((is_text, p.ndim >= 2), []).append(p)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    order = [(False, True), (False, False), (True, True), (True, False)]  # (text, decay)
    return torch.optim.AdamW(
        [
            {
                "params": groups[key],
                "weight_decay": config.weight_decay if key[1] else 0.0,
                "lr": config.text_lr if key[0] else config.lr,
            }
            for key in order
            if key in groups
        ],
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        eps=config.eps,
    )


def lr_factor(step: int, optim: OptimConfig, schedule: ScheduleConfig) -> float:
    """Multiplier of optim.lr for optimizer step `step` (0-based): linear warmup, then cosine to min_lr."""
    if schedule.warmup_steps and step < schedule.warmup_steps:
        return (step + 1) / schedule.warmup_steps
    if schedule.decay == "constant":
        return 1.0
    floor = min(schedule.min_lr / optim.lr, 1.0)
    span = max(schedule.steps - schedule.warmup_steps - 1, 1)
    progress = min(max(step - schedule.warmup_steps, 0) / span, 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, schedule: ScheduleConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR whose `state_dict` (last_epoch) is all a resume needs."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, optim, schedule))
