"""Text decoding vs `transformers.generate` (the fused model on text is the frozen base), top-p
properties, and captioning: cached tokens == uncached tokens exactly, for every strategy."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lmfusion_cli.model.sequence import left_pad
from lmfusion_cli.sampling.captioning import caption_latents
from lmfusion_cli.sampling.context import SequenceContext
from lmfusion_cli.sampling.decoding import DecodingOptions, _top_p_filter, decode

PROMPTS = [[1, 6, 14, 9], [1, 20, 7], [1, 30]]


@pytest.fixture(scope="module")
def text_model(tokenizer):
    """A fused model on the legacy reserved BOI/EOI ids (no extra logit rows) whose BOI/EOI input rows
    equal the base's, so on any text it *is* the base."""
    from sampling_helpers import make_model

    from lmfusion_cli.model import resolve_boi_eoi

    boi, eoi = resolve_boi_eoi(tokenizer)
    m = make_model(tokenizer, seed=5, boi_id=boi, eoi_id=eoi)
    with torch.no_grad():
        m.special_embed.copy_(m.base.model.embed_tokens.weight[[m.boi_id, m.eoi_id]])
    return m


def _hf(model, prompt, **kw):
    out = model.base.generate(torch.tensor([prompt]), do_sample=False, eos_token_id=2, pad_token_id=0, **kw)
    tokens = out[0, len(prompt) :].tolist()
    return tokens[: tokens.index(2)] if 2 in tokens else tokens


@pytest.mark.parametrize("num_beams", [1, 3])
def test_decoding_matches_transformers_generate(text_model, num_beams):
    with torch.no_grad():  # make EOS likely enough to end some hypotheses early
        text_model.base.lm_head.weight[2] += text_model.base.lm_head.weight[36]
    try:
        opts = DecodingOptions(decoding="beam" if num_beams > 1 else "greedy", max_new_tokens=10, num_beams=num_beams)
        ours = decode(SequenceContext(text_model, left_pad(PROMPTS)), opts, stop_ids=[2])
        hf = [
            _hf(text_model, p, max_new_tokens=10, num_beams=num_beams, length_penalty=1.0, early_stopping=True)
            for p in PROMPTS
        ]
    finally:
        with torch.no_grad():
            text_model.base.lm_head.weight[2] -= text_model.base.lm_head.weight[36]
    assert ours == hf
    assert any(len(t) < 10 for t in ours) and any(len(t) == 10 for t in ours), "cover EOS and the limit"


def test_top_p_filter_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]]))
    kept = torch.isfinite(_top_p_filter(logits, 0.75))
    assert kept.tolist() == [[True, True, False, False], [False, False, True, True]]
    assert torch.isfinite(_top_p_filter(logits, 1e-6)).sum(dim=1).tolist() == [1, 1]  # argmax always kept
    assert torch.isfinite(_top_p_filter(logits, 1.0)).all()


def test_top_p_sampling_is_seeded_per_row(model):
    opts = DecodingOptions(decoding="top-p", max_new_tokens=8, top_p=0.95, temperature=2.0)
    run = lambda prompts, seeds: decode(SequenceContext(model, left_pad(prompts)), opts, [2], seeds)  # noqa: E731
    a = run(PROMPTS, [10, 11, 12])
    assert a == run(PROMPTS, [10, 11, 12])
    assert run(PROMPTS[1:2], [11]) == a[1:2]  # a row depends on its own seed only
    assert run(PROMPTS, [20, 21, 22]) != a
    greedy = decode(SequenceContext(model, left_pad(PROMPTS)), DecodingOptions(max_new_tokens=8), [2])
    tiny_p = DecodingOptions(decoding="top-p", max_new_tokens=8, top_p=1e-6)
    assert decode(SequenceContext(model, left_pad(PROMPTS)), tiny_p, [2], [1, 2, 3]) == greedy


@pytest.mark.parametrize("strategy", ["greedy", "beam", "top-p"])
def test_caption_tokens_cached_equal_uncached_exactly(model, strategy):
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    opts = DecodingOptions(decoding=strategy, max_new_tokens=6, num_beams=2, temperature=1.5)
    cached = caption_latents(model, latents, replace(opts, cache=True), bos_id=1, eos_id=2, seeds=[1, 2, 3])
    uncached = caption_latents(model, latents, replace(opts, cache=False), bos_id=1, eos_id=2, seeds=[1, 2, 3])
    assert cached == uncached
    assert all(len(t) > 0 for t in cached)


def test_captions_depend_on_the_image(model):
    opts = DecodingOptions(max_new_tokens=6)
    g = torch.Generator().manual_seed(5)
    latents = torch.randn(4, 4, 8, 8, generator=g) * 3
    captions = caption_latents(model, latents, opts, bos_id=1, eos_id=2)
    assert len({tuple(c) for c in captions}) > 1
    assert caption_latents(model, latents[2:3], opts, bos_id=1, eos_id=2) == captions[2:3]  # batch-independent


def test_decoding_options_are_checked():
    with pytest.raises(ValueError, match="decoding must be one of"):
        DecodingOptions(decoding="sample")
    with pytest.raises(ValueError, match="top_p"):
        DecodingOptions(top_p=0)
