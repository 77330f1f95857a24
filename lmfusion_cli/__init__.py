"""lmfusion: give a pretrained text-only LLM image understanding and generation, the LMFusion way."""

__version__ = "0.1.0"
