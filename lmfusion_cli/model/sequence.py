"""Mixed text/image sequences: the typed batch every stage hands the model, and its builders.

A sequence is text tokens and images in any order; an image is `BOI, N image positions, EOI`, where
BOI/EOI are text tokens and the N positions carry the patch tokens of one latent. Examples are built
one at a time (`build_example`, `caption_to_image`, `image_to_caption`), then `pack`ed into rows of
fixed length (several documents per row, positions restarting per document, padding masked out) or
`collate`d one per row. Sampling builds segments with `text_segment` / `image_segment`.

Everything here is plain tensors and ints so a data-loader worker can collate cheaply; nothing here
touches the model's weights. Latents travel next to the batch as a (num_images, C, H, W) tensor whose
order is the batch's image index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import torch

TEXT, IMAGE, PAD, VISION = 0, 1, -1, 2
"""Modality codes of a position. VISION: a vision-encoder row of a LLaVA base's understanding image
(routed to the text expert, causal, as in LLaVA; see `model/llava.py`)."""
VISION_FIELDS = ("vision_pixels", "vision_sizes")
"""`MixedBatch` fields indexed by understanding image (LLaVA bases), not by position."""
IGNORE = -100
"""Label of a position with no LM loss (the `ignore_index` of cross-entropy)."""

BOI_TOKEN, EOI_TOKEN = "<|begin_of_image|>", "<|end_of_image|>"
_LLAMA3_RESERVED = ("<|reserved_special_token_0|>", "<|reserved_special_token_1|>")


@dataclass
class MixedBatch:
    """A batch of mixed sequences, (B, T) per field unless noted. Plain tensors only.

    `document_ids` numbers the examples of the whole batch (0..E-1, unique across rows), so the mask
    keeps documents apart and per-example losses can be gathered; -1 marks padding.
    `labels[b, t]` is the text token predicted *at* position t (already shifted), IGNORE elsewhere.
    """

    input_ids: torch.Tensor
    """(B, T) long: token id at text positions (BOI/EOI included); 0 at image and pad positions."""
    modality: torch.Tensor
    """(B, T) long: TEXT, IMAGE or PAD."""
    image_index: torch.Tensor
    """(B, T) long: row of the latents tensor at image positions; -1 elsewhere."""
    patch_index: torch.Tensor
    """(B, T) long: token index inside its image (row-major over the token grid); -1 elsewhere."""
    document_ids: torch.Tensor
    """(B, T) long: example index within the batch; -1 at padding."""
    position_ids: torch.Tensor
    """(B, T) long: RoPE position, restarting at 0 for each document."""
    labels: torch.Tensor
    """(B, T) long: next text token to predict here, IGNORE where there is no LM loss."""
    image_generate: torch.Tensor
    """(num_images,) bool: True = generation target (diffusion loss, full schedule); False = condition
    of an understanding example (noise capped by the config, no diffusion loss)."""
    vision_pixels: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    """(P, C, H, W) float: the VLM image processor's crops of every understanding image of a LLaVA
    base, concatenated in batch order (LLaVA-NeXT: base crop + AnyRes tiles); (0,) when none."""
    vision_sizes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 2, dtype=torch.long))
    """(num_vision_images, 2) long: each understanding image's original (H, W)."""

    @property
    def num_images(self) -> int:
        return int(self.image_generate.shape[0])

    @property
    def num_examples(self) -> int:
        return int(self.document_ids.max().item()) + 1 if self.document_ids.numel() else 0

    def to(self, device: torch.device | str) -> MixedBatch:
        return MixedBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


@dataclass
class Example:
    """One document as 1-D tensors of length L (same meaning as `MixedBatch` fields, local indexes).

    `image_index` counts this example's images from 0; `latents` (k, C, H, W) may ride along so
    `pack` can stack them in batch order.
    """

    input_ids: torch.Tensor
    modality: torch.Tensor
    image_index: torch.Tensor
    patch_index: torch.Tensor
    labels: torch.Tensor
    image_generate: torch.Tensor
    latents: torch.Tensor | None = None
    vision_pixels: torch.Tensor | None = None
    vision_sizes: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass(frozen=True)
class TextPart:
    """Text tokens; `loss` = whether the LM is trained to predict them."""

    ids: Sequence[int]
    loss: bool = True


@dataclass(frozen=True)
class ImagePart:
    """One image (BOI, tokens, EOI); `generate` = diffusion target (True) or condition (False)."""

    generate: bool = True


@dataclass(frozen=True)
class VisionPart:
    """One understanding image of a LLaVA base: `num_tokens` positions of the VLM's image token,
    filled by its vision tower (text expert, causal, no LM loss). Its crops ride in `build_example`'s
    `vision_pixels`."""

    num_tokens: int
    token_id: int


def build_example(
    parts: Sequence[TextPart | ImagePart | VisionPart],
    *,
    num_image_tokens: int,
    boi_id: int,
    eoi_id: int,
    latents: torch.Tensor | None = None,
    vision_pixels: torch.Tensor | None = None,
    vision_sizes: torch.Tensor | None = None,
) -> Example:
    """Lay out text and images in order. The LM loss covers each text token whose part has `loss`,
    plus BOI of generated images (the model must learn to open an image); image positions have none.
    """
    ids: list[int] = []
    modality: list[int] = []
    image_index: list[int] = []
    patch_index: list[int] = []
    wants_loss: list[bool] = []  # is the token at this position a target (of the position before)?
    generate: list[bool] = []
    for part in parts:
        if isinstance(part, TextPart):
            n = len(part.ids)
            ids += list(part.ids)
            modality += [TEXT] * n
            image_index += [-1] * n
            patch_index += [-1] * n
            wants_loss += [part.loss] * n
            continue
        if isinstance(part, VisionPart):
            n = part.num_tokens
            ids += [part.token_id] * n
            modality += [VISION] * n
            image_index += [-1] * n
            patch_index += [-1] * n
            wants_loss += [False] * n
            continue
        k = len(generate)
        generate.append(part.generate)
        ids += [boi_id] + [0] * num_image_tokens + [eoi_id]
        modality += [TEXT] + [IMAGE] * num_image_tokens + [TEXT]
        image_index += [-1] + [k] * num_image_tokens + [-1]
        patch_index += [-1] + list(range(num_image_tokens)) + [-1]
        wants_loss += [part.generate] + [False] * num_image_tokens + [False]
    labels = [IGNORE] * len(ids)
    for p in range(len(ids) - 1):
        if modality[p] == TEXT and modality[p + 1] == TEXT and wants_loss[p + 1]:
            labels[p] = ids[p + 1]
    if latents is not None and latents.shape[0] != len(generate):
        raise ValueError(f"got {latents.shape[0]} latents for {len(generate)} images in the example")
    long = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    return Example(
        input_ids=long(ids),
        modality=long(modality),
        image_index=long(image_index),
        patch_index=long(patch_index),
        labels=long(labels),
        image_generate=torch.tensor(generate, dtype=torch.bool),
        latents=latents,
        vision_pixels=vision_pixels,
        vision_sizes=vision_sizes,
    )


def _with_ends(ids: Sequence[int], bos_id: int | None, eos_id: int | None) -> tuple[list[int], list[int]]:
    return ([bos_id] if bos_id is not None else []), list(ids) + ([eos_id] if eos_id is not None else [])


def caption_to_image(
    caption_ids: Sequence[int],
    *,
    num_image_tokens: int,
    boi_id: int,
    eoi_id: int,
    bos_id: int | None = None,
    eos_id: int | None = None,
    latents: torch.Tensor | None = None,
) -> Example:
    """`[bos] caption BOI image EOI [eos]`: trains generation (the image is a diffusion target)."""
    head, caption = _with_ends(caption_ids, bos_id, None)
    tail = [eos_id] if eos_id is not None else []
    parts = [TextPart(head + caption), ImagePart(generate=True), TextPart(tail)]
    return build_example(parts, num_image_tokens=num_image_tokens, boi_id=boi_id, eoi_id=eoi_id, latents=latents)


def image_to_caption(
    caption_ids: Sequence[int],
    *,
    num_image_tokens: int,
    boi_id: int,
    eoi_id: int,
    bos_id: int | None = None,
    eos_id: int | None = None,
    latents: torch.Tensor | None = None,
) -> Example:
    """`[bos] BOI image EOI caption [eos]`: trains understanding (LM loss on the caption only)."""
    head, caption = _with_ends(caption_ids, bos_id, eos_id)
    parts = [TextPart(head, loss=False), ImagePart(generate=False), TextPart(caption)]
    return build_example(parts, num_image_tokens=num_image_tokens, boi_id=boi_id, eoi_id=eoi_id, latents=latents)


def pack(examples: Sequence[Example], row_length: int, pad_id: int = 0) -> tuple[MixedBatch, torch.Tensor | None]:
    """Pack examples first-fit into rows of `row_length` positions (documents never straddle rows).

    Returns the batch and the latents stacked in the batch's image order (None when the examples
    carry none). Document ids follow the input order of the examples.
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for i, ex in enumerate(examples):
        if len(ex) > row_length:
            raise ValueError(f"example {i} has {len(ex)} positions, more than row_length={row_length}")
        slot = next((r for r, free in enumerate(room) if free >= len(ex)), None)
        if slot is None:
            rows.append([])
            room.append(row_length)
            slot = len(rows) - 1
        rows[slot].append(i)
        room[slot] -= len(ex)
    return _assemble(examples, rows, row_length, pad_id)


def collate(examples: Sequence[Example], pad_id: int = 0) -> tuple[MixedBatch, torch.Tensor | None]:
    """One example per row, right-padded to the longest."""
    length = max(len(ex) for ex in examples)
    return _assemble(examples, [[i] for i in range(len(examples))], length, pad_id)


def _assemble(
    examples: Sequence[Example], rows: list[list[int]], row_length: int, pad_id: int
) -> tuple[MixedBatch, torch.Tensor | None]:
    B = len(rows)
    input_ids = torch.full((B, row_length), pad_id, dtype=torch.long)
    modality = torch.full((B, row_length), PAD, dtype=torch.long)
    image_index = torch.full((B, row_length), -1, dtype=torch.long)
    patch_index = torch.full((B, row_length), -1, dtype=torch.long)
    document_ids = torch.full((B, row_length), -1, dtype=torch.long)
    position_ids = torch.zeros((B, row_length), dtype=torch.long)
    labels = torch.full((B, row_length), IGNORE, dtype=torch.long)
    image_generate: list[torch.Tensor] = []
    latents: list[torch.Tensor] = []
    vision_pixels: list[torch.Tensor] = []
    vision_sizes: list[torch.Tensor] = []
    images_so_far = 0
    for b, members in enumerate(rows):
        start = 0
        for i in members:
            ex, n = examples[i], len(examples[i])
            span = slice(start, start + n)
            input_ids[b, span] = ex.input_ids
            modality[b, span] = ex.modality
            is_image = ex.image_index >= 0
            image_index[b, span] = torch.where(is_image, ex.image_index + images_so_far, ex.image_index)
            patch_index[b, span] = ex.patch_index
            document_ids[b, span] = i
            position_ids[b, span] = torch.arange(n)
            labels[b, span] = ex.labels
            image_generate.append(ex.image_generate)
            if ex.latents is not None:
                latents.append(ex.latents)
            if ex.vision_pixels is not None:
                vision_pixels.append(ex.vision_pixels)
                vision_sizes.append(ex.vision_sizes)
            images_so_far += int(ex.image_generate.shape[0])
            start += n
    # image indexes, `image_generate` and `latents` all follow (row, position) order
    batch = MixedBatch(
        input_ids=input_ids,
        modality=modality,
        image_index=image_index,
        patch_index=patch_index,
        document_ids=document_ids,
        position_ids=position_ids,
        labels=labels,
        image_generate=torch.cat(image_generate) if image_generate else torch.zeros(0, dtype=torch.bool),
    )
    if vision_pixels:
        batch.vision_pixels, batch.vision_sizes = torch.cat(vision_pixels), torch.cat(vision_sizes)
    if latents and sum(int(lat.shape[0]) for lat in latents) != images_so_far:
        raise ValueError("either every example with images carries latents or none does")
    return batch, (torch.cat(latents) if latents else None)


# ---- segments for cached sampling ---------------------------------------------------------------


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> MixedBatch:
    """Text prompts of different lengths as one left-padded segment (positions start at 0 per row).

    Left padding puts every row's last token in the last column, so later segments of all rows can
    share one set of columns; padding has document id -1 and is never attended to.
    """
    B, T = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    valid = torch.zeros((B, T), dtype=torch.bool)
    for b, prompt in enumerate(prompts):
        if len(prompt):
            ids[b, T - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
            valid[b, T - len(prompt) :] = True
    positions = (valid.long().cumsum(dim=1) - 1).clamp(min=0)
    return text_segment(ids, positions, valid)


def text_segment(input_ids: torch.Tensor, position_ids: torch.Tensor, valid: torch.Tensor | None = None) -> MixedBatch:
    """A text-only segment (B, T) at explicit positions; `valid` False marks padding."""
    valid = torch.ones_like(input_ids, dtype=torch.bool) if valid is None else valid
    minus_one = torch.full_like(input_ids, -1)
    return MixedBatch(
        input_ids=torch.where(valid, input_ids, 0),
        modality=torch.where(valid, TEXT, PAD),
        image_index=minus_one,
        patch_index=minus_one.clone(),
        document_ids=torch.where(valid, 0, -1),
        position_ids=position_ids,
        labels=torch.full_like(input_ids, IGNORE),
        image_generate=torch.zeros(0, dtype=torch.bool),
    )


def image_segment(start_positions: torch.Tensor, num_image_tokens: int) -> MixedBatch:
    """One image per row, its N tokens at positions start..start+N-1; row b uses latent b.

    start_positions: (B,) long, the position right after each row's BOI.
    """
    B, N = int(start_positions.shape[0]), num_image_tokens
    patch = torch.arange(N).expand(B, N)
    return MixedBatch(
        input_ids=torch.zeros((B, N), dtype=torch.long),
        modality=torch.full((B, N), IMAGE, dtype=torch.long),
        image_index=torch.arange(B).unsqueeze(1).expand(B, N).clone(),
        patch_index=patch.clone(),
        document_ids=torch.zeros((B, N), dtype=torch.long),
        position_ids=start_positions.long().unsqueeze(1) + patch,
        labels=torch.full((B, N), IGNORE, dtype=torch.long),
        image_generate=torch.ones(B, dtype=torch.bool),
    )


def concat_segments(*segments: MixedBatch) -> MixedBatch:
    """Join segments of the same rows along time (e.g. an image segment then its EOI)."""
    offsets, image_count = [], 0
    for seg in segments:
        offsets.append(image_count)
        image_count += seg.num_images
    joined = {
        f.name: torch.cat(
            [
                torch.where(seg.image_index >= 0, seg.image_index + off, -1)
                if f.name == "image_index"
                else getattr(seg, f.name)
                for seg, off in zip(segments, offsets)
            ],
            dim=0 if f.name in ("image_generate", *VISION_FIELDS) else 1,
        )
        for f in fields(MixedBatch)
    }
    return MixedBatch(**joined)


def resolve_boi_eoi(tokenizer) -> tuple[int, int]:
    """Token ids for BOI/EOI: the tokenizer's `<|begin_of_image|>`/`<|end_of_image|>` if present,
    else Llama-3's first two reserved special tokens, else two new special tokens added to it.

    New ids lie at or past the base vocabulary; `LMFusionModel` then gives them new rows.
    """
    vocab = tokenizer.get_vocab()
    for pair in ((BOI_TOKEN, EOI_TOKEN), _LLAMA3_RESERVED):
        if all(tok in vocab for tok in pair):
            return vocab[pair[0]], vocab[pair[1]]
    tokenizer.add_tokens([BOI_TOKEN, EOI_TOKEN], special_tokens=True)
    vocab = tokenizer.get_vocab()
    return vocab[BOI_TOKEN], vocab[EOI_TOKEN]
