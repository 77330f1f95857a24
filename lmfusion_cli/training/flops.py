"""`log.count_flops`: training FLOPs counted by torch's `FlopCounterMode` (matmuls, convolutions,
attention; forward and backward). Frozen weights get no weight-gradient matmul, so frozen-text runs
count fewer FLOPs. The counter slows a step down, so only the first step after each log record is
counted, and it stands for each step since the previous record."""

from __future__ import annotations

import contextlib

import torch

from lmfusion_cli.training.distributed import DistContext, all_reduce


class FlopMeter:
    """FLOPs of this process since the last record, over `steps` steps (the first of them counted)."""

    def __init__(self, enabled: bool, ctx: DistContext):
        self.enabled, self.ctx = enabled, ctx
        self.flops, self.steps = 0.0, 0

    @contextlib.contextmanager
    def step(self):
        """Around one optimizer step: counts it when it is the first since the last record."""
        counter = None
        if self.enabled and self.steps == 0:
            from torch.utils.flop_counter import FlopCounterMode

            counter = FlopCounterMode(display=False)
        with counter or contextlib.nullcontext():
            yield
        self.flops += counter.get_total_flops() if counter is not None else 0.0
        self.steps += 1

    def record(self) -> dict[str, float]:
        """{"flops": training FLOPs of all processes over the steps since the previous record} (a
        collective), then start over; {} without `log.count_flops`."""
        counted, steps = self.flops, self.steps
        self.flops, self.steps = 0.0, 0
        if not self.enabled:
            return {}
        return {"flops": all_reduce(torch.tensor([counted], dtype=torch.float64), self.ctx).item() * steps}
