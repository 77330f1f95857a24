"""The training data stream: which item, which task, which caption, which latent draw — per sample.

The stream is a pure function of (seed, global sample position): position g is item
`perm(seed, epoch)[g mod N]` of epoch `g // N`, and everything random about it (task, caption
dropout, the latent drawn from the VAE posterior, the sample's noise seed) comes from a generator
seeded by (seed, g). So the stream's whole state is one integer, `consumed`, and

- resume is exact mid-epoch and across epoch boundaries (restore `consumed`, nothing else);
- every item is seen exactly once per epoch;
- the split over processes does not change what the global batch holds: each optimizer step takes
  the next `batch_size` positions and process r of W takes its contiguous share, so 1 process and
  2 processes see the same global batch (and a resume with another world size keeps it).

What this file does not do: tokenise, lay out sequences or pack rows (the workload does that with
the model package's `sequence` builders), or check finiteness (the loop does, on every rank).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

GENERATION, UNDERSTANDING = "generation", "understanding"
INTERLEAVED, TEXT_ONLY = "interleaved", "text"
_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant to decorrelate (seed, position) seeds


class LatentSource(Protocol):
    """What the stream needs of a latent cache (`data.latents.open_latent_cache` provides it)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any:
        """An item with at least `key` (str) and `caption` (str), as a mapping or as attributes."""

    def draw(self, index: int, generator: torch.Generator) -> torch.Tensor:
        """A scaled latent (C, H, W) of item `index`, sampled with `generator`."""


@dataclass(frozen=True)
class Sample:
    """One training example before tokenisation."""

    key: str
    """The item's key in the latent cache (logged when its loss is not finite)."""
    task: str
    """`generation` (caption → image), `understanding` (image → caption), `interleaved` (text, image,
    text: the item's document) or `text` (a text-only document, no image)."""
    caption: str
    """The caption (empty when dropped for classifier-free guidance); the text before the image for
    `interleaved`; the whole document for `text`."""
    latent: torch.Tensor | None
    """(C, H, W) float32 scaled latent; None for `text`."""
    position: int
    """Global stream position (epoch · N + index in the epoch)."""
    noise_seed: int
    """Seed for this sample's diffusion noise and timestep (independent of the process layout)."""
    after: str = ""
    """`interleaved`: the text after the image."""


def item_field(item: Any, name: str) -> Any:
    """`item[name]` for mapping items (the latent cache), `item.name` otherwise."""
    return item[name] if isinstance(item, dict) else getattr(item, name)


def sample_seed(seed: int, position: int, salt: int = 0) -> int:
    """A 63-bit seed from (run seed, position, salt); stable across processes and Python versions."""
    x = (seed * _MIX + position * 0xBF58476D1CE4E5B9 + salt * 0x94D049BB133111EB) & ((1 << 64) - 1)
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & ((1 << 64) - 1)
    x ^= x >> 29
    return x & ((1 << 63) - 1)


def _document(item: Any) -> dict[str, str] | None:
    """The item's interleaved document `{"before", "after"}` (data/interleaved.py), if it has one."""
    meta = item.get("meta") if isinstance(item, dict) else getattr(item, "meta", None)
    document = (meta or {}).get("document") if isinstance(meta, dict) else None
    return document if isinstance(document, dict) and "before" in document else None


class SampleStream:
    """Deterministic, exactly resumable sample stream over a latent source.

    `state_dict()` / `load_state_dict()` carry the one integer `consumed` plus the source length and
    seed, which are checked on load (another cache or seed would silently change the data)."""

    def __init__(
        self,
        source: LatentSource,
        seed: int,
        generation_fraction: float,
        caption_dropout: float,
        interleaved_fraction: float = 0.0,
        text_only_fraction: float = 0.0,
    ):
        if len(source) == 0:
            raise ValueError("the latent source is empty")
        self.source = source
        self.seed = seed
        self.generation_fraction = generation_fraction
        self.caption_dropout = caption_dropout
        self.interleaved_fraction = interleaved_fraction
        self.text_only_fraction = text_only_fraction
        self.consumed = 0
        self._perm_epoch = -1
        self._perm: torch.Tensor | None = None

    @property
    def epoch(self) -> int:
        return self.consumed // len(self.source)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, salt=1))
            self._perm = torch.randperm(len(self.source), generator=g)
            self._perm_epoch = epoch
        assert self._perm is not None
        return self._perm

    def sample_at(self, position: int) -> Sample:
        """The sample at global position `position` (pure: does not move the stream)."""
        epoch, offset = divmod(position, len(self.source))
        index = int(self._permutation(epoch)[offset])
        g = torch.Generator().manual_seed(sample_seed(self.seed, position, salt=2))
        u_task, u_drop = torch.rand(2, generator=g).tolist()
        item = self.source[index]
        # the first `text_only_fraction` of u_task: a text-only negative; the next `interleaved_fraction`:
        # the item's document; the rest, rescaled, splits generation/understanding (unchanged when both are 0)
        rest = 1.0 - self.text_only_fraction - self.interleaved_fraction
        if u_task < self.text_only_fraction:
            from lmfusion_cli.data.interleaved import text_only_document

            text_index = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
            return Sample(
                key=f"text-{text_index}",
                task=TEXT_ONLY,
                caption=text_only_document(text_index),
                latent=None,
                position=position,
                noise_seed=0,
            )
        document = _document(item)
        if u_task < self.text_only_fraction + self.interleaved_fraction and document is not None:
            task, caption, after = INTERLEAVED, document["before"], document["after"]
        else:
            u = (u_task - self.text_only_fraction - self.interleaved_fraction) / rest if rest > 0 else u_task
            task = GENERATION if u < self.generation_fraction else UNDERSTANDING
            caption, after = item_field(item, "caption"), ""
            if task == GENERATION and u_drop < self.caption_dropout:
                caption = ""
        latent = self.source.draw(index, g).float()
        noise_seed = int(torch.randint(0, 2**62, (1,), generator=g))
        return Sample(
            key=str(item_field(item, "key")),
            task=task,
            caption=caption,
            latent=latent,
            position=position,
            noise_seed=noise_seed,
            after=after,
        )

    def next_step(self, batch_size: int, rank: int = 0, world_size: int = 1) -> list[Sample]:
        """This process's share of the next global batch of `batch_size` samples; advances the stream.

        Process r takes positions [r·b, (r+1)·b) of the step, b = batch_size / world_size."""
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by {world_size} processes")
        share = batch_size // world_size
        start = self.consumed + rank * share
        samples = [self.sample_at(p) for p in range(start, start + share)]
        self.consumed += batch_size
        return samples

    def state_dict(self) -> dict[str, int]:
        return {"consumed": self.consumed, "num_items": len(self.source), "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["num_items"] != len(self.source) or state["seed"] != self.seed:
            raise ValueError(
                f"the checkpoint's data position is for {state['num_items']} items with seed {state['seed']}, "
                f"but this run has {len(self.source)} items with seed {self.seed}"
            )
        self.consumed = int(state["consumed"])
