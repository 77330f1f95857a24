"""Understanding inputs of a LLaVA-layout base: the VLM's own image-processor crops and prompt ids.

LLaVAFusion (LMFusion §5) feeds an understanding image through the frozen VLM exactly as LLaVA does,
so its inputs must be the VLM processor's: `pixel_values` (LLaVA-NeXT: a base crop plus AnyRes tiles,
padded to the most tiles of the batch) and `image_sizes`, and the prompt ids with the `<image>`
placeholder expanded to one token per vision row. They are computed *on the fly* from the images
`prepare` already stored, not cached by `encode-latents`: the crops are larger than the images
themselves (LLaVA-NeXT 8B: up to 5 × 3 × 336² floats per image, ~6.8 MB in fp32 vs a ~50 KB JPEG),
their count depends on each image's aspect ratio, and the processor is cheap next to the vision tower
that runs on them anyway. With the default generation-only mix they are not needed for training at
all: only captioning and understanding examples use them.

This file owns turning PIL images (and a prompt) into `MixedBatch` pieces; the model side (the vision
tower, placing its rows) is `model/llava.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from lmfusion_cli.model.sequence import IGNORE, TEXT, VISION, MixedBatch


def vlm_pixels(image_processor, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
    """The processor's crops of `images`, padding tiles dropped: (pixels (P, C, H, W), sizes (n, 2)).

    LLaVA-NeXT's processor pads every image to the batch's most tiles (a 5-D tensor); the VLM itself
    keeps only the first `image_size_to_num_patches` of each, which is what is kept here, so images
    can be concatenated across examples and batches.
    """
    out = image_processor(images=list(images), return_tensors="pt")
    pixels = out["pixel_values"]
    sizes = out.get("image_sizes")
    if sizes is None:  # LLaVA-1.5: one square crop per image
        sizes = torch.tensor([[img.height, img.width] for img in images], dtype=torch.long)
    sizes = torch.as_tensor(sizes, dtype=torch.long)
    if pixels.dim() == 5:
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        tile = image_processor.crop_size["height"]
        counts = [
            image_size_to_num_patches(
                image_size=size.tolist(), grid_pinpoints=image_processor.image_grid_pinpoints, patch_size=tile
            )
            for size in sizes
        ]
        pixels = torch.cat([p[:n] for p, n in zip(pixels, counts)])
    return pixels, sizes


def vlm_prompt(processor, image: Image.Image, text: str) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """The VLM processor's ids of `text` (holding one `<image>`), the image expanded: (ids, pixels, sizes).

    The ids are exactly what the VLM's own `generate` receives for the same image and prompt.
    """
    out = processor(images=[image], text=[text], return_tensors="pt")
    pixels, sizes = vlm_pixels(processor.image_processor, [image])
    return out["input_ids"][0].tolist(), pixels, sizes


def vision_prompt_segment(
    prompts: Sequence[Sequence[int]], image_token_id: int, pixels: torch.Tensor, sizes: torch.Tensor, pad_id: int = 0
) -> MixedBatch:
    """Left-padded prompts whose `image_token_id` positions are vision rows (like `sequence.left_pad`).

    pixels/sizes: every prompt's understanding images, in row order (see `vlm_pixels`).
    """
    B, T = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    valid = torch.zeros((B, T), dtype=torch.bool)
    for b, prompt in enumerate(prompts):
        ids[b, T - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        valid[b, T - len(prompt) :] = True
    modality = torch.where(valid, torch.where(ids == image_token_id, VISION, TEXT), -1)
    minus_one = torch.full_like(ids, -1)
    return MixedBatch(
        input_ids=ids,
        modality=modality,
        image_index=minus_one,
        patch_index=minus_one.clone(),
        document_ids=torch.where(valid, 0, -1),
        position_ids=(valid.long().cumsum(dim=1) - 1).clamp(min=0),
        labels=torch.full_like(ids, IGNORE),
        image_generate=torch.zeros(0, dtype=torch.bool),
        vision_pixels=pixels,
        vision_sizes=sizes,
    )
