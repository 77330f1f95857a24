"""The LMFusion model: a frozen Llama-layout LM plus image experts (see docs/model.md).

Names are imported on first use (PEP 562), so reading `LMFusionConfig` (the CLI's option parsing)
does not load torch, transformers and diffusers."""

from lmfusion_cli.common.lazy import lazy_attributes

_SOURCES = {
    "KVCache": "cache",
    "LMFusionConfig": "config",
    "Diffusion": "diffusion",
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


__getattr__ = lazy_attributes(__name__, _SOURCES)
__all__ = sorted(_SOURCES)
