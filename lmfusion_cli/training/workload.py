"""The contract between the training loop and what it trains.

The loop (optimiser, accumulation, finite checks, checkpoints, logs) is model-agnostic: it asks a
`Workload` to turn samples into a micro-batch, to compute *summed* losses on it, to name the
modules FSDP should shard, and to write inference-loadable weights. `lmfusion_workload.py` is the
LMFusion implementation; tests use small toy workloads with the same contract.

Losses are sums, normalised by the loop over the *global* batch (all processes and accumulation
micro-steps: total text targets and total generated images), so 1 process and N processes compute
the same gradient for the same global batch (torchtitan's global-token normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn

from lmfusion_cli.training.loader import Sample

Inputs = TypeVar("Inputs")
"""A workload's own model inputs (a NamedTuple: `LMFusionInputs`, the toy workload's `ToyInputs`)."""


@dataclass
class MicroBatch(Generic[Inputs]):
    """One process's forward/backward unit, with the counts the loop normalises by."""

    inputs: Inputs
    """The model inputs `Workload.loss_sums` takes (already on the device); the loop never reads them."""
    keys: list[str]
    """Latent-cache keys of the samples, in order (logged when a loss is not finite)."""
    text_targets: int
    """Positions with an LM target."""
    generated_images: int
    """Images with a diffusion loss: every generation image, and understanding images too when they carry one
    (`model.understanding_image_loss` diffusion; `targets.image_targets`)."""
    tokens: int
    """Non-padding positions (for tokens/s)."""
    images: int
    """All images in the micro-batch (for images/s)."""


@dataclass
class LossSums:
    """Summed losses of a micro-batch (scalar tensors with grad) and per-sample totals."""

    text: torch.Tensor
    """Σ token cross-entropy over LM targets."""
    image: torch.Tensor
    """Σ over generated images of the per-image diffusion MSE."""
    per_sample: torch.Tensor | None = None
    """(num_samples,) detached per-sample loss (any scale); non-finite entries name the bad samples."""


@dataclass
class ValidationSums:
    """Summed validation losses of a micro-batch (plain numbers: validation has no graph)."""

    text: float
    """Σ token cross-entropy over LM targets."""
    text_targets: int
    """Positions with an LM target."""
    image: float
    """Σ over images with a diffusion loss of the per-image MSE."""
    images: int
    """Images with a diffusion loss."""


@runtime_checkable
class Workload(Protocol):
    model: nn.Module
    """The full model (frozen and trainable parameters); wrapped in place by FSDP."""
    lambda_image: float
    """λ: weight of the mean diffusion loss against the mean LM loss."""
    # optional: `text_parameter_prefix: str`, the name prefix of the text modules' parameters, which get
    # `optim.text_lr` when they are trainable (see LMFusionWorkload); absent = one learning rate.

    def shard_units(self) -> list[nn.Module | list[nn.Module]]:
        """FSDP units to `fully_shard` before the root: one per decoder layer (a module, or the list of
        modules the layer's forward calls, sharded as one group)."""

    def make_micro_batch(self, samples: list[Sample], device: torch.device) -> MicroBatch:
        """Tokenise, lay out and pack `samples` into one micro-batch on `device`."""

    def loss_sums(self, model: nn.Module, micro: MicroBatch, noise_seeds: list[int]) -> LossSums:
        """Forward `micro` through `model` (the wrapped module: call it, so FSDP hooks run)."""

    def validation_sums(
        self, model: nn.Module, micro: MicroBatch, noise_seeds: list[int], fraction: float
    ) -> ValidationSums:
        """Summed losses with seeded noise at the fixed noise level `fraction` (of the schedule)."""

    def save_inference(self, trainable_state: dict[str, torch.Tensor], folder: Path) -> None:
        """Write weights the sampler can load standalone (full, unsharded trainable tensors)."""

    def describe(self) -> dict[str, Any]:
        """What the run trains (base model, model config), for the run manifest."""
