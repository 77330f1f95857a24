"""The shared VAE module: `LatentCodec` scales exactly as the latent cache does, against diffusers' VAE."""

from __future__ import annotations

import torch

from lmfusion_cli.common.vae import LatentCodec, to_model_space, to_vae_space


def _tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    ).eval()


def test_codec_scales_like_the_cache_convention():
    """encode: (posterior mean - shift) · scale; decode: vae.decode(latents / scale + shift)."""
    vae, scale, shift = _tiny_vae(), 1.3, 0.1
    codec = LatentCodec(vae, scaling_factor=scale, shift_factor=shift)
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        mean = vae.encode(pixels).latent_dist.mean
        torch.testing.assert_close(codec.encode(pixels), (mean - shift) * scale)
        latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(codec.decode(latents), vae.decode(latents / scale + shift).sample)
    assert codec.resolution == 16


def test_scaling_round_trips():
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(to_vae_space(to_model_space(z, 0.33, 0.2), 0.33, 0.2), z)
    torch.testing.assert_close(to_model_space(z, 2.0, 0.5), (z - 0.5) * 2.0)
