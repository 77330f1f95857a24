"""Text decoding over a `SequenceContext`: greedy, beam search and nucleus (top-p) sampling.

Each function takes a context whose rows end where the text should start (after EOI for a caption,
after the prompt for interleaved text), decodes up to `max_new_tokens` per row and returns each row's
new token ids, without the stop token. A row stops at any of `stop_ids` (EOS; BOI too for interleaved
text, which then hands over to image generation). Finished rows keep running in the batch (their
outputs are ignored): the batch shape, hence the numerics, does not depend on when rows finish.

Beam search follows the usual scheme (Hugging Face `generate` with `early_stopping=True`): per row,
keep the `num_beams` best live hypotheses out of the 2·`num_beams` best extensions; an ending among
the `num_beams` best extensions finishes a hypothesis, scored by sum log-prob / length^`length_penalty`
(length counts the stop token); a row is done once it holds `num_beams` finished ones.
Top-p draws from the smallest set of tokens whose probability reaches `top_p`, after `temperature`,
with one generator per row (seed + row index), so a row's text depends only on its seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmfusion_cli.sampling.config import DecodingOptions
from lmfusion_cli.sampling.context import SequenceContext


def decode(
    context: SequenceContext, options: DecodingOptions, stop_ids: Sequence[int], seeds: Sequence[int] | None = None
) -> list[list[int]]:
    """Decode every row of `context` with `options` (`decoding`, `max_new_tokens`, `num_beams`,
    `length_penalty`, `top_p`, `temperature`); returns token ids per row (stop token excluded)."""
    if options.decoding == "beam":
        return beam_search(context, options, stop_ids)
    return sample_tokens(context, options, stop_ids, seeds)


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """(B, V) logits with every token outside each row's nucleus set to -inf."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    outside = probs.cumsum(dim=-1) - probs >= top_p  # mass before this token already reaches top_p
    outside[:, 0] = False  # always keep the most likely token
    return logits.scatter(-1, order, sorted_logits.masked_fill(outside, float("-inf")))


@torch.no_grad()
def sample_tokens(
    context: SequenceContext, options: DecodingOptions, stop_ids: Sequence[int], seeds: Sequence[int] | None = None
) -> list[list[int]]:
    """Greedy (argmax) or top-p decoding of all rows at once (row b's draws use seeds[b])."""
    generators = None
    if options.decoding == "top-p":
        seeds = list(seeds) if seeds is not None else list(range(context.batch_size))
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    return sample_until(context, options, stop_ids, generators)[0]


@torch.no_grad()
def sample_until(
    context: SequenceContext,
    options: DecodingOptions,
    stop_ids: Sequence[int],
    generators: list[torch.Generator] | None,
) -> tuple[list[list[int]], list[int | None]]:
    """Decode until a stop token or the limit: (tokens per row, the stop token per row or None).

    `generators` None = greedy; else top-p with one generator per row. The stop token is *not*
    added to the context (the caller decides what follows it, e.g. an image after BOI)."""
    B = context.batch_size
    stop = torch.tensor(list(stop_ids), dtype=torch.long)
    tokens: list[list[int]] = [[] for _ in range(B)]
    stopped_by: list[int | None] = [None] * B
    finished = torch.zeros(B, dtype=torch.bool)
    for step in range(options.max_new_tokens):
        logits = context.logits().cpu()  # (B, V) float32
        if generators is None:
            chosen = logits.argmax(dim=-1)
        else:
            probs = _top_p_filter(logits / options.temperature, options.top_p).softmax(dim=-1)
            chosen = torch.stack([torch.multinomial(probs[b], 1, generator=generators[b])[0] for b in range(B)])
        is_stop = torch.isin(chosen, stop)
        for b in range(B):
            if finished[b]:
                continue
            if is_stop[b]:
                stopped_by[b] = int(chosen[b])
            else:
                tokens[b].append(int(chosen[b]))
        finished |= is_stop
        if bool(finished.all()) or step == options.max_new_tokens - 1:
            break
        context.add_tokens(chosen)
    return tokens, stopped_by


@torch.no_grad()
def beam_search(context: SequenceContext, options: DecodingOptions, stop_ids: Sequence[int]) -> list[list[int]]:
    """Beam search per row; the context is expanded to rows × num_beams. Each row's best hypothesis."""
    return [ranked[0][1] if ranked else [] for ranked in beam_candidates(context, options, stop_ids)]


@torch.no_grad()
def beam_candidates(
    context: SequenceContext, options: DecodingOptions, stop_ids: Sequence[int]
) -> list[list[tuple[float, list[int]]]]:
    """Beam search per row, every hypothesis it ends with: per row, (normalised score, token ids) best first
    (the finished hypotheses, and the live beams of a row that ran out of tokens)."""
    B, K = context.batch_size, options.num_beams
    context.select(torch.arange(B).repeat_interleave(K))  # (B·K) rows: row b's beams are b·K .. b·K+K-1
    scores = torch.zeros(B, K)
    scores[:, 1:] = float("-inf")  # all beams start equal: only the first one may expand
    live: list[list[int]] = [[] for _ in range(B * K)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    done = [False] * B
    stop = set(int(s) for s in stop_ids)

    def normalised(score: float, length: int) -> float:
        return score / max(length, 1) ** options.length_penalty

    for step in range(options.max_new_tokens):
        logprobs = context.logits().cpu().log_softmax(dim=-1)  # (B·K, V)
        V = logprobs.shape[-1]
        total = (scores.view(-1, 1) + logprobs).view(B, K * V)
        top_scores, top_index = total.topk(min(2 * K, K * V), dim=1)  # (B, 2K)
        rows, next_tokens, next_scores, next_live = [], [], [], []
        for b in range(B):
            kept = []
            for rank, (score, index) in enumerate(zip(top_scores[b].tolist(), top_index[b].tolist())):
                if done[b] or len(kept) == K or score == float("-inf"):
                    break
                source, token = b * K + index // V, index % V
                if token in stop:
                    if rank < K:  # an ending ranked below the K best extensions is dropped (as in HF)
                        finished[b].append((normalised(score, len(live[source]) + 1), live[source]))
                else:
                    kept.append((source, token, score))
            if len(finished[b]) >= K:
                done[b] = True
            while len(kept) < K:  # a done row (or a tiny vocabulary): fill with dead beams
                kept.append((b * K, 0, float("-inf")))
            for source, token, score in kept:
                rows.append(source)
                next_tokens.append(token)
                next_scores.append(score)
                next_live.append(live[source] + [token])
        if all(done) or step == options.max_new_tokens - 1:
            live, scores = next_live, torch.tensor(next_scores).view(B, K)
            break
        context.select(torch.tensor(rows))
        context.add_tokens(torch.tensor(next_tokens))
        live, scores = next_live, torch.tensor(next_scores).view(B, K)
    results = []
    for b in range(B):
        candidates = list(finished[b])
        if not done[b]:  # out of tokens: live beams compete with what finished
            for k in range(K):
                s = float(scores[b, k])
                if s > float("-inf"):
                    candidates.append((normalised(s, len(live[b * K + k])), live[b * K + k]))
        results.append(sorted(candidates, key=lambda c: c[0], reverse=True))
    return results
