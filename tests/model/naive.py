"""A test-only naive reference: both experts run on *every* token, the output is picked by modality.

It shares weights with the model under test but none of its routing or mask code: the mask is
written out position by position, attention is plain softmax(QKᵀ)V. Twice the FLOPs, on purpose.
"""

from __future__ import annotations

import torch

from lmfusion_cli.model import IMAGE, TEXT, VISION, LMFusionModel, MixedBatch
from lmfusion_cli.model.layers import rope_function


def reference_mask(batch: MixedBatch) -> torch.Tensor:
    """(B, 1, T, T) bool from the definition, one pair at a time."""
    B, T = batch.input_ids.shape
    doc, img = batch.document_ids.tolist(), batch.image_index.tolist()
    rows = [
        [
            [doc[b][q] == doc[b][k] and (k <= q or (img[b][q] >= 0 and img[b][q] == img[b][k])) for k in range(T)]
            for q in range(T)
        ]
        for b in range(B)
    ]
    return torch.tensor(rows, dtype=torch.bool).unsqueeze(1)


def _both(text_fn, image_fn, x, is_image):
    """Run both experts on all of x and keep each position's own modality's result."""
    return torch.where(is_image[:, :, None], image_fn(x), text_fn(x))


def _proj(attn, name, x):
    out = getattr(attn, f"{name}_proj")(x)
    norm = getattr(attn, f"{name}_norm", None)
    if norm is not None:
        out = norm(out.view(*x.shape[:2], -1, attn.head_dim)).flatten(2)
    return out


def naive_hidden(
    model: LMFusionModel,
    batch: MixedBatch,
    image_tokens: torch.Tensor | None,
    mask: torch.Tensor | None = None,
    sdpa: bool = False,
) -> torch.Tensor:
    """Final hidden states (B, T, D) before the output norms; padding positions are zeroed.

    mask: (B, 1, T, T) bool, default `reference_mask(batch)` (pass it in to time the layers alone).
    sdpa: use torch's fused attention instead of the written-out softmax (for the benchmark).
    """
    B, T = batch.input_ids.shape
    is_image = batch.modality == IMAGE
    is_vision = batch.modality == VISION  # a LLaVA base's vision rows: text modules, causal
    is_real = (batch.modality == TEXT) | is_image | is_vision
    emb = model._embed_text(batch.input_ids.reshape(-1)).view(B, T, -1)
    if is_vision.any():  # the VLM's own vision path, rows filled in (row, position) order
        kw = {"image_sizes": batch.vision_sizes} if model.base.config.model_type == "llava_next" else {}
        with torch.no_grad():
            feats = model.base.model.get_image_features(pixel_values=batch.vision_pixels, **kw).pooler_output
        emb = emb.clone()
        emb[is_vision] = torch.cat(list(feats))
    if image_tokens is not None:
        picked = image_tokens[batch.image_index.clamp(min=0), batch.patch_index.clamp(min=0)]
        emb = torch.where(is_image[:, :, None], picked, emb)
    h = emb * is_real[:, :, None]
    cos, sin = model.decoder.rotary_emb(h, batch.position_ids)
    mask = reference_mask(batch) if mask is None else mask
    for i, text in enumerate(model.decoder.layers):
        image = model.image_experts[i] if model.image_experts is not None else text
        t_attn, i_attn = text.self_attn, getattr(image, "self_attn", text.self_attn)
        x_t, x_i = text.input_layernorm(h), image.input_layernorm(h)
        qkv = [
            torch.where(is_image[:, :, None], _proj(i_attn, n, x_i), _proj(t_attn, n, x_t))
            .view(B, T, -1, t_attn.head_dim)
            .transpose(1, 2)
            for n in ("q", "k", "v")
        ]
        q, k = rope_function(text)(qkv[0], qkv[1], cos, sin)
        v = qkv[2]
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if sdpa:
            att = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=t_attn.scaling)
        else:
            scores = (q @ k.transpose(-1, -2)) * t_attn.scaling
            att = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v  # (B, H, T, hd)
        att = att.transpose(1, 2).reshape(B, T, -1)
        h = h + _both(t_attn.o_proj, i_attn.o_proj, att, is_image) * is_real[:, :, None]
        mlp = _both(
            lambda x, text=text: text.mlp(text.post_attention_layernorm(x)),
            lambda x, image=image: image.mlp(image.post_attention_layernorm(x)),
            h,
            is_image,
        )
        h = h + mlp * is_real[:, :, None]
    return h


def naive_outputs(model, batch, latents, timesteps):
    """(text logits at every position (B, T, V), image predictions (num_images, C, H, W))."""
    tokens, skips = model.patcher.encode(latents, timesteps)
    h = naive_hidden(model, batch, tokens)
    logits = model._text_head(h)
    N = model.num_image_tokens
    is_image = batch.modality == IMAGE
    grid = torch.zeros(batch.num_images, N, h.shape[-1])
    grid = grid.index_put((batch.image_index[is_image], batch.patch_index[is_image]), model.image_norm(h[is_image]))
    return logits, model.patcher.decode(grid, timesteps, skips)
