"""The VAE as sampling uses it: scaled latents ↔ pixels in [-1, 1].

Scaled latents are what the model reads and writes: `scaled = (z - shift_factor) · scaling_factor`
(the latent cache's convention, diffusers SD3/Flux style), so decoding is `z = scaled / scaling_factor
+ shift_factor` then `vae.decode(z)`. Encoding (for captioning) uses the posterior *mean*, so a caption
depends on the image only. This file does not find the VAE (see `loading.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LatentCodec:
    vae: torch.nn.Module
    """A diffusers `AutoencoderKL` (eval mode)."""
    scaling_factor: float
    """Multiplies (z - shift) to give the model's latents (from the latent cache manifest)."""
    shift_factor: float
    """Subtracted from z before scaling (0 when the VAE has none)."""
    image_size: int | None = None
    """Image side in pixels the latents stand for (latent side × downsampling); None = `sample_size`."""

    @property
    def resolution(self) -> int:
        """Image side in pixels that images are cropped/resized to before encoding."""
        if self.image_size is not None:
            return self.image_size
        size = self.vae.config.sample_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) scaled latents → (B, 3, H, W) float32 images, nominally in [-1, 1]."""
        dtype = next(self.vae.parameters()).dtype
        z = latents.to(self.device, dtype) / self.scaling_factor + self.shift_factor
        return self.vae.decode(z).sample.float()

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [-1, 1] → (B, C, h, w) scaled posterior-mean latents, float32."""
        dtype = next(self.vae.parameters()).dtype
        mean = self.vae.encode(pixels.to(self.device, dtype)).latent_dist.mean
        return (mean.float() - self.shift_factor) * self.scaling_factor
