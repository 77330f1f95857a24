"""The optimiser and learning-rate schedule (LMFusion §4: AdamW, warmup, cosine to a floor).

AdamW sees only `trainable_parameters()`: frozen text weights get no gradient and no optimiser state.
Weight decay skips 1-D parameters (norm gains, biases) as is usual for transformers. This file does
not clip or step; the loop does.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

from lmfusion_cli.training.config import OptimConfig, ScheduleConfig


def build_optimizer(params: Iterable[tuple[str, torch.nn.Parameter]], config: OptimConfig) -> torch.optim.AdamW:
    """AdamW over named trainable parameters; decay on ≥2-D weights only."""
    decay, no_decay = [], []
    for _, p in params:
        if not p.requires_grad:
            raise ValueError("build_optimizer got a frozen parameter; pass trainable parameters only")
        (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters")
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr,
                             betas=(config.beta1, config.beta2), eps=config.eps)


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


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig,
                    schedule: ScheduleConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR whose `state_dict` (last_epoch) is all a resume needs."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, optim, schedule))
