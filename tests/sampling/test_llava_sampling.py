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
    model = LMFusionModel.from_base(
        tiny_vlm(kind, image_token=image_token), latent_size=8, unet_channels=(16, 32), boi_id=boi, eoi_id=eoi
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval(), tiny_vlm(kind, image_token=image_token), tok, vlm_processor(kind, tok)


def _vlm_greedy(reference, processor, image, max_new_tokens):
    inputs = processor(images=[image], text=[caption_prompt(processor)], return_tensors="pt")
    out = reference.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=processor.tokenizer.eos_token_id,
        pad_token_id=0,
    )
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    eos = processor.tokenizer.eos_token_id
    return new[: new.index(eos)] if eos in new else new


@pytest.mark.parametrize("kind", ["llava_next", "llava"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_caption_equals_the_vlms_own_greedy_generate(kind, use_cache):
    model, reference, tok, processor = _setup(kind)
    result = caption_images(
        model,
        IMAGES,
        tokenizer=tok,
        vae=None,
        processor=processor,
        max_new_tokens=10,
        batch_size=2,
        cache=use_cache,
    )
    assert [r["index"] for r in result.records] == [0, 1, 2]
    for record, image in zip(result.records, IMAGES):
        theirs = _vlm_greedy(reference, processor, image, 10)
        assert record["token_ids"] == theirs
        assert len(theirs) >= 3  # a real comparison, not two empty captions


def test_vlm_captions_skip_unreadable_images(tmp_path):
    model, _, tok, processor = _setup("llava_next")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    result = caption_images(
        model,
        [IMAGES[0], bad, tmp_path / "missing.png"],
        tokenizer=tok,
        vae=None,
        processor=processor,
        max_new_tokens=3,
    )
    assert [r["index"] for r in result.records] == [0]
    assert result.skips.skipped == {"corrupt-image": 1, "missing-file": 1}


def test_t2i_on_a_llava_base_cached_equals_uncached():
    model, _, _, _ = _setup("llava_next")
    cached = _sample(model, PROMPTS, 4.0, use_cache=True)
    uncached = _sample(model, PROMPTS, 4.0, use_cache=False)
    assert_close_scaled(cached, uncached)
    assert torch.isfinite(cached).all()


def test_an_image_after_an_understanding_image_cached_equals_uncached():
    """Interleaved on a LLaVA base: [prompt with a VLM-path image] BOI → denoise → image EOI → text.
    Every step through the cache equals the recomputed sequence (vision rows included)."""
    from lmfusion_cli.data.llava_inputs import vision_prompt_segment, vlm_prompt
    from lmfusion_cli.model import llava
    from lmfusion_cli.sampling.context import SequenceContext
    from lmfusion_cli.sampling.schedulers import make_sampler
    from lmfusion_cli.sampling.t2i import GuidedDenoiser, denoise

    model, _, _, processor = _setup("llava_next")
    ids, pixels, sizes = vlm_prompt(processor, IMAGES[0], caption_prompt(processor, "draw it again"))
    results = []
    for use_cache in (True, False):
        context = SequenceContext(
            model, vision_prompt_segment([ids], llava.image_token_id(model.base), pixels, sizes), use_cache=use_cache
        )
        context.add_tokens(torch.tensor([model.boi_id]))
        sampler = make_sampler(model.config, "ddim", 3)
        image = denoise(
            GuidedDenoiser(model, [context.branch()], 1, 1.0), sampler, (4, 8, 8), [torch.Generator().manual_seed(0)]
        )
        context.add_image(image, model.eoi_id)
        results.append((image, context.logits()))
    assert_close_scaled(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=0)
    assert not torch.equal(results[0][0], torch.zeros_like(results[0][0]))


def test_generate_document_takes_a_vision_prefix():
    from lmfusion_cli.data.llava_inputs import vision_prompt_segment, vlm_prompt
    from lmfusion_cli.model import llava
    from lmfusion_cli.sampling.decoding import DecodingOptions
    from lmfusion_cli.sampling.interleaved import generate_document

    model, reference, _, processor = _setup("llava_next")
    ids, pixels, sizes = vlm_prompt(processor, IMAGES[1], caption_prompt(processor))
    prefix = vision_prompt_segment([ids], llava.image_token_id(model.base), pixels, sizes)
    segments, _, reason = generate_document(
        model,
        [],
        bos_id=None,
        eos_id=2,
        prefix=prefix,
        options=DecodingOptions(max_new_tokens=5, steps=2, sampler="ddim"),
    )
    text = [t for s in segments if s["type"] == "text" for t in s["token_ids"]]
    # the text (up to any BOI, which the VLM's frozen head scores too) is the VLM's own greedy answer
    assert text and text == _vlm_greedy(reference, processor, IMAGES[1], 5)[: len(text)]
    assert reason in ("eos", "max-new-tokens", "image-limit")


def test_beam_captions_equal_the_vlms_beam_search():
    from lmfusion_cli.common.errors import UserError

    model, reference, tok, processor = _setup("llava_next")
    result = caption_images(
        model, IMAGES[:2], tokenizer=tok, vae=None, processor=processor, decoding="beam", num_beams=2, max_new_tokens=6
    )
    for record, image in zip(result.records, IMAGES):
        inputs = processor(images=[image], text=[caption_prompt(processor)], return_tensors="pt")
        out = reference.generate(
            **inputs,
            max_new_tokens=6,
            num_beams=2,
            do_sample=False,
            early_stopping=True,
            pad_token_id=0,
            eos_token_id=tok.eos_token_id,
        )
        theirs = out[0, inputs["input_ids"].shape[1] :].tolist()
        assert record["token_ids"] == (theirs[: theirs.index(2)] if 2 in theirs else theirs)
    with pytest.raises(UserError, match="with the KV cache"):
        caption_images(model, IMAGES[:1], tokenizer=tok, vae=None, processor=processor, decoding="beam", cache=False)
    with pytest.raises(UserError, match="rerank image scores captions with the model's image generation"):
        caption_images(model, IMAGES[:1], tokenizer=tok, vae=None, processor=processor, decoding="beam", rerank="image")


def test_a_llava_base_without_its_processor_is_one_sentence(tmp_path):
    from lmfusion_cli.common.errors import UserError

    model, _, tok, _ = _setup("llava_next")
    model.base_id = str(tmp_path)  # a base folder that holds no processor files
    with pytest.raises(UserError, match="processor of the LLaVA base"):
        caption_images(model, IMAGES[:1], tokenizer=tok, vae=None)
