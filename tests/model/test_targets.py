"""Learnable LM targets (model/targets.py) against autograd: on random small models and layouts, a
target is in the mask iff its own cross-entropy (over the model's full logits, with a full graph) has a
non-zero gradient for some trainable parameter; and the training loss over the mask, computed with
constant logits for frozen contexts, equals that brute-force loss in value and gradient."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from lmfusion_cli.model import ImagePart, TextPart, build_example, pack
from lmfusion_cli.model.sequence import (
    IGNORE,
    caption_to_image,
    collate,
    image_to_caption,
)
from lmfusion_cli.model.targets import frozen_context

from .helpers import tiny_model

SETTINGS = {  # name: (layout, model options)
    "new-rows": ("llama3", {}),
    "new-rows-tied": ("smollm", {}),
    "legacy-reserved": ("qwen3", {"boi_id": 90, "eoi_id": 91}),
    "legacy-ffn-only": ("llama3", {"boi_id": 90, "eoi_id": 91, "experts": "ffn-only"}),
    "text-trains": ("mistral", {"boi_id": 90, "eoi_id": 91, "freeze_text": False}),
}


def _random_examples(model, rng: random.Random):
    """3-4 documents of random text/image parts (texts with and without loss, generated and
    conditioning images, text-only documents)."""
    C, S, N = model.config.latent_channels, model.config.latent_size, model.num_image_tokens
    examples = []
    for _ in range(rng.randint(3, 4)):
        parts = []
        for _ in range(rng.randint(1, 4)):
            if rng.random() < 0.4:
                parts.append(ImagePart(generate=rng.random() < 0.5))
            else:
                parts.append(
                    TextPart([rng.randrange(3, 80) for _ in range(rng.randint(1, 4))], loss=rng.random() < 0.8)
                )
        images = sum(isinstance(p, ImagePart) for p in parts)
        examples.append(
            build_example(
                parts,
                num_image_tokens=N,
                boi_id=model.boi_id,
                eoi_id=model.eoi_id,
                latents=torch.randn(images, C, S, S),
            )
        )
    return examples


def _brute_force(model, batch, latents):
    """Per-target losses with a full graph: (flat target positions, (M,) losses)."""
    g = torch.Generator().manual_seed(0)
    tokens = None
    if batch.num_images:
        t, noise = model.noising.draw(batch.image_generate, latents.shape[1:], [g] * batch.num_images)  # as forward
        noisy = model.noising.apply(latents, noise, t, batch.image_generate)
        tokens, _ = model.patcher.encode(noisy, t)
    hidden, _, _ = model._transformer(batch, tokens, cache=None)
    labels = batch.labels.reshape(-1)
    targets = (labels != IGNORE).nonzero().squeeze(1)
    losses = F.cross_entropy(model._text_head(hidden[targets]).float(), labels[targets], reduction="none")
    return targets, losses


@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("seed", [0, 1])
def test_learnable_targets_match_autograd(setting, seed):
    layout, options = SETTINGS[setting]
    model = tiny_model(layout, seed=seed, latent_size=4, **options)
    rng = random.Random(seed)
    batch, latents = pack(_random_examples(model, rng), row_length=60)
    learnable, frozen = model.target_masks(batch)
    targets, losses = _brute_force(model, batch, latents)
    params = model.trainable_parameters()
    for position, loss in zip(targets.tolist(), losses):
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        has_grad = any(gr is not None and bool(gr.any()) for gr in grads)
        assert has_grad == bool(learnable.reshape(-1)[position]), (setting, position)
    if setting.startswith("legacy"):
        assert not learnable.reshape(-1)[targets].all(), "a random layout should hold unlearnable targets"
    # the trained loss: the same targets, the same values and the same gradients
    chosen = learnable.reshape(-1)[targets]
    expected = losses[chosen].mean() if chosen.any() else losses.sum() * 0
    out = model(batch, latents, generator=torch.Generator().manual_seed(0))
    assert int(out.num_text_targets) == int(chosen.sum())
    torch.testing.assert_close(out.text_loss, expected, rtol=1e-5, atol=1e-6)
    ours = torch.autograd.grad(out.text_loss, params, allow_unused=True)
    theirs = torch.autograd.grad(expected, params, allow_unused=True)
    for a, b in zip(ours, theirs):
        a = torch.zeros_like(b) if a is None and b is not None else a
        b = torch.zeros_like(a) if b is None and a is not None else b
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    if setting == "text-trains":
        assert not frozen.any() and chosen.all()


def test_frozen_context_layout_rules():
    """By hand on one layout: the caption before its image is frozen, the position holding BOI and
    everything after it in the same document is not, and the next document starts frozen again."""
    model = tiny_model("llama3", latent_size=4)
    N, boi, eoi = model.num_image_tokens, model.boi_id, model.eoi_id
    kw = dict(num_image_tokens=N, boi_id=boi, eoi_id=eoi, bos_id=1, eos_id=2)
    gen = caption_to_image([5, 6, 7], latents=torch.randn(1, 4, 4, 4), **kw)  # bos 5 6 7 BOI img EOI eos
    und = image_to_caption([8, 9], latents=torch.randn(1, 4, 4, 4), **kw)  # bos BOI img EOI 8 9 eos
    batch, _ = pack([gen, und], row_length=len(gen) + len(und))
    frozen = frozen_context(batch, (boi, eoi))[0].tolist()
    assert frozen[:4] == [True] * 4 and not any(frozen[4 : len(gen)])
    assert frozen[len(gen)] and not any(frozen[len(gen) + 1 :])
    # legacy layout: caption targets before the image (and BOI's, a frozen logit row) cannot learn
    legacy = tiny_model("llama3", latent_size=4, boi_id=90, eoi_id=91)
    batch, _ = collate(
        [
            caption_to_image(
                [5, 6, 7], latents=torch.randn(1, 4, 4, 4), num_image_tokens=N, boi_id=90, eoi_id=91, bos_id=1, eos_id=2
            )
        ]
    )
    learnable, _ = legacy.target_masks(batch)
    assert not learnable[0, :4].any()  # bos 5 6 7 → 5 6 7 BOI
    assert learnable[0, len(batch.labels[0]) - 2]  # EOI → eos: its context holds the image
