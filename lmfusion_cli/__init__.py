"""lmfusion: give a pretrained text-only LLM image understanding and generation, the LMFusion way."""

__version__ = "0.1.0"

__all__ = ["LMFusionPipeline", "__version__"]


def __getattr__(name: str):
    """`from lmfusion_cli import LMFusionPipeline` without importing torch for `lmfusion --version`."""
    if name == "LMFusionPipeline":
        from lmfusion_cli.packaging.pipeline import LMFusionPipeline

        return LMFusionPipeline
    raise AttributeError(f"module 'lmfusion_cli' has no attribute {name!r}")
