"""The embedded default assets: a tiny pretrained Llama-layout LM + tokenizer and a tiny VAE (issue 4).

The folders next to this file are built by `scripts/build_assets.py` (`make assets`) and load with plain
`transformers` / `diffusers` calls like any checkpoint; `TINY_LM` and `TINY_VAE` are the default values of
the model and VAE options. See `README.md` here for sizes, settings and measured quality. This module
only names the paths; it loads nothing."""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent


def asset_path(name: str) -> Path:
    """Path of the embedded asset folder `name` (e.g. "tiny-lm"); it may be absent before `make assets`."""
    return ASSETS_DIR / name


TINY_LM = asset_path("tiny-lm")
TINY_VAE = asset_path("tiny-vae")
