"""The training forward's losses: what `LMFusionModel.forward` returns and how its sums are formed.

Text: next-token cross-entropy at the learnable targets only (`targets.py` says which); targets whose
context holds no trainable input get constant logits (no graph). Images: the objective's MSE per image
(`diffusion.py`). Per-example losses (text mean + λ · image mean by document) name poisoned samples.
The forward itself, and the heads these take, are `fusion.py`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmfusion_cli.model.layers import Routes
from lmfusion_cli.model.sequence import MixedBatch


@dataclass
class FusionOutput:
    """Training forward result. Losses are float32 scalars; `example_loss` is detached."""

    loss: torch.Tensor
    """text_loss + lambda_image · image_loss."""
    text_loss: torch.Tensor
    """Mean next-token cross-entropy over the learnable text targets (0 when there are none)."""
    image_loss: torch.Tensor
    """Mean diffusion MSE over images with a diffusion loss (`image_targets`; 0 when there are none)."""
    num_text_targets: torch.Tensor
    """() long: learnable LM targets (`target_masks`), the ones averaged in `text_loss`."""
    num_image_targets: torch.Tensor
    """() long: images with a diffusion loss."""
    example_loss: torch.Tensor
    """(E,) per-example text mean + λ · image mean, by `document_ids`: names poisoned samples."""
    timesteps: torch.Tensor
    """(num_images,) the timesteps used."""
    image_losses: torch.Tensor | None = None
    """(num_image_targets,) each diffusion-loss image's MSE, in batch image order (None: no such image)."""


def text_token_losses(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    learnable: torch.Tensor,
    frozen: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    constant_head: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(losses (N,) float32, flat positions (N,)) of the N learnable targets, live ones first.

    hidden: (B·T, D) flat hidden states; labels, learnable, frozen: (B, T). `head` maps (M, D) to logits
    with a graph; `constant_head` to the same values, constant but for the trainable rows; it is used for
    targets in a frozen context, and logits of unlearnable targets are never computed."""
    labels = labels.reshape(-1)
    targets = learnable.reshape(-1).nonzero().squeeze(1)  # (N,) flat positions
    constant = frozen.reshape(-1)[targets]
    targets = torch.cat([targets[~constant], targets[constant]])  # live targets first
    num_live = int((~constant).sum())
    logits = head(hidden[targets[:num_live]])  # (N_live, V[+2])
    losses = F.cross_entropy(logits.float(), labels[targets[:num_live]], reduction="none")
    if num_live < targets.shape[0]:
        logits = constant_head(hidden[targets[num_live:]])
        losses = torch.cat([losses, F.cross_entropy(logits.float(), labels[targets[num_live:]], reduction="none")])
    return losses, targets


def image_documents(batch: MixedBatch, routes: Routes) -> torch.Tensor:
    """(num_images,) long: the document (example) each image belongs to."""
    docs = batch.document_ids.reshape(-1)
    image_doc = torch.full((batch.num_images,), -1, dtype=torch.long, device=docs.device)
    return image_doc.scatter_reduce(0, batch.image_index.reshape(-1)[routes.image], docs[routes.image], "amax")


def mean_by(values: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Mean of `values` (M,) per group id in [0, num_groups) (0 for empty groups): (num_groups,)."""
    sums = values.new_zeros(num_groups).index_add(0, groups, values.float())
    counts = values.new_zeros(num_groups).index_add(0, groups, torch.ones_like(values, dtype=torch.float32))
    return sums / counts.clamp(min=1)
