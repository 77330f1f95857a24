"""KV cache: cached == uncached (mixed sequences, text decoding, CFG batches with left padding)."""

from __future__ import annotations

import torch

from lmfusion_cli.model import KVCache, concat_segments, image_segment, left_pad, text_segment

from .helpers import tiny_model

ATOL = 1e-5


def _text(ids, start=0):
    ids = torch.tensor([ids])
    return text_segment(ids, torch.arange(start, start + ids.shape[1]).unsqueeze(0))


def _mixed(model, prompt, after):
    """prompt (ends with BOI) | image | EOI + after, as three segments of one row."""
    N = model.num_image_tokens
    image = image_segment(torch.tensor([len(prompt)]), N)
    tail = _text([model.eoi_id, *after], start=len(prompt) + N)
    return _text(prompt), image, tail


def test_cached_equals_uncached_on_a_mixed_sequence():
    model = tiny_model("qwen3")
    prompt, image, tail = _mixed(model, [1, 5, 6, 7, model.boi_id], [8, 9, 2])
    x_t, t = torch.randn(1, 4, 8, 8), torch.tensor([321.0])
    with torch.no_grad():
        full = model.forward_segment(concat_segments(prompt, image, tail), x_t, t)
        first = model.forward_segment(prompt, update_cache=True)
        denoise = model.forward_segment(image, x_t, t, cache=first.cache)  # a denoising step
        assert denoise.cache is first.cache and denoise.text_logits is None
        commit = model.forward_segment(concat_segments(image, tail), x_t, t, cache=first.cache, update_cache=True)
    P, N = prompt.input_ids.shape[1], model.num_image_tokens
    torch.testing.assert_close(first.text_logits, full.text_logits[:, :P], atol=ATOL, rtol=0)
    torch.testing.assert_close(denoise.image_prediction, full.image_prediction, atol=ATOL, rtol=0)
    torch.testing.assert_close(commit.image_prediction, full.image_prediction, atol=ATOL, rtol=0)
    torch.testing.assert_close(commit.text_logits[:, N:], full.text_logits[:, P + N :], atol=ATOL, rtol=0)
    assert commit.cache.length == P + N + tail.input_ids.shape[1]
    assert commit.cache.next_positions.tolist() == [P + N + tail.input_ids.shape[1]]


def test_incremental_text_decoding_equals_full_forward():
    model = tiny_model("llama3")
    ids = [1, 11, 12, 13, 14, 15, 16, 17]
    with torch.no_grad():
        full = model.text_logits(torch.tensor([ids]))
        out = model.forward_segment(_text(ids[:3]), update_cache=True)
        last = model.forward_segment(_text(ids[:3]), logits_to_keep=1).text_logits
        steps = [out.text_logits]
        for i in range(3, len(ids)):
            out = model.forward_segment(_text([ids[i]], start=i), cache=out.cache, update_cache=True)
            steps.append(out.text_logits)
    torch.testing.assert_close(torch.cat(steps, dim=1)[..., : full.shape[-1]], full, atol=ATOL, rtol=0)
    assert last.shape == steps[0][:, -1:].shape
    torch.testing.assert_close(last[:, 0], steps[0][:, -1], atol=ATOL, rtol=0)


def test_cfg_branches_with_different_prefix_lengths_run_as_one_batch():
    model = tiny_model("llama3")
    N, boi = model.num_image_tokens, model.boi_id
    cond_prompt, uncond_prompt = [1, 5, 6, 7, 8, boi], [1, boi]
    x_t, t = torch.randn(1, 4, 8, 8), torch.tensor([500.0])
    with torch.no_grad():
        # reference: each branch alone, uncached
        alone = []
        for prompt in (cond_prompt, uncond_prompt):
            seq = concat_segments(_text(prompt), image_segment(torch.tensor([len(prompt)]), N))
            alone.append(model.forward_segment(seq, x_t, t).image_prediction)
        # each branch keeps its own cache; stacked (left-padded) for one batched denoising step
        cond = model.forward_segment(_text(cond_prompt), update_cache=True).cache
        uncond = model.forward_segment(_text(uncond_prompt), update_cache=True).cache
        both = KVCache.stack([cond, uncond])
        step = model.forward_segment(
            image_segment(both.next_positions, N), x_t.repeat(2, 1, 1, 1), t.repeat(2), cache=both
        )
        # the same from one left-padded prompt batch
        padded = model.forward_segment(left_pad([cond_prompt, uncond_prompt]), update_cache=True).cache
        step2 = model.forward_segment(
            image_segment(padded.next_positions, N), x_t.repeat(2, 1, 1, 1), t.repeat(2), cache=padded
        )
    assert both.document_ids[1].tolist() == [-1] * 4 + [0] * 2
    for prediction in (step.image_prediction, step2.image_prediction):
        torch.testing.assert_close(prediction[0:1], alone[0], atol=ATOL, rtol=0)
        torch.testing.assert_close(prediction[1:2], alone[1], atol=ATOL, rtol=0)


def test_flex_with_cache_equals_sdpa_with_cache():
    sdpa, flex = tiny_model("llama3"), tiny_model("llama3", attention_backend="flex")
    N, boi = sdpa.num_image_tokens, sdpa.boi_id
    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([500.0, 500.0])
    outs = []
    with torch.no_grad():
        for model in (sdpa, flex):
            cache = model.forward_segment(left_pad([[1, 5, 6, 7, boi], [1, boi]]), update_cache=True).cache
            outs.append(
                model.forward_segment(image_segment(cache.next_positions, N), x_t, t, cache=cache).image_prediction
            )
    torch.testing.assert_close(outs[1], outs[0], atol=ATOL, rtol=1e-5)


def test_select_repeats_rows_for_several_samples_per_prompt():
    model = tiny_model("llama3")
    with torch.no_grad():
        cache = model.forward_segment(left_pad([[1, 5, 6], [1, 7]]), update_cache=True).cache
    picked = cache.select(torch.arange(2).repeat_interleave(3))
    assert picked.batch_size == 6 and torch.equal(picked.keys[0][3], cache.keys[0][1])
    assert picked.next_positions.tolist() == [3, 3, 3, 2, 2, 2]
