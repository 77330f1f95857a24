"""LLaVAFusion under FSDP2 (2 gloo processes): the vision tower + projector are one frozen unit of their
own; a forward through the vision path and the image experts, and a backward, give the single-process
loss and gradients, and nothing of the VLM gets a gradient."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from forked import run_forked

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _loss_and_grads(out: str | None) -> dict:
    from lmfusion_cli.training.config import DistConfig
    from lmfusion_cli.training.distributed import init_distributed, shutdown, wrap_model
    from lmfusion_cli.training.lmfusion_workload import LMFusionWorkload
    from tests.model.llava_helpers import tiny_llava_model
    from tests.model.test_llava import _mixed_llava_batch

    ctx = init_distributed(DistConfig())
    model = tiny_llava_model()
    batch, latents = _mixed_llava_batch(model)
    workload = LMFusionWorkload(
        model, type("Tok", (), {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0})(), 0, None
    )
    units = workload.shard_units()
    vision = units[-1]
    tower = model.base.model.vision_tower
    assert vision == [*tower.children(), model.base.model.multi_modal_projector]
    assert {id(p) for m in vision for p in m.parameters()} == {
        id(p) for m in (tower, model.base.model.multi_modal_projector) for p in m.parameters()
    }
    assert not any(p.requires_grad for m in vision for p in m.parameters())
    wrapped = wrap_model(model, units, "fsdp", ctx)
    g = torch.Generator().manual_seed(0)
    timesteps, noise = torch.tensor([300.0, 800.0]), torch.randn(latents.shape, generator=g)
    loss = wrapped(batch, latents, timesteps=timesteps, noise=noise).loss
    loss.backward()
    assert all(p.grad is None for p in model.base.parameters())
    grads = {
        n: float(p.grad.full_tensor().abs().sum() if hasattr(p.grad, "full_tensor") else p.grad.abs().sum())
        for n, p in model.named_parameters()
        if p.grad is not None
    }
    result = {"loss": float(loss.detach()), "grads": grads}
    if out is not None and ctx.rank == 0:
        Path(out).write_text(json.dumps(result))
    del wrapped, model
    shutdown(ctx)
    return result


def test_fsdp_two_processes_match_one_with_the_vision_unit(tmp_path):
    torch.set_num_threads(1)
    single = _loss_and_grads(None)
    errors = run_forked(2, _loss_and_grads, str(tmp_path / "fsdp.json"))
    assert not errors, errors
    sharded = json.loads((tmp_path / "fsdp.json").read_text())
    assert sharded["loss"] == pytest.approx(single["loss"], abs=1e-6)
    assert sharded["grads"].keys() == single["grads"].keys() and single["grads"]
    for name, value in single["grads"].items():
        assert sharded["grads"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
