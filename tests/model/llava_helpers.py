"""Tiny random LLaVA and LLaVA-NeXT VLMs (built from configs; nothing is downloaded) and their inputs.

Text: Llama, hidden 64, 2 layers, 4 heads / 2 KV heads, vocabulary 300 (image token 290 inside it).
Vision: CLIP, hidden 32, 28-pixel images, 14-pixel patches, 2 layers. LLaVA-NeXT AnyRes pinpoints
[[28, 28], [28, 56]]: a wide image gets a base crop plus two tiles, and `image_newline` rows.
"""

from __future__ import annotations

import numpy as np
import torch
import transformers
from PIL import Image

from lmfusion_cli.model import LMFusionModel

VOCAB, IMAGE_TOKEN = 300, 290
PINPOINTS = [[28, 28], [28, 56]]


def _configs():
    text = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    vision = transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=28,
        patch_size=14,
    )
    return text, vision


def tiny_vlm(kind: str = "llava_next", seed: int = 0, image_token: int = IMAGE_TOKEN):
    """A random `LlavaNextForConditionalGeneration` (kind 'llava_next') or `LlavaForConditionalGeneration`."""
    text, vision = _configs()
    torch.manual_seed(seed)
    if kind == "llava_next":
        config = transformers.LlavaNextConfig(
            vision_config=vision,
            text_config=text,
            image_token_id=image_token,
            image_grid_pinpoints=PINPOINTS,
            vision_feature_layer=-2,
        )
        return transformers.LlavaNextForConditionalGeneration(config).eval()
    config = transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=image_token, vision_feature_layer=-2
    )
    return transformers.LlavaForConditionalGeneration(config).eval()


def image_processor(kind: str = "llava_next"):
    """The VLM's own image processor at the tiny vision size (no normalisation surprises: CLIP's)."""
    if kind == "llava_next":
        return transformers.LlavaNextImageProcessor(
            size={"shortest_edge": 28},
            crop_size={"height": 28, "width": 28},
            image_grid_pinpoints=PINPOINTS,
        )
    return transformers.CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})


def random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype("uint8"))


def processed(kind: str, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels (P, C, H, W) with padding tiles dropped, sizes (n, 2)) as `MixedBatch` carries them."""
    from lmfusion_cli.data.llava_inputs import vlm_pixels

    return vlm_pixels(image_processor(kind), images)


def tiny_llava_model(kind: str = "llava_next", seed: int = 0, **options) -> LMFusionModel:
    options = {"latent_size": 8, "unet_channels": (16, 32), **options}
    model = LMFusionModel.from_base(tiny_vlm(kind, seed), **options)
    torch.manual_seed(seed + 1)
    with torch.no_grad():  # copied experts start equal to the text modules; make them differ
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def vlm_processor(kind: str, tokenizer):
    """The VLM's full processor (tokenizer + image processor) at the tiny sizes; `<image>` expands to
    one placeholder per vision row (CLIP's CLS dropped: 'default' strategy, 1 additional token)."""
    cls = transformers.LlavaNextProcessor if kind == "llava_next" else transformers.LlavaProcessor
    return cls(
        image_processor=image_processor(kind),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


def tokenizer_with_image_token(tokenizer):
    """`tokenizer` plus LLaVA's `<image>` special token (the VLM's image token id is then its id)."""
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    return tokenizer


def save_tiny_llava_next(folder, seed: int = 0):
    """A saved tiny LLaVA-NeXT folder (weights, config, tokenizer, image processor, processor) whose
    tokenizer is the embedded tiny LM's plus `<image>`; returns the folder. Loads with
    `AutoModelForImageTextToText` / `AutoProcessor`, as a hub checkpoint would."""
    from transformers import AutoTokenizer

    from lmfusion_cli.assets import TINY_LM

    tokenizer = tokenizer_with_image_token(AutoTokenizer.from_pretrained(TINY_LM))
    text, vision = _configs()
    text.vocab_size, text.bos_token_id, text.eos_token_id, text.pad_token_id = (
        len(tokenizer),
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    config = transformers.LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=PINPOINTS,
        vision_feature_layer=-2,
    )
    torch.manual_seed(seed)
    model = transformers.LlavaNextForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    vlm_processor("llava_next", tokenizer).save_pretrained(folder)
    return folder


def num_vision_tokens(base, pixels: torch.Tensor, size: tuple[int, int]) -> int:
    """Vision rows one image gives (the placeholder positions it needs in a sequence): runs the VLM's
    vision tower once (`llava.vision_features`) on its crops `pixels` (P, C, H, W), original size (H, W)."""
    from lmfusion_cli.model import llava

    return int(llava.vision_features(base, pixels, torch.tensor([size])).shape[0])
