"""Tiny VAEs and prepared data for the encode-latents tests."""

from __future__ import annotations

from pathlib import Path

import torch


def make_vae(folder: Path, seed: int = 0, scaling_factor: float = 0.5, shift_factor: float | None = 0.1) -> Path:
    """A tiny random AutoencoderKL (64×64 → 4×16×16), saved with save_pretrained."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
    )
    vae.save_pretrained(folder)
    return folder
