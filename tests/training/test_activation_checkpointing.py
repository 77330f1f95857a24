"""Activation checkpointing of the routed layer (issue 22): the same loss and gradients as without."""

from __future__ import annotations

import pytest
import torch

from lmfusion_cli.training.config import TrainConfig


def _loss_and_grads(checkpoint_every: int):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from model.helpers import mixed_batch, tiny_model

    model = tiny_model("llama3", base_overrides={"num_hidden_layers": 4})
    model.checkpoint_every = checkpoint_every
    batch, latents = mixed_batch(model, row_length=60)
    g = torch.Generator().manual_seed(3)
    t = torch.tensor([100.0, 300.0, 600.0, 900.0])
    noise = torch.randn(latents.shape, generator=g)
    out = model(batch, latents, timesteps=t, noise=noise)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("every", [1, 2])
def test_checkpointed_equals_unchecked(every):
    loss, grads = _loss_and_grads(0)
    loss_ckpt, grads_ckpt = _loss_and_grads(every)
    assert torch.equal(loss, loss_ckpt)
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 10
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], atol=1e-7, rtol=1e-6, msg=name)


def test_checkpointing_runs_the_layers_again_in_the_backward(monkeypatch):
    import lmfusion_cli.model.fusion as fusion

    calls = []
    real = fusion.routed_layer
    monkeypatch.setattr(fusion, "routed_layer", lambda *a, **k: calls.append(1) or real(*a, **k))
    _loss_and_grads(2)  # 4 layers, every 2nd checkpointed: 4 forward + 2 recomputed
    assert len(calls) == 6


@pytest.mark.parametrize("mode, every", [("none", 0), ("layers", 1), ("every-3", 3)])
def test_config_modes(mode, every):
    assert TrainConfig(out="x", activation_checkpointing=mode).checkpoint_every == every


@pytest.mark.parametrize("mode", ["all", "every-0", "every-x"])
def test_config_rejects_bad_modes(mode):
    with pytest.raises(ValueError, match="activation_checkpointing"):
        TrainConfig(out="x", activation_checkpointing=mode)
