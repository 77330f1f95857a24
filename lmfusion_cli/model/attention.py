"""The hybrid attention mask and the two kernels that apply it.

The mask is built from three small predicates over per-position metadata (DESIGN §4):

    allowed(q, kv) = (causal(q, kv) OR same_image(q, kv)) AND same_document(q, kv)

- causal: the key's slot is not after the query's (slots order the cache, then the new segment);
- same_image: both positions are tokens of the same image (bidirectional inside an image);
- same_document: both positions belong to the same packed document (padding has document -1 and
  only ever sees padding, so no row is fully masked).

`sdpa` turns the predicates into a dense (B, 1, Tq, Tk) bool mask (the reference); `flex` turns the
same predicates into a FlexAttention `BlockMask`. torch has no FlexAttention backward on CPU: CPU
training must use `sdpa` (we raise instead of failing deep inside torch).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def causal(q_slot: torch.Tensor, kv_slot: torch.Tensor) -> torch.Tensor:
    return kv_slot <= q_slot


def same_image(q_image: torch.Tensor, kv_image: torch.Tensor) -> torch.Tensor:
    return (q_image >= 0) & (q_image == kv_image)


def same_document(q_doc: torch.Tensor, kv_doc: torch.Tensor) -> torch.Tensor:
    return q_doc == kv_doc


def hybrid(q_slot, kv_slot, q_image, kv_image, q_doc, kv_doc) -> torch.Tensor:
    """The LMFusion mask predicate; arguments broadcast against each other."""
    return (causal(q_slot, kv_slot) | same_image(q_image, kv_image)) & same_document(q_doc, kv_doc)


@dataclass
class MaskInfo:
    """Per-position metadata the predicates read. Keys = cached slots followed by the queries.

    q_image/kv_image: (B, Tq)/(B, Tk) image id or -1; q_doc/kv_doc: document id or -1 (padding).
    Query t sits at slot `past_length + t`.
    """

    q_image: torch.Tensor
    kv_image: torch.Tensor
    q_doc: torch.Tensor
    kv_doc: torch.Tensor
    past_length: int

    @property
    def q_slots(self) -> torch.Tensor:
        return torch.arange(self.q_doc.shape[1], device=self.q_doc.device) + self.past_length

    @property
    def kv_slots(self) -> torch.Tensor:
        return torch.arange(self.kv_doc.shape[1], device=self.kv_doc.device)


def dense_mask(info: MaskInfo) -> torch.Tensor:
    """(B, 1, Tq, Tk) bool, True = may attend."""
    mask = hybrid(
        info.q_slots[None, :, None],
        info.kv_slots[None, None, :],
        info.q_image[:, :, None],
        info.kv_image[:, None, :],
        info.q_doc[:, :, None],
        info.kv_doc[:, None, :],
    )
    return mask.unsqueeze(1)


def flex_block_mask(info: MaskInfo):
    """The same predicate as a FlexAttention BlockMask (built once per forward, shared by layers)."""
    from torch.nn.attention.flex_attention import create_block_mask

    q_image, kv_image, q_doc, kv_doc, past = info.q_image, info.kv_image, info.q_doc, info.kv_doc, info.past_length

    def mask_mod(b, h, q_idx, kv_idx):
        return hybrid(q_idx + past, kv_idx, q_image[b, q_idx], kv_image[b, kv_idx], q_doc[b, q_idx], kv_doc[b, kv_idx])

    B, Tq = q_doc.shape
    return create_block_mask(mask_mod, B, None, Tq, kv_doc.shape[1], device=q_doc.device)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


class Attention:
    """The mask of one forward pass, built once and applied in every layer by `__call__`."""

    def __init__(self, info: MaskInfo, backend: str):
        self.backend = backend
        self.mask = dense_mask(info) if backend == "sdpa" else flex_block_mask(info)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """q: (B, Hq, Tq, hd); k, v: (B, Hkv, Tk, hd) → (B, Hq, Tq, hd). GQA when Hq > Hkv."""
        gqa = q.shape[1] != k.shape[1]
        if self.backend == "sdpa":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, scale=scale, enable_gqa=gqa)
        from torch.nn.attention.flex_attention import flex_attention

        if q.device.type == "cpu":
            if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
                raise RuntimeError(
                    "attention_backend='flex' has no backward on CPU in torch; train on CPU with "
                    "attention_backend='sdpa' (flex is for no-grad use here, or a GPU)"
                )
            return flex_attention(q, k, v, block_mask=self.mask, scale=scale, enable_gqa=gqa)
        return _compiled_flex()(q, k, v, block_mask=self.mask, scale=scale, enable_gqa=gqa)
