"""What a resume restores, as objects with `state_dict`/`load_state_dict` (torch's `Stateful`).

The loop hands one dict of them to the `Checkpointer` (torchtitan's trainer.py pattern), which
saves and loads them all; where each one is stored is the object's `stored_in`:

- `dcp`: sharded tensors in `dcp/` — `ModelState` (trainable weights), `OptimizerState` and, with
  `train.ema`, `WeightAverage`;
- `rank`: one file per process in `rng/` — `RNGState`;
- `json` (the default, for objects without `stored_in`): a section of `trainer.json` — `TrainProgress`,
  the data stream (`loader.SampleStream`) and the LR scheduler (torch's `LambdaLR`), which already
  have `state_dict`/`load_state_dict`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from lmfusion_cli.training.distributed import unwrap
from lmfusion_cli.training.safe_load import rng_state, set_rng_state

SHARDED = StateDictOptions(ignore_frozen_params=True, strict=False)
"""DCP options (MEASURED-NOTES): frozen text weights are not stored; the checkpoint points at its base."""


@runtime_checkable
class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def stored_in(obj: Stateful) -> str:
    """`dcp`, `rank` or `json`: where the checkpointer keeps `obj`'s state."""
    return getattr(obj, "stored_in", "json")


def trainable_only(model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """`state` without the parameters that are not trainable under their own name: frozen weights and
    aliases of a tied weight (`lm_head.weight` when it is `embed_tokens.weight`). Buffers stay.

    `ignore_frozen_params` alone still keeps a tied alias of a frozen weight (SmolLM2's and Llama-3.2's
    `lm_head.weight` is `embed_tokens.weight`: `named_parameters` lists it once, `state_dict` twice), so
    every model state dict is cut to the trainable parameters' own names before it is saved or loaded."""
    module = unwrap(model)
    params = {n for n, _ in module.named_parameters(remove_duplicate=False)}
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    return {k: v for k, v in state.items() if k not in params or k in trainable}


class ModelState:
    """The (possibly sharded) model's trainable weights and buffers."""

    stored_in = "dcp"

    def __init__(self, model: nn.Module):
        self.model = model

    def state_dict(self) -> dict[str, Any]:
        return trainable_only(self.model, get_model_state_dict(self.model, options=SHARDED))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_model_state_dict(self.model, state, options=SHARDED)


class OptimizerState:
    """AdamW's moments and step counts, keyed by parameter name (as `get_state_dict` writes them)."""

    stored_in = "dcp"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict[str, Any]:
        return get_optimizer_state_dict(self.model, self.optimizer, options=SHARDED)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_optimizer_state_dict(self.model, self.optimizer, state, options=SHARDED)


class WeightAverage:
    """An exponential moving average of the trainable weights (`train.ema` = its decay), kept beside the
    raw weights in their own sharding (FSDP shards average shard by shard). The decay warms up as
    min(decay, (1 + n) / (10 + n)) over the n averaged steps, so early weights do not linger.
    `applied()` swaps the average into the model for a while (saving `model/`, validation) and back."""

    stored_in = "dcp"

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.params = [(n, p) for n, p in unwrap(model).named_parameters() if p.requires_grad]
        self.average = {n: p.detach().clone() for n, p in self.params}
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current weights in (call after each applied optimizer step)."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, p in self.params:
            self.average[name].lerp_(p.detach(), 1 - decay)

    @contextmanager
    def applied(self):
        """The model holds the averaged weights inside the block, its raw weights again after it."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    @torch.no_grad()
    def _swap(self) -> None:
        for name, p in self.params:
            raw = p.detach().clone()
            p.detach().copy_(self.average[name])
            self.average[name].copy_(raw)

    def state_dict(self) -> dict[str, Any]:
        return {"weights": dict(self.average), "updates": torch.tensor(self.updates, dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for name, value in state["weights"].items():
                if value is not self.average[name]:  # DCP loads into the templates in place
                    self.average[name].copy_(value)
        self.updates = int(state["updates"])


class RNGState:
    """This process's torch, numpy and Python RNG states (tensors and numbers: read weights-only)."""

    stored_in = "rank"

    def state_dict(self) -> dict[str, Any]:
        return rng_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_rng_state(state)


@dataclass
class TrainProgress:
    """The loop's counters: optimizer steps taken (skipped ones included), non-finite steps."""

    step: int = 0
    bad_in_row: int = 0
    """Non-finite steps in a row (the run stops at `train.max_bad_steps`)."""
    skipped_steps: int = 0
    """Non-finite steps in the whole run."""

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "bad_in_row": self.bad_in_row, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.bad_in_row, self.skipped_steps = (
            int(state["step"]),
            int(state["bad_in_row"]),
            int(state["skipped_steps"]),
        )


def train_states(
    model: nn.Module,
    optimizer: Any,
    scheduler: Any,
    stream: Any,
    progress: TrainProgress,
    average: WeightAverage | None = None,
) -> dict:
    """The dict of Stateful objects a training checkpoint holds, by the name each is saved under."""
    states = {
        "model": ModelState(model),
        "optim": OptimizerState(model, optimizer),
        "rng": RNGState(),
        "progress": progress,
        "data": stream,
        "scheduler": scheduler,
    }
    if average is not None:
        states["ema"] = average
    return states
