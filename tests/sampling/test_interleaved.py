"""Interleaved generation: text, then an image when the model emits BOI, then text after EOI;
cached == uncached (text tokens exactly, image latents to float tolerance)."""

from __future__ import annotations

import pytest
import torch

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.sampling.decoding import DecodingOptions
from lmfusion_cli.sampling.interleaved import generate_document, generate_interleaved


@pytest.fixture(scope="module")
def chatty_model(tokenizer):
    """A model that learned, in a few optimizer steps, to open an image after the prompt `6 14 9` and to
    write `9 2` after it: nothing is edited by hand (the mechanics test; the trained tiny model's
    figures are in docs/sampling.md)."""
    from sampling_helpers import make_model

    from lmfusion_cli.model import ImagePart, TextPart, build_example, collate

    m = make_model(tokenizer, seed=7)
    N, C, S = m.num_image_tokens, m.config.latent_channels, m.config.latent_size
    g = torch.Generator().manual_seed(0)
    docs = [
        build_example(
            [TextPart([1, 6, 14, 9]), ImagePart(True), TextPart([9, 2])],
            num_image_tokens=N,
            boi_id=m.boi_id,
            eoi_id=m.eoi_id,
            latents=torch.randn(1, C, S, S, generator=g),
        )
        for _ in range(4)
    ]
    batch, latents = collate(docs)
    optimizer = torch.optim.AdamW(m.trainable_parameters(), lr=3e-2)
    m.train()
    for _ in range(30):
        m(batch, latents, generator=g).text_loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return m.eval()


def _doc(model, use_cache, **kw):
    args = dict(
        bos_id=1,
        eos_id=2,
        options=DecodingOptions(max_new_tokens=12, cfg_scale=3.0, steps=3, sampler="ddim", cache=use_cache),
        max_images=2,
        seed=4,
    )
    args.update(kw)
    return generate_document(model, [6, 14, 9], **args)


def test_text_image_text_and_cached_equals_uncached(chatty_model):
    segments, latents, reason = _doc(chatty_model, True)
    kinds = [s["type"] for s in segments]
    assert "image" in kinds, f"the test model should open an image: {segments}"
    assert kinds.index("image") < len(kinds) - 1 or reason == "image-limit", "text or a stop follows the image"
    assert len(latents) == kinds.count("image") <= 2
    text_tokens = sum(len(s["token_ids"]) for s in segments if s["type"] == "text")
    assert text_tokens + kinds.count("image") <= 12
    u_segments, u_latents, u_reason = _doc(chatty_model, False)
    assert u_segments == segments and u_reason == reason
    for a, b in zip(latents, u_latents):
        assert (a - b).abs().max() <= 1e-5 * a.abs().max()


def test_image_limit_and_beam_refused(chatty_model):
    segments, latents, reason = _doc(chatty_model, True, max_images=0)
    assert latents == [] and reason == "image-limit" and all(s["type"] == "text" for s in segments)
    with pytest.raises(UserError, match="greedy or top-p"):
        _doc(chatty_model, True, options=DecodingOptions(decoding="beam"))


def test_generate_interleaved_decodes_text_and_images(chatty_model, tokenizer, codec):
    docs = generate_interleaved(
        chatty_model,
        ["red circle", "blue"],
        tokenizer=tokenizer,
        vae=codec,
        max_new_tokens=10,
        max_images=1,
        cfg_scale=2.0,
        steps=2,
        sampler="ddim",
        seed=3,
    )
    assert [d.seed for d in docs] == [3, 1003]
    for d in docs:
        assert len(d.images) == sum(s["type"] == "image" for s in d.segments) <= 1
        assert all(img.shape == (32, 32, 3) and img.dtype.name == "uint8" for img in d.images)
        assert all(isinstance(s["text"], str) for s in d.segments if s["type"] == "text")
        assert d.stop_reason in ("eos", "max-new-tokens", "image-limit")
    assert any(d.images for d in docs)
