"""Noisy-channel caption reranking (`sampling.rerank`): the n-best list of beam search, each candidate's
image loss against one training forward per (candidate, level, noise), the choice against a brute-force
argmin, batch independence, and a model trained only to *generate* that picks the right caption."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lmfusion_cli.model.sequence import caption_to_image, collate
from lmfusion_cli.sampling import rerank
from lmfusion_cli.sampling.captioning import caption_latents, caption_prefix
from lmfusion_cli.sampling.context import SequenceContext
from lmfusion_cli.sampling.decoding import DecodingOptions, beam_candidates, beam_search

BEAM = DecodingOptions(decoding="beam", num_beams=3, max_new_tokens=5)


def _latents(n: int, seed: int = 4) -> torch.Tensor:
    return torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def _context(model, latents):
    B = latents.shape[0]
    return SequenceContext(model, caption_prefix(model, B, 1), latents, torch.zeros(B))


def _one_forward_loss(model, ids, latents, level, noise) -> float:
    """The training forward on the single example `[BOS] ids [BOI] image [EOI]` at one level and noise."""
    example = caption_to_image(
        ids, num_image_tokens=model.num_image_tokens, boi_id=model.boi_id, eoi_id=model.eoi_id, bos_id=1
    )
    batch, _ = collate([example])
    with torch.no_grad():
        out = model(
            batch,
            latents.unsqueeze(0),
            timesteps=model.diffusion.fixed_timesteps(torch.tensor([level])),
            noise=noise.unsqueeze(0),
        )
    return float(out.image_loss)


def test_beam_candidates_are_ranked_and_lead_with_beam_search(model):
    latents = _latents(3)
    ranked = beam_candidates(_context(model, latents), BEAM, stop_ids=[2])
    best = beam_search(_context(model, latents), BEAM, stop_ids=[2])
    assert [r[0][1] for r in ranked] == best
    for candidates in ranked:
        scores = [s for s, _ in candidates]
        assert scores == sorted(scores, reverse=True) and len(candidates) >= 2


def test_image_losses_equal_one_training_forward_per_candidate(model, monkeypatch):
    latents = _latents(1)[0]
    candidates = [[6, 14, 9], [20], [7, 7, 30, 31]]
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    levels = (0.3, 0.7)
    expected = torch.tensor(
        [
            sum(_one_forward_loss(model, ids, latents, lv, noise[d]) for lv in levels for d in range(2)) / 4
            for ids in candidates
        ]
    )
    monkeypatch.setattr(rerank, "MAX_ROWS", 5)  # several forward passes, a partly filled last one
    got = rerank.image_losses(model, candidates, latents, noise, bos_id=1, levels=levels)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert len(set(got.tolist())) == 3, "the caption changes the loss"


def test_rerank_keeps_the_candidate_with_the_lowest_image_loss(model):
    latents = _latents(3, seed=11)
    ranked = beam_candidates(_context(model, latents), BEAM, stop_ids=[2])
    chosen = rerank.rerank_by_image(model, ranked, latents, bos_id=1, seeds=[5, 6, 7])
    for b, candidates in enumerate(ranked):
        texts = [ids for _, ids in candidates if ids]
        noise = torch.randn((rerank.DRAWS, 4, 8, 8), generator=torch.Generator().manual_seed(5 + b))
        brute = [
            sum(
                _one_forward_loss(model, ids, latents[b], lv, noise[d])
                for lv in rerank.LEVELS
                for d in range(rerank.DRAWS)
            )
            for ids in texts
        ]
        assert chosen[b] == texts[min(range(len(texts)), key=brute.__getitem__)]
    # through caption_latents: the same choice, and a row's caption does not depend on its batch
    options = replace(BEAM, rerank="image")
    assert caption_latents(model, latents, options, bos_id=1, eos_id=2, seeds=[5, 6, 7]) == chosen
    assert caption_latents(model, latents[1:2], options, bos_id=1, eos_id=2, seeds=[6]) == chosen[1:2]


def test_rerank_needs_beam_search():
    with pytest.raises(ValueError, match="rerank image chooses among beam search's candidates"):
        DecodingOptions(rerank="image")
    with pytest.raises(ValueError, match="rerank must be one of"):
        DecodingOptions(decoding="beam", rerank="clip")


def test_a_model_trained_only_to_generate_picks_the_right_caption(tokenizer):
    """Two captions, two kinds of image (a fixed pattern with the sign the caption's colour says, under
    per-image noise of the same size). The model is trained on caption→image examples only, so its captioner
    never saw an image; the generation side alone makes reranking name the right colour (chance: half),
    whichever of the two the beam ranked first."""
    from sampling_helpers import make_model

    model = make_model(tokenizer, seed=3, objective="flow", patcher="linear").train()
    words = {name: tokenizer.convert_tokens_to_ids(name) for name in ("a", "red", "blue", "background")}
    captions = {
        +1: [words["a"], words["red"], words["background"]],
        -1: [words["a"], words["blue"], words["background"]],
    }
    pattern = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(42))
    g = torch.Generator().manual_seed(3)

    def images(signs: torch.Tensor) -> torch.Tensor:
        return signs.view(-1, 1, 1, 1) * pattern + torch.randn(signs.shape[0], 4, 8, 8, generator=g)

    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    for _ in range(100):
        signs = torch.tensor([1.0, -1.0] * 4)
        examples = [
            caption_to_image(
                captions[int(s)], num_image_tokens=model.num_image_tokens, boi_id=model.boi_id, eoi_id=model.eoi_id
            )
            for s in signs
        ]
        batch, _ = collate(examples)
        loss = model(batch, images(signs), generator=g).image_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    signs = torch.tensor([1.0, -1.0] * 20)
    held_out = images(signs)
    picked = []
    for first in (+1, -1):  # the beam's order must not decide
        ranked = [[(0.0, captions[first]), (-1.0, captions[-first])]] * len(signs)
        picked.append(rerank.rerank_by_image(model, ranked, held_out, bos_id=None, seeds=range(len(signs))))
    assert picked[0] == picked[1]
    right = sum(c == captions[int(s)] for c, s in zip(picked[0], signs))
    assert right >= 30, f"{right} of {len(signs)} right (chance 20)"
