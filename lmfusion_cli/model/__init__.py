"""The LMFusion model: a frozen Llama-layout LM plus image experts (see docs/model.md)."""

from lmfusion_cli.model.cache import KVCache
from lmfusion_cli.model.config import LMFusionConfig
from lmfusion_cli.model.diffusion import Diffusion
from lmfusion_cli.model.fusion import FusionOutput, LMFusionModel, SegmentOutput
from lmfusion_cli.model.sequence import (
    IGNORE,
    IMAGE,
    PAD,
    TEXT,
    VISION,
    Example,
    ImagePart,
    MixedBatch,
    TextPart,
    VisionPart,
    build_example,
    caption_to_image,
    collate,
    concat_segments,
    image_segment,
    image_to_caption,
    left_pad,
    pack,
    resolve_boi_eoi,
    text_segment,
)

__all__ = [
    "IGNORE",
    "IMAGE",
    "PAD",
    "TEXT",
    "VISION",
    "Diffusion",
    "Example",
    "FusionOutput",
    "ImagePart",
    "KVCache",
    "LMFusionConfig",
    "LMFusionModel",
    "MixedBatch",
    "SegmentOutput",
    "TextPart",
    "VisionPart",
    "build_example",
    "caption_to_image",
    "collate",
    "concat_segments",
    "image_segment",
    "image_to_caption",
    "left_pad",
    "pack",
    "resolve_boi_eoi",
    "text_segment",
]
