"""Routed experts == a naive both-experts reference; FLOPs == the base's; frozen means frozen."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lmfusion_cli.model import TEXT, LMFusionModel, image_segment

from .helpers import mixed_batch, tiny_base, tiny_model
from .naive import naive_outputs


def _inputs(model, seed=0):
    batch, latents = mixed_batch(model, seed=seed)
    timesteps = torch.tensor([10.0, 400.0, 999.0, 250.0])[: batch.num_images]
    return batch, latents, timesteps


@pytest.mark.parametrize(
    "layout,options",
    [
        ("llama3", {}),
        ("qwen2", {}),
        ("qwen3", {}),
        ("smollm", {"patcher": "linear"}),
        ("qwen2", {"patcher": "conv"}),
        ("llama3", {"experts": "ffn-only"}),
        ("llama3", {"experts": "none", "freeze_text": False}),
    ],
)
def test_routed_equals_naive_outputs_and_gradients(layout, options):
    model = tiny_model(layout, **options)
    batch, latents, timesteps = _inputs(model)
    text = batch.modality == TEXT

    routed = model.forward_segment(batch, latents, timesteps)
    routed_logits = routed.text_logits[text]
    (routed_logits.square().mean() + routed.image_prediction.square().mean()).backward()
    routed_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    naive_logits, naive_images = naive_outputs(model, batch, latents, timesteps)
    naive_logits = naive_logits[text]
    (naive_logits.square().mean() + naive_images.square().mean()).backward()
    naive_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    torch.testing.assert_close(routed_logits, naive_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(routed.image_prediction, naive_images, atol=1e-5, rtol=0)
    assert routed_grads.keys() == naive_grads.keys() and routed_grads
    for name, grad in routed_grads.items():
        torch.testing.assert_close(grad, naive_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("patcher", ["unet", "linear", "conv"])
def test_flops_equal_base_plus_patcher(patcher):
    """A sequence with half image tokens costs the base's FLOPs on as many tokens + the patcher."""
    model = tiny_model("llama3", latent_size=16, patcher=patcher)
    N = model.num_image_tokens  # 64
    B, T = 2, 2 * N
    batch = image_segment(torch.full((B,), N), N)  # image tokens at positions N..2N-1
    from lmfusion_cli.model import concat_segments, text_segment

    text = text_segment(torch.randint(3, 90, (B, N)), torch.arange(N).expand(B, N))
    batch = concat_segments(text, batch)
    latents = torch.randn(B, 4, 16, 16)
    t = torch.tensor([100.0, 500.0])

    def flops(fn):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            fn()
        return counter.get_total_flops()

    ids = torch.randint(3, 90, (B, T))
    base = flops(lambda: model.base.model(input_ids=ids))  # hidden states of T tokens
    patcher = flops(lambda: model.patcher.encode(latents, t))
    routed = flops(lambda: model._transformer(batch, model.patcher.encode(latents, t)[0], None))
    # within 2% of the base's own FLOPs (not of the sum, which the tiny model's patcher dominates)
    assert abs(routed - (base + patcher)) <= 0.02 * base


def test_frozen_text_gets_no_gradient():
    model = tiny_model("smollm")  # tied embeddings: the shared table must stay frozen too
    batch, latents, _ = _inputs(model)
    out = model(batch, latents, generator=torch.Generator().manual_seed(0))
    assert out.num_text_targets > 0 and out.num_image_targets > 0
    out.loss.backward()
    trainable = {id(p) for p in model.trainable_parameters()}
    for name, p in model.base.named_parameters():
        assert not p.requires_grad and p.grad is None, name
        assert id(p) not in trainable, name
    grads = [p.grad for p in model.trainable_parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(bool(g.abs().sum() > 0) for g in grads) > len(grads) // 2
    optimizer = torch.optim.AdamW(model.trainable_parameters())
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for p in model.base.parameters()}
    names = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert names == {"special_embed", "special_head", "image_experts", "image_norm", "patcher"}


def test_trainable_sets_of_ablations():
    unfrozen = tiny_model("llama3", freeze_text=False)
    assert all(p.requires_grad for p in unfrozen.base.parameters())
    scratch = tiny_model("llama3", from_scratch=True, seed=3)
    reference = tiny_model("llama3", seed=3)
    assert all(p.requires_grad for p in scratch.base.parameters())
    assert not torch.equal(
        scratch.base.model.layers[0].mlp.up_proj.weight, reference.base.model.layers[0].mlp.up_proj.weight
    )
    dense = tiny_model("llama3", experts="none", freeze_text=False)
    assert dense.image_experts is None
    options = dict(latent_size=8, unet_channels=(16, 32))
    copied = LMFusionModel.from_base(tiny_base("qwen3"), **options)
    random = LMFusionModel.from_base(tiny_base("qwen3"), image_init="random", **options)
    for model, same in ((copied, True), (random, False)):
        text, image = model.base.model.layers[1], model.image_experts[1]
        assert torch.equal(text.self_attn.q_proj.weight, image.self_attn.q_proj.weight) is same
        assert torch.equal(text.self_attn.q_norm.weight, image.self_attn.q_norm.weight) is same
        assert torch.equal(text.mlp.down_proj.weight, image.mlp.down_proj.weight) is same
    ffn_only = tiny_model("llama3", experts="ffn-only")
    assert not hasattr(ffn_only.image_experts[0], "self_attn") and hasattr(ffn_only.image_experts[0], "mlp")


def test_image_tokens_see_each_other_but_text_before_them_does_not():
    """Bidirectional inside an image, causal for text: changing an image's latent changes earlier
    image tokens' outputs but never the logits of text before the image."""
    model = tiny_model("llama3")
    batch, latents, timesteps = _inputs(model)
    a = model.forward_segment(batch, latents, timesteps)
    changed = latents.clone()
    changed[0, :, -2:, -2:] += 1.0  # last patch of image 0 (caption→image example)
    b = model.forward_segment(batch, changed, timesteps)
    first_image_pos = (batch.image_index == 0).nonzero()[0]
    before = torch.zeros_like(batch.modality, dtype=torch.bool)
    before[first_image_pos[0], : first_image_pos[1]] = True
    torch.testing.assert_close(a.text_logits[before], b.text_logits[before], atol=0, rtol=0)
    assert not torch.allclose(a.image_prediction[0, :, :2, :2], b.image_prediction[0, :, :2, :2])
    torch.testing.assert_close(a.image_prediction[1:], b.image_prediction[1:], atol=0, rtol=0)
