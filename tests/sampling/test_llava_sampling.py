"""LLaVAFusion sampling: captions are the base VLM's own greedy answer; t2i caches exactly.

The tiny VLM's tokenizer is the sampling tests' word-level one plus `<image>`; its processor is the
real `LlavaNextProcessor` / `LlavaProcessor`, so the prompt (placeholders expanded per AnyRes tile
and `image_newline`) is exactly what the VLM's `generate` receives.
"""

from __future__ import annotations

import pytest
import torch
from sampling_helpers import make_tokenizer
from test_t2i import PROMPTS, _sample, assert_close_scaled

from lmfusion_cli.model import LMFusionModel, resolve_boi_eoi
from lmfusion_cli.sampling import caption_images
from lmfusion_cli.sampling.vlm_captioning import caption_prompt
from tests.model.llava_helpers import random_image, tiny_vlm, tokenizer_with_image_token, vlm_processor

IMAGES = [random_image(20, 40, seed=0), random_image(28, 28, seed=1), random_image(40, 24, seed=2)]


def _setup(kind):
    tok = tokenizer_with_image_token(make_tokenizer())
    image_token = tok.convert_tokens_to_ids("<image>")
    boi, eoi = resolve_boi_eoi(tok)
    model = LMFusionModel.from_base(tiny_vlm(kind, image_token=image_token), latent_size=8,
                                    unet_channels=(16, 32), boi_id=boi, eoi_id=eoi)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval(), tiny_vlm(kind, image_token=image_token), tok, vlm_processor(kind, tok)


def _vlm_greedy(reference, processor, image, max_new_tokens):
    inputs = processor(images=[image], text=[caption_prompt(processor)], return_tensors="pt")
    out = reference.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=processor.tokenizer.eos_token_id, pad_token_id=0)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    eos = processor.tokenizer.eos_token_id
    return new[: new.index(eos)] if eos in new else new


@pytest.mark.parametrize("kind", ["llava_next", "llava"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_caption_equals_the_vlms_own_greedy_generate(kind, use_cache):
    model, reference, tok, processor = _setup(kind)
    result = caption_images(model, IMAGES, tokenizer=tok, vae=None, processor=processor, max_new_tokens=10,
                            batch_size=2, use_cache=use_cache)
    assert [r["index"] for r in result.records] == [0, 1, 2]
    for record, image in zip(result.records, IMAGES):
        theirs = _vlm_greedy(reference, processor, image, 10)
        assert record["token_ids"] == theirs
        assert len(theirs) >= 3  # a real comparison, not two empty captions


def test_vlm_captions_skip_unreadable_images(tmp_path):
    model, _, tok, processor = _setup("llava_next")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    result = caption_images(model, [IMAGES[0], bad, tmp_path / "missing.png"], tokenizer=tok, vae=None,
                            processor=processor, max_new_tokens=3)
    assert [r["index"] for r in result.records] == [0]
    assert result.skips.skipped == {"corrupt-image": 1, "missing-file": 1}


def test_t2i_on_a_llava_base_cached_equals_uncached():
    model, _, _, _ = _setup("llava_next")
    cached = _sample(model, PROMPTS, 4.0, use_cache=True)
    uncached = _sample(model, PROMPTS, 4.0, use_cache=False)
    assert_close_scaled(cached, uncached)
    assert torch.isfinite(cached).all()
