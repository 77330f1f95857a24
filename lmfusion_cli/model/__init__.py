"""The LMFusion model: a frozen Llama-layout LM plus image experts (see docs/model.md).

Names are imported on first use (PEP 562), so reading `LMFusionConfig` (the CLI's option parsing)
does not load torch, transformers and diffusers."""

import importlib

_SOURCES = {
    "KVCache": "cache",
    "LMFusionConfig": "config",
    "Diffusion": "diffusion",
    "make_inference_scheduler": "diffusion",
    "FusionOutput": "fusion",
    "LMFusionModel": "fusion",
    "SegmentOutput": "fusion",
    **{
        name: "sequence"
        for name in (
            "IGNORE",
            "IMAGE",
            "PAD",
            "TEXT",
            "VISION",
            "Example",
            "ImagePart",
            "MixedBatch",
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
        )
    },
}


def __getattr__(name: str):
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_SOURCES[name]}"), name)
    globals()[name] = value
    return value


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
    "make_inference_scheduler",
    "pack",
    "resolve_boi_eoi",
    "text_segment",
]
