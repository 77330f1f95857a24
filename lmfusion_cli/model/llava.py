"""LLaVAFusion (LMFusion §5): an existing LLaVA-layout VLM as the base, understanding kept exactly.

A LLaVA / LLaVA-NeXT checkpoint (`LlavaForConditionalGeneration`, `LlavaNextForConditionalGeneration`)
is a vision tower + projector feeding a Llama-layout language model. In LLaVAFusion the language
model is the text expert (image experts are copied from its layers, as for a text-only base) and the
whole VLM stays frozen. An *understanding* image takes LLaVA's own path: the VLM's
`get_image_features` (AnyRes tiles and `image_newline` packing for LLaVA-NeXT) gives one row per
vision token; those rows replace the embeddings at the `VISION` positions of a sequence (whose token
id is the VLM's image token, as LLaVA's processor lays them out), go through the *text* expert and
are causal, exactly as in LLaVA. Generation images keep the VAE-latent / patcher / image-expert path.

This file owns: recognising and loading a LLaVA-layout base, its text decoder, the vision-feature
path and how its rows enter the embedded sequence. It does no file I/O besides `from_pretrained`.
"""

from __future__ import annotations

import torch
from torch import nn

LLAVA_MODEL_TYPES = ("llava", "llava_next")
"""`config.model_type` of the VLM layouts LLaVAFusion accepts."""


def is_llava(base: nn.Module) -> bool:
    """True for a loaded LLaVA-layout VLM (vision tower + projector + language model)."""
    inner = getattr(base, "model", None)
    return all(hasattr(inner, part) for part in ("vision_tower", "multi_modal_projector", "language_model"))


def text_decoder(base: nn.Module) -> nn.Module:
    """The Llama-layout decoder (embed_tokens, layers, norm, rotary_emb) of a causal LM or a VLM."""
    return base.model.language_model if is_llava(base) else base.model


def is_llava_checkpoint(base_id: str) -> bool:
    """Whether a local folder or hub id holds a LLaVA-layout config (reads config.json only)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(base_id).model_type in LLAVA_MODEL_TYPES


def load_vlm(base_id: str, dtype: torch.dtype) -> nn.Module:
    """Load a LLaVA / LLaVA-NeXT checkpoint with transformers' own class for it."""
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(base_id, dtype=dtype)


def load_base(base_id: str, dtype: torch.dtype) -> nn.Module:
    """A base by folder or hub id: a LLaVA-layout VLM with its own class, else a causal LM."""
    if is_llava_checkpoint(base_id):
        return load_vlm(base_id, dtype)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base_id, dtype=dtype)


def image_token_id(base: nn.Module) -> int:
    """The VLM's placeholder token of one vision-feature row (inside its vocabulary)."""
    token = getattr(base.config, "image_token_id", None)
    return int(token if token is not None else base.config.image_token_index)  # older configs: image_token_index


def uses_image_sizes(base: nn.Module) -> bool:
    """LLaVA-NeXT's AnyRes needs each image's (H, W); LLaVA-1.5's fixed square crop does not."""
    return getattr(base.config, "image_grid_pinpoints", None) is not None


def vision_features(base: nn.Module, pixels: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """The VLM's own vision rows of a batch's understanding images, in order: (N_vision, D).

    pixels: (P, C, H, W) the image processor's crops of every image concatenated (LLaVA-NeXT: each
    image's base crop + AnyRes tiles, padding tiles dropped; LLaVA: one crop per image);
    sizes: (num_images, 2) long, each image's original (H, W).
    Computed without gradient: the vision tower and projector are frozen (LLaVAFusion keeps them).
    """
    if not is_llava(base):
        raise ValueError("the batch has vision positions but the base is not a LLaVA-layout VLM")
    inner = base.model
    pixels = pixels.to(dtype=next(inner.vision_tower.parameters()).dtype)
    with torch.no_grad():
        if uses_image_sizes(base):
            out = inner.get_image_features(pixel_values=pixels, image_sizes=sizes, return_dict=True)
        else:
            out = inner.get_image_features(pixel_values=pixels, return_dict=True)
    return torch.cat(list(out.pooler_output), dim=0)  # (N_vision, D)


def place_vision_rows(text_rows: torch.Tensor, is_vision: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """Put vision rows at the vision positions of the text expert's embedded rows, in order.

    text_rows: (N_text, D) embeddings of every position routed to the text expert; is_vision:
    (N_text,) bool; rows: (N_vision, D). LLaVA's own `masked_scatter`, so the values are its.
    """
    count = int(is_vision.sum())
    if count == 0:
        return text_rows
    if rows is None or rows.shape[0] != count:
        got = 0 if rows is None else rows.shape[0]
        raise ValueError(f"the batch has {count} vision positions but its understanding images gave {got} rows")
    return text_rows.masked_scatter(is_vision[:, None], rows.to(text_rows.dtype))


def check_llava_options(from_scratch: bool, freeze_text: bool, name: str) -> None:
    """LLaVAFusion keeps the VLM frozen (paper §5); a re-initialised or trainable VLM is refused."""
    from lmfusion_cli.common.errors import UserError

    if from_scratch or not freeze_text:
        raise UserError(
            f"Base model {name} is a LLaVA-layout VLM, which LLaVAFusion keeps frozen; "
            "drop from_scratch / freeze_text=false (or pass a text-only base for those ablations)."
        )
