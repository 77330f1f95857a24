"""The detached frozen prefix (issue 22): with frozen text, a caption before its image runs forward only
(no graph); its keys and values still feed the image. Loss and gradients equal the full graph, and the
backward does less work."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from .helpers import mixed_batch, tiny_model


def _run(detach: bool, layout: str = "llama3", checkpoint_every: int = 0):
    model = tiny_model(layout)
    model.detach_frozen_prefix = detach
    model.checkpoint_every = checkpoint_every
    batch, latents = mixed_batch(model, row_length=60)
    g = torch.Generator().manual_seed(5)
    t = torch.tensor([100.0, 300.0, 600.0, 900.0])
    noise = torch.randn(latents.shape, generator=g)
    out = model(batch, latents, timesteps=t, noise=noise)
    counter = FlopCounterMode(display=False)
    with counter:
        out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return model, batch, out.loss.detach(), grads, counter.get_total_flops()


@pytest.mark.parametrize("layout, checkpoint_every", [("llama3", 0), ("qwen3", 0), ("llama3", 1)])
def test_detached_prefix_gives_the_same_loss_and_gradients(layout, checkpoint_every):
    model, batch, loss, grads, backward_flops = _run(True, layout, checkpoint_every)
    _, _, loss_full, grads_full, backward_flops_full = _run(False, layout, checkpoint_every)
    frozen = model.target_masks(batch)[1] & (batch.document_ids >= 0) & (batch.modality == 0)
    assert frozen.sum() >= 6  # the captions before their images
    torch.testing.assert_close(loss, loss_full, atol=1e-6, rtol=1e-6)
    assert grads.keys() == grads_full.keys() and len(grads) > 10
    for name in grads:
        torch.testing.assert_close(grads[name], grads_full[name], atol=1e-6, rtol=1e-5, msg=name)
    if checkpoint_every == 0:  # (a checkpointed run recomputes the prefix forward in the backward)
        assert backward_flops < backward_flops_full


def test_no_prefix_is_detached_when_text_trains():
    model = tiny_model("llama3", freeze_text=False)
    batch, _ = mixed_batch(model, row_length=60)
    assert not model.target_masks(batch)[1].any()
