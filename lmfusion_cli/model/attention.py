"""The hybrid attention mask and the two kernels that apply it.

The mask is built from three small predicates over per-position metadata (DESIGN §4):

    allowed(q, kv) = (causal(q, kv) OR same_image(q, kv)) AND same_document(q, kv)

- causal: the key's slot is not after the query's (slots order the cache, then the new segment);
- same_image: both positions are tokens of the same image (bidirectional inside an image);
- same_document: both positions belong to the same packed document (padding has document -1 and
  only ever sees padding, so no row is fully masked).

`sdpa` turns the predicates into a dense (B, 1, Tq, Tk) bool mask (the reference); `flex` turns the
same predicates into a FlexAttention `BlockMask` (compiled kernel, one mask per micro-batch shared by
all layers). `auto` (the default) is flex on CUDA and sdpa elsewhere: torch has no FlexAttention
backward on CPU, so CPU training uses sdpa (we raise instead of failing deep inside torch). On CUDA,
sdpa never passes a mask with `enable_gqa` (that reaches only the math kernel): see `sdpa_kv`.
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

    @classmethod
    def after_cache(cls, image_index: torch.Tensor, document_ids: torch.Tensor, past_documents: torch.Tensor):
        """Queries (B, T) after `past_documents` (B, S) cached slots, whose images are finished (id -1)."""
        return cls(
            q_image=image_index,
            kv_image=torch.cat([torch.full_like(past_documents, -1), image_index], dim=1),
            q_doc=document_ids,
            kv_doc=torch.cat([past_documents, document_ids], dim=1),
            past_length=past_documents.shape[1],
        )

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


KV_BUCKET = 128
"""Flex pads the key length up to a multiple of this (its block size): growing caches in sampling then
change the compiled kernel's shapes once per 128 keys, not once per step."""
_BUCKET_PAD_DOC = -2
"""Document id of bucket-padding keys: equal to no query's document, padding queries (-1) included."""


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """`auto` → `flex` on CUDA (compiled, memory-safe), `sdpa` elsewhere (flex has no CPU backward)."""
    if backend != "auto":
        return backend
    return "flex" if torch.device(device).type == "cuda" else "sdpa"


def expand_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, Hkv, T, hd) → (B, Hkv·groups, T, hd): query head h reads key/value head h // groups (GQA)."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def sdpa_kv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, masked: bool, device_type: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(k, v, enable_gqa) to pass to `scaled_dot_product_attention`.

    On CUDA no fused kernel accepts a mask together with `enable_gqa=True`: PyTorch silently takes the
    math kernel, which materialises fp32 (B, H, Tq, Tk) scores (issue 22). There, masked GQA expands
    K/V to the query heads instead (the memory-efficient kernel takes a mask, not GQA). Elsewhere (CPU)
    and unmasked, `enable_gqa` is passed and no copy is made.
    """
    groups = q.shape[1] // k.shape[1]
    if groups == 1:
        return k, v, False
    if masked and (device_type or q.device.type) == "cuda":
        return expand_kv(k, groups), expand_kv(v, groups), False
    return k, v, True


def flex_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v in one dtype for flex_attention: the autocast dtype when autocast is on, else their common one.

    Autocast does not cover flex_attention (a higher-order op; pytorch issue 165468). Under bf16 autocast
    the residual stream stays fp32, so rotary embedding turns q and k back to fp32 while v is bf16: flex
    would then run in fp32 (torch ≥ 2.11 upcasts the lower-precision v) or refuse the mix (older torch)."""
    device_type = q.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    else:
        dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def flex_block_mask(info: MaskInfo, kv_length: int | None = None):
    """The same predicate as a FlexAttention BlockMask, built once per forward and shared by all layers.

    `past_length` enters as a tensor and keys are padded to `kv_length` (document `_BUCKET_PAD_DOC`),
    so sampling with a growing cache reuses the compiled kernel. Built compiled on CUDA.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    B, Tq = info.q_doc.shape
    Tk = kv_length or info.kv_doc.shape[1]
    extra = Tk - info.kv_doc.shape[1]
    kv_image = F.pad(info.kv_image, (0, extra), value=-1)
    kv_doc = F.pad(info.kv_doc, (0, extra), value=_BUCKET_PAD_DOC)
    q_image, q_doc = info.q_image, info.q_doc
    past = torch.tensor(info.past_length, device=q_doc.device)

    def mask_mod(b, h, q_idx, kv_idx):
        return hybrid(q_idx + past, kv_idx, q_image[b, q_idx], kv_image[b, kv_idx], q_doc[b, q_idx], kv_doc[b, kv_idx])

    compiled = q_doc.device.type == "cuda"
    return create_block_mask(mask_mod, B, None, Tq, Tk, device=q_doc.device, _compile=compiled)


@functools.cache
def _compiled_flex(device_type: str):
    """flex_attention compiled once per device type. On CPU with static shapes: inductor's CPU flex
    template fails to compile dynamic shapes (torch 2.14: undeclared `cur_qSplitSize` symbols); the
    bucketed key length keeps the number of static shapes small."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False if device_type == "cpu" else None)


class Attention:
    """The mask of one forward pass (one micro-batch), built once and applied in every layer by `__call__`.

    backend: `auto` (flex on CUDA, sdpa elsewhere), `sdpa` or `flex`.
    """

    def __init__(self, info: MaskInfo, backend: str):
        self.backend = resolve_backend(backend, info.q_doc.device)
        if self.backend == "sdpa":
            self.mask = dense_mask(info)
            self.kv_length = info.kv_doc.shape[1]
        else:
            Tk = info.kv_doc.shape[1]
            self.kv_length = -(-Tk // KV_BUCKET) * KV_BUCKET
            self.mask = flex_block_mask(info, self.kv_length)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """q: (B, Hq, Tq, hd); k, v: (B, Hkv, Tk, hd) → (B, Hq, Tq, hd). GQA when Hq > Hkv."""
        if self.backend == "sdpa":
            k, v, gqa = sdpa_kv(q, k, v, masked=True)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, scale=scale, enable_gqa=gqa)
        gqa = q.shape[1] != k.shape[1]
        q, k, v = flex_qkv(q, k, v)
        extra = self.kv_length - k.shape[2]
        if extra:  # bucket padding; its keys are masked out by their document id
            k, v = F.pad(k, (0, 0, 0, extra)), F.pad(v, (0, 0, 0, extra))
        if (
            q.device.type == "cpu"
            and torch.is_grad_enabled()
            and (q.requires_grad or k.requires_grad or v.requires_grad)
        ):
            raise RuntimeError(
                "attention_backend='flex' has no backward on CPU in torch; train on CPU with "
                "attention_backend='sdpa' or 'auto' (flex is for no-grad use here, or a GPU)"
            )
        return _compiled_flex(q.device.type)(q, k, v, block_mask=self.mask, scale=scale, enable_gqa=gqa)
