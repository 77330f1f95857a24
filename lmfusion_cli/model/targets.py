"""Which positions can learn: frozen contexts and learnable LM targets, read from the batch layout.

With frozen text (the paper's `eta_text = 0`), a position's hidden state depends on a trainable
parameter only if its causal context (itself and the earlier positions of its document) holds an
image position (patcher, image experts) or a token with a trainable input row (BOI/EOI). Elsewhere it
is a fixed function of the frozen base: no graph is needed to compute it (`frozen_context`).

An LM target (the token predicted at a position) is *learnable* when its loss has a non-zero gradient
for some trainable parameter (`learnable_targets`):
- its position's context is not frozen, or
- its label's logit row is trainable (BOI/EOI on new rows: the model learns *when* to open an image), or
- the softmax holds trainable logit rows at all: then every target's cross-entropy reaches them through
  the normaliser (a plain-text target teaches "no image here"; this is what text-only documents train).
  Such a target at a frozen position needs the base's logits only as constants (no graph).
With the legacy reserved BOI/EOI ids (frozen logit rows), a target in a frozen context is not learnable:
the model leaves it out of the loss and computes no logits for it. When text is trainable, every target
is learnable. `tests/model/test_targets.py` checks these rules against autograd on random layouts.

An image is a diffusion target (`image_targets`) when it is generated, or when understanding images
carry a diffusion loss (`understanding_image_loss: diffusion`, Transfusion §4.3) and are noised at all.

Plain tensor logic on `MixedBatch`; no weights are read here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmfusion_cli.model.sequence import IGNORE, IMAGE, TEXT, MixedBatch


def frozen_context(batch: MixedBatch, trainable_ids: Sequence[int]) -> torch.Tensor:
    """(B, T) bool: positions whose causal context holds no image and no token of `trainable_ids`.

    Documents are contiguous runs of one `document_ids` value within a row (as `pack` and `collate` lay
    them out); padding (-1) is never a context and comes out True (it has no target anyway).
    """
    B, T = batch.input_ids.shape
    ids, docs = batch.input_ids, batch.document_ids
    trainable_row = torch.zeros_like(ids, dtype=torch.bool)
    for token in trainable_ids:
        trainable_row |= ids == token
    marker = (batch.modality == IMAGE) | ((batch.modality == TEXT) & trainable_row)  # (B, T)
    index = torch.arange(T, device=ids.device).expand(B, T)
    last_marker = torch.where(marker, index, -1).cummax(dim=1).values  # (B, T) latest marker so far
    starts = torch.ones_like(marker)
    starts[:, 1:] = docs[:, 1:] != docs[:, :-1]
    doc_start = torch.where(starts, index, 0).cummax(dim=1).values  # (B, T) first position of the document
    return (last_marker < doc_start) | (docs < 0)


def learnable_targets(
    batch: MixedBatch,
    *,
    text_trainable: bool,
    trainable_ids: Sequence[int],
    trainable_label_ids: Sequence[int] = (),
    trainable_logit_rows: bool = False,
) -> torch.Tensor:
    """(B, T) bool: positions with an LM target whose loss can change a trainable parameter.

    text_trainable: the text modules train (then every target is learnable).
    trainable_ids: token ids with a trainable *input* row (BOI/EOI).
    trainable_label_ids: token ids with a trainable *logit* row.
    trainable_logit_rows: whether the LM softmax holds any trainable logit row (then all targets learn
    through its normaliser; see the module docstring).
    """
    has_target = batch.labels != IGNORE
    if text_trainable or trainable_logit_rows:
        return has_target
    learnable = ~frozen_context(batch, trainable_ids)
    for token in trainable_label_ids:
        learnable |= batch.labels == token
    return has_target & learnable


def target_masks(
    batch: MixedBatch, specials: Sequence[int], text_trainable: bool, new_special_rows: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(learnable, frozen), both (B, T) bool: the LM targets that enter the loss, and the positions whose
    hidden state depends on no trainable parameter (all False when text trains).

    specials: the BOI/EOI ids (trainable input rows); new_special_rows: they also have trainable logit
    rows (new ids past the vocabulary, not the legacy reserved ones)."""
    learnable = learnable_targets(
        batch,
        text_trainable=text_trainable,
        trainable_ids=specials,
        trainable_label_ids=specials if new_special_rows else (),
        trainable_logit_rows=new_special_rows,
    )
    if text_trainable:
        return learnable, torch.zeros_like(learnable)
    return learnable, frozen_context(batch, specials)


def image_targets(batch: MixedBatch, understanding_image_loss: str, understanding_cap: float) -> torch.Tensor:
    """(num_images,) bool: images with a diffusion loss. Generation images always; understanding images
    with `understanding_image_loss == "diffusion"` and a noise cap above 0 (a clean image is no target)."""
    return batch.image_generate | (understanding_image_loss == "diffusion" and understanding_cap > 0)
