"""LLaVAFusion: a LLaVA / LLaVA-NeXT base keeps its understanding exactly (LMFusion §5).

Against `transformers`' own VLM forward, bitwise in fp32 on CPU: an image + question sequence
(vision rows from the VLM's `get_image_features`, AnyRes tiles and `image_newline` included, on the
text expert, causal) gives the VLM's logits; a text-only prompt gives its language model's logits.
"""

from __future__ import annotations

import pytest
import torch

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.model import LMFusionModel, TextPart, build_example, collate
from lmfusion_cli.model.sequence import VISION, VisionPart

from .llava_helpers import (
    IMAGE_TOKEN,
    VOCAB,
    image_processor,
    num_vision_tokens,
    processed,
    random_image,
    tiny_llava_model,
    tiny_vlm,
)


def _understanding_batch(model, kind, sizes=((20, 40), (28, 28))):
    """Two rows: [bos, 5, <image>×n, question...] for a wide and a square image."""
    examples, ids = [], []
    for i, (h, w) in enumerate(sizes):
        pixels, size = processed(kind, [random_image(h, w, seed=i)])
        n = num_vision_tokens(model.base, pixels, tuple(size[0].tolist()))
        question = [1, 5, *[IMAGE_TOKEN] * n, 7 + i, 8, 9, 10]
        parts = [TextPart([1, 5]), VisionPart(n, IMAGE_TOKEN), TextPart(question[2 + n :])]
        examples.append(
            build_example(
                parts,
                num_image_tokens=model.num_image_tokens,
                boi_id=model.boi_id,
                eoi_id=model.eoi_id,
                vision_pixels=pixels,
                vision_sizes=size,
            )
        )
        ids.append(question)
    return collate(examples)[0], ids


@pytest.mark.parametrize("kind", ["llava_next", "llava"])
def test_understanding_logits_equal_the_vlm_bitwise(kind):
    model = tiny_llava_model(kind)
    reference = tiny_vlm(kind)  # an untouched copy of the same weights
    sizes = ((20, 40), (28, 28))
    batch, ids = _understanding_batch(model, kind, sizes)
    assert (batch.modality == VISION).sum() >= 8
    if kind == "llava_next":  # AnyRes: the wide image has more rows than the square one
        assert (batch.modality[0] == VISION).sum() > (batch.modality[1] == VISION).sum()
    with torch.no_grad():
        out = model.forward_segment(batch)
        for row, question in enumerate(ids):
            # the VLM's own inputs: its processor's (padded 5-D for LLaVA-NeXT) pixels and sizes
            vlm_inputs = image_processor(kind)(images=[random_image(*sizes[row], seed=row)], return_tensors="pt")
            theirs = reference(input_ids=torch.tensor([question]), **vlm_inputs).logits[0]
            ours = out.text_logits[row, : len(question), :VOCAB]
            assert torch.equal(ours, theirs)


@pytest.mark.parametrize("kind", ["llava_next", "llava"])
def test_text_only_logits_equal_the_vlm_bitwise(kind):
    model = tiny_llava_model(kind)
    reference = tiny_vlm(kind)
    ids = torch.randint(3, IMAGE_TOKEN, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model.text_logits(ids), reference(input_ids=ids).logits)


def test_llava_base_is_frozen_and_experts_copy_its_language_model():
    model = LMFusionModel.from_base(tiny_vlm(), latent_size=8, unet_channels=(16, 32))
    assert model.is_llava and model.decoder is model.base.model.language_model
    assert not any(p.requires_grad for p in model.base.parameters())  # vision tower, projector, LM
    trainable = {id(p) for p in model.trainable_parameters()}
    assert not trainable & {id(p) for p in model.base.model.vision_tower.parameters()}
    expert, text = model.image_experts[0], model.decoder.layers[0]
    assert torch.equal(expert.mlp.up_proj.weight, text.mlp.up_proj.weight)
    assert expert.mlp.up_proj.weight is not text.mlp.up_proj.weight


def test_llava_base_refuses_unfreezing():
    with pytest.raises(UserError, match="keeps frozen"):
        LMFusionModel.from_base(tiny_vlm(), latent_size=8, unet_channels=(16, 32), freeze_text=False)


def test_vision_rows_must_match_vision_positions():
    model = tiny_llava_model()
    batch, _ = _understanding_batch(model, "llava_next", sizes=((28, 28),))
    batch.vision_sizes = torch.tensor([[20, 40]])  # AnyRes of a wide image: more rows than positions
    batch.vision_pixels = processed("llava_next", [random_image(20, 40)])[0]
    with pytest.raises(ValueError, match="vision positions"):
        model.forward_segment(batch)


def _mixed_llava_batch(model, kind="llava_next"):
    """Packed: [bos 5 <image>×n 6 7 BOI gen-image EOI eos] (an understanding image, a caption, a
    generated image in one document) and a plain caption→image example, with latents."""
    from lmfusion_cli.model import ImagePart, caption_to_image, pack

    pixels, size = processed(kind, [random_image(20, 40)])
    n = num_vision_tokens(model.base, pixels, tuple(size[0].tolist()))
    kw = dict(num_image_tokens=model.num_image_tokens, boi_id=model.boi_id, eoi_id=model.eoi_id)
    g = torch.Generator().manual_seed(0)
    C, S = model.config.latent_channels, model.config.latent_size
    first = build_example(
        [TextPart([1, 5], loss=False), VisionPart(n, IMAGE_TOKEN), TextPart([6, 7, 8]), ImagePart(True), TextPart([2])],
        latents=torch.randn(1, C, S, S, generator=g),
        vision_pixels=pixels,
        vision_sizes=size,
        **kw,
    )
    second = caption_to_image([9, 10, 11], bos_id=1, eos_id=2, latents=torch.randn(1, C, S, S, generator=g), **kw)
    return pack([first, second], len(first) + len(second) + 2)


@pytest.mark.parametrize("kind", ["llava_next", "llava"])
def test_routed_equals_naive_with_vision_caption_and_generated_image(kind):
    from lmfusion_cli.model import IMAGE

    from .naive import naive_outputs

    model = tiny_llava_model(kind)
    batch, latents = _mixed_llava_batch(model, kind)
    assert {int(m) for m in batch.modality.unique()} == {-1, 0, 1, 2}
    timesteps = torch.tensor([300.0, 800.0])
    text = batch.modality != IMAGE
    text &= batch.modality >= 0

    routed = model.forward_segment(batch, latents, timesteps)
    routed_logits = routed.text_logits[text]
    (routed_logits.square().mean() + routed.image_prediction.square().mean()).backward()
    routed_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    naive_logits, naive_images = naive_outputs(model, batch, latents, timesteps)
    (naive_logits[text].square().mean() + naive_images.square().mean()).backward()
    naive_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    torch.testing.assert_close(routed_logits, naive_logits[text], atol=1e-5, rtol=0)
    torch.testing.assert_close(routed.image_prediction, naive_images, atol=1e-5, rtol=0)
    assert routed_grads.keys() == naive_grads.keys() and routed_grads
    assert not any(name.startswith("base.") for name in routed_grads)  # the VLM stays frozen
    for name, grad in routed_grads.items():
        torch.testing.assert_close(grad, naive_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_training_forward_on_a_batch_with_vision_rows():
    model = tiny_llava_model()
    batch, latents = _mixed_llava_batch(model)
    out = model(batch, latents, generator=torch.Generator().manual_seed(0))
    assert out.num_image_targets == 2 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is None for p in model.base.parameters())


def test_llava_image_experts_learn_generation():
    """Generation-only training (the default LLaVAFusion mix) of the image experts of a frozen VLM:
    the diffusion loss at fixed timesteps and noise drops, and the VLM's understanding is unchanged."""
    from lmfusion_cli.model import caption_to_image

    from .test_learning import shapes_set

    model = LMFusionModel.from_base(tiny_vlm(), latent_size=8, unet_channels=(32, 64), lambda_image=1.0)
    latents, captions = shapes_set(8, 4)
    kw = dict(num_image_tokens=model.num_image_tokens, boi_id=model.boi_id, eoi_id=model.eoi_id, bos_id=1, eos_id=2)
    every = collate([caption_to_image(c, latents=latents[i : i + 1], **kw) for i, c in enumerate(captions)])
    g = torch.Generator().manual_seed(1)
    eval_t, eval_noise = torch.linspace(0, 999, 64).round(), torch.randn(latents.shape, generator=g)
    understanding, _ = _understanding_batch(model, "llava_next")
    with torch.no_grad():
        before = model(*every, timesteps=eval_t, noise=eval_noise).image_loss.item()
        seen_before = model.forward_segment(understanding).text_logits[..., :VOCAB]
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(60):
        rows = torch.randint(0, 64, (16,), generator=g).tolist()
        loss = model(
            *collate([caption_to_image(captions[i], latents=latents[i : i + 1], **kw) for i in rows]), generator=g
        ).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = model(*every, timesteps=eval_t, noise=eval_noise).image_loss.item()
        seen_after = model.forward_segment(understanding).text_logits[..., :VOCAB]
    print(f"LLaVAFusion diffusion loss {before:.3f} -> {after:.3f}")
    assert after <= before / 2
    assert torch.equal(seen_before, seen_after)  # frozen VLM: understanding untouched by training


def test_understanding_costs_the_vlms_flops():
    """Routing adds no work on the VLM path: an image + question costs the VLM's own forward FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    model, reference = tiny_llava_model(), tiny_vlm()
    batch, ids = _understanding_batch(model, "llava_next", sizes=((20, 40),))
    vlm_inputs = image_processor("llava_next")(images=[random_image(20, 40, seed=0)], return_tensors="pt")

    def flops(fn):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            fn()
        return counter.get_total_flops()

    ours = flops(lambda: model.forward_segment(batch))
    theirs = flops(lambda: reference(input_ids=torch.tensor(ids), **vlm_inputs))
    print(f"understanding FLOPs: routed {ours}, VLM {theirs}")
    assert abs(ours - theirs) <= 0.02 * theirs, (ours, theirs)


def test_caption_budget_reads_the_vlms_language_model_positions():
    from lmfusion_cli.training.lmfusion_workload import caption_budget

    model = tiny_llava_model()
    assert caption_budget(model, 0, 0) == 512 - model.num_image_tokens - 4  # text_config.max_position_embeddings
