"""A growing sequence the model reads: cached (KV cache) or recomputed from scratch every time.

`SequenceContext` starts from a prefix segment (text, and images with their latents and timesteps),
answers "logits of the next text token" for each row, and grows by one text token per row or by a
finished image. With `use_cache=True` each addition runs only its own positions against the cache
(`forward_segment(update_cache=True)`); with `use_cache=False` the whole sequence so far is run again
(the reference the cache must equal, token for token). `select(rows)` reorders/repeats rows (beam
search). Text decoding strategies and image generation are built on it (`decoding.py`,
`interleaved.py`); this file owns only the bookkeeping of segments, latents and the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from lmfusion_cli.model.cache import KVCache
from lmfusion_cli.model.sequence import VISION_FIELDS, MixedBatch, concat_segments, image_segment, text_segment


@dataclass
class Branch:
    """What one forward pass of a denoising step reads: the sequence before the image being made.

    Cached: the KV cache (`segment` is None). Uncached: the whole sequence so far with its earlier
    images' latents and timesteps, run again at every step. Every row ends with BOI."""

    cache: KVCache | None
    segment: MixedBatch | None = None
    latents: torch.Tensor | None = None
    timesteps: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.cache.batch_size if self.cache is not None else int(self.segment.input_ids.shape[0])

    @property
    def next_positions(self) -> torch.Tensor:
        return self.cache.next_positions if self.cache is not None else self.segment.position_ids[:, -1] + 1

    def predict(self, model, x_t: torch.Tensor, t: float) -> torch.Tensor:
        """The model's prediction (rows, C, H, W) for noisy latents x_t (rows, C, H, W) at timestep t."""
        rows, N = x_t.shape[0], model.num_image_tokens
        timesteps = torch.full((rows,), float(t), dtype=torch.float32, device=x_t.device)
        image = image_segment(self.next_positions.cpu(), N).to(x_t.device)  # builders make CPU tensors
        if self.cache is not None:
            return model.forward_segment(image, latents=x_t, timesteps=timesteps, cache=self.cache).image_prediction
        latents, all_t = x_t, timesteps
        if self.latents is not None:  # earlier images come first in the image order
            latents, all_t = torch.cat([self.latents, x_t]), torch.cat([self.timesteps, timesteps])
        out = model.forward_segment(concat_segments(self.segment, image), latents=latents, timesteps=all_t)
        return out.image_prediction[-rows:]

    @staticmethod
    def stack(branches: list[Branch]) -> Branch:
        """Cached branches as one batch (rows in order, shorter caches left-padded)."""
        if any(b.cache is None for b in branches):
            raise ValueError("only cached branches can be stacked into one batch")
        return Branch(cache=KVCache.stack([b.cache for b in branches]))


def _select_segment(
    segment: MixedBatch, latents: torch.Tensor | None, timesteps: torch.Tensor | None, rows: torch.Tensor
) -> tuple[MixedBatch, torch.Tensor | None, torch.Tensor | None]:
    """Rows `rows` of a segment, with its images renumbered and their latents gathered."""
    if segment.vision_pixels.numel() and not torch.equal(rows.cpu(), torch.arange(segment.input_ids.shape[0])):
        raise ValueError("reordering rows of an uncached LLaVA prompt is not supported; decode it with the cache")
    per_row = [f.name for f in fields(MixedBatch) if f.name not in ("image_generate", *VISION_FIELDS)]
    picked = {name: getattr(segment, name)[rows] for name in per_row}
    picked.update({name: getattr(segment, name) for name in VISION_FIELDS})
    image_index = picked["image_index"]
    old_ids: list[int] = []
    new_index = torch.full_like(image_index, -1)
    for r in range(image_index.shape[0]):
        for old in torch.unique(image_index[r][image_index[r] >= 0]).tolist():  # sorted: keeps image order
            new_index[r][image_index[r] == old] = len(old_ids)
            old_ids.append(old)
    ids = torch.tensor(old_ids, dtype=torch.long)
    picked["image_index"] = new_index
    batch = MixedBatch(**picked, image_generate=segment.image_generate[ids] if old_ids else segment.image_generate[:0])
    if latents is None:
        return batch, None, None
    return batch, latents[ids.to(latents.device)], timesteps[ids.to(timesteps.device)]


class SequenceContext:
    def __init__(
        self,
        model,
        prefix: MixedBatch,
        latents: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
        use_cache: bool = True,
    ):
        """prefix: (B, T) segment (left-padded text, images); latents/timesteps for its images."""
        self.model, self.use_cache = model, use_cache
        self.device = next(model.parameters()).device
        prefix = prefix.to(self.device)
        # uncached: the whole sequence so far; cached: only the prefix (the cache holds the rest)
        self.segment, self.latents, self.timesteps = prefix, latents, timesteps
        self.cache = None
        self._logits: torch.Tensor | None = None
        if use_cache:
            out = model.forward_segment(prefix, latents=latents, timesteps=timesteps, update_cache=True)
            self.cache, self._logits = out.cache, self._last(out.text_logits)

    @staticmethod
    def _last(text_logits: torch.Tensor | None) -> torch.Tensor:
        if text_logits is None:
            raise ValueError("the sequence must end with a text position (e.g. EOI after an image)")
        return text_logits[:, -1].float()  # (B, V): every row's newest position is the last column

    @property
    def batch_size(self) -> int:
        return self.cache.batch_size if self.cache is not None else int(self.segment.input_ids.shape[0])

    @property
    def next_positions(self) -> torch.Tensor:
        """(B,) the RoPE position of the next addition."""
        if self.cache is not None:
            return self.cache.next_positions
        return self.segment.position_ids[:, -1] + 1

    def logits(self) -> torch.Tensor:
        """(B, V) float32 logits of the next text token of every row."""
        if self._logits is None:  # uncached: run everything so far
            out = self.model.forward_segment(self.segment, latents=self.latents, timesteps=self.timesteps)
            self._logits = self._last(out.text_logits)
        return self._logits

    def _grow(self, addition: MixedBatch, latents: torch.Tensor | None, timesteps: torch.Tensor | None) -> None:
        if self.use_cache:
            out = self.model.forward_segment(
                addition, latents=latents, timesteps=timesteps, cache=self.cache, update_cache=True
            )
            self.cache, self._logits = out.cache, self._last(out.text_logits)
            return
        self.segment = concat_segments(self.segment, addition)
        if latents is not None:
            self.latents = latents if self.latents is None else torch.cat([self.latents, latents])
            self.timesteps = timesteps if self.timesteps is None else torch.cat([self.timesteps, timesteps])
        self._logits = None

    def add_tokens(self, tokens: torch.Tensor) -> None:
        """Append one text token per row: tokens (B,) long."""
        positions = self.next_positions.cpu().unsqueeze(1)  # (B, 1)
        self._grow(text_segment(tokens.cpu().view(-1, 1), positions).to(self.device), None, None)

    def add_image(self, latents: torch.Tensor, eoi_id: int) -> None:
        """Append a finished image per row (clean latents (B, C, H, W), t = 0) and its EOI token.

        The row's BOI must already be its last token."""
        B, N = self.batch_size, self.model.num_image_tokens
        starts = self.next_positions.cpu()
        image = image_segment(starts, N)
        eoi = text_segment(torch.full((B, 1), eoi_id, dtype=torch.long), (starts + N).unsqueeze(1))
        zeros = torch.zeros(B, dtype=torch.float32, device=self.device)
        self._grow(concat_segments(image, eoi).to(self.device), latents.to(self.device), zeros)

    def branch(self) -> Branch:
        """The current sequence as a denoising `Branch` (every row must end with BOI)."""
        if self.cache is not None:
            return Branch(cache=self.cache)
        return Branch(cache=None, segment=self.segment, latents=self.latents, timesteps=self.timesteps)

    def select(self, rows: torch.Tensor) -> None:
        """Keep rows `rows` (long, may repeat), in that order."""
        if self.cache is not None:
            self.cache = self.cache.select(rows.to(self.cache.document_ids.device))
        else:
            self.segment, self.latents, self.timesteps = _select_segment(
                self.segment, self.latents, self.timesteps, rows
            )
        if self._logits is not None:
            self._logits = self._logits[rows.to(self._logits.device)]
