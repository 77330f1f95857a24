"""The VAE, for every stage: where the shipped one lives, loading, identity, encoding, and the latent
scaling between the VAE's space and the model's.

A VAE's *identity* is what a latent cache records and what readers compare: the id/path it was loaded
from, a hash of its config, a hash of its weights (two random VAEs with one config differ here),
`scaling_factor`, `shift_factor` (None → 0) and the latent channel count, all read from the VAE, never
assumed. `encode_posterior` returns the *unscaled* posterior mean and std (`latent_dist.mean`, `.std`),
which the latent cache stores.

Scaled latents are what the model reads and writes: `scaled = (z - shift_factor) · scaling_factor`
(diffusers SD3/Flux style; `to_model_space`), so decoding is `vae.decode(scaled / scaling_factor +
shift_factor)` (`to_vae_space`). The latent cache (`data/latents.py`) and `LatentCodec` (sampling:
scaled latents ↔ pixels) both scale through these two functions.

Used by the data stages (encode-latents), sampling, training (validation grid) and packaging; the
model package never loads a VAE (it takes scaled latents)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.hashing import sha256_json


def default_vae_path() -> Path:
    """The tiny VAE shipped in the package (`lmfusion_cli/assets/tiny-vae`, built by `make assets`)."""
    from lmfusion_cli.assets import TINY_VAE

    return TINY_VAE


def resolve_vae(spec: str | None) -> str:
    """`--vae` value → a local folder or hub id; empty means the shipped VAE, which must exist."""
    if spec:
        return spec
    path = default_vae_path()
    if not (path / "config.json").is_file():
        raise UserError(f"The shipped VAE {path} is missing; run `make assets` or pass --vae PATH.")
    return str(path)


def load_vae(spec: str, device: str | torch.device = "cpu"):
    """Load an `AutoencoderKL` from a local folder or hub id, in eval mode, frozen, fp32."""
    from diffusers import AutoencoderKL

    local = Path(spec)
    if local.exists() and not (local / "config.json").is_file():
        raise UserError(
            f"{local} has no config.json, so it is not a diffusers AutoencoderKL folder; "
            f"pass a folder saved with save_pretrained."
        )
    try:
        vae = AutoencoderKL.from_pretrained(spec, torch_dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise UserError(
            f"Cannot load the VAE '{spec}' ({type(e).__name__}); pass a local AutoencoderKL "
            f"folder or a hub id that is in the local cache."
        ) from e
    vae.requires_grad_(False)
    return vae.to(device).eval()


def weights_sha256(module: torch.nn.Module) -> str:
    """SHA-256 over the state dict (names, dtypes, shapes, bytes), independent of the file format."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def vae_identity(spec: str, vae) -> dict[str, Any]:
    """What a latent cache records about its VAE (see the module docstring)."""
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    shift = getattr(vae.config, "shift_factor", None)
    return {
        "id": spec,
        "config_hash": sha256_json(config)[:16],
        "weights_sha256": weights_sha256(vae),
        "scaling_factor": float(vae.config.scaling_factor),
        "shift_factor": float(shift) if shift is not None else 0.0,
        "latent_channels": int(vae.config.latent_channels),
        "downsample_factor": 2 ** (len(vae.config.block_out_channels) - 1),
    }


@torch.no_grad()
def encode_posterior(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """pixels (B, 3, H, W) in [-1, 1] → unscaled posterior (mean, std), each (B, C, H/f, W/f), fp32."""
    dist = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
    return dist.mean.float(), dist.std.float()


def to_model_space(z: torch.Tensor, scaling_factor: float, shift_factor: float) -> torch.Tensor:
    """VAE latents z → the model's (diffusion-space) latents: (z - shift) · scale."""
    return (z - shift_factor) * scaling_factor


def to_vae_space(latents: torch.Tensor, scaling_factor: float, shift_factor: float) -> torch.Tensor:
    """Inverse of `to_model_space`: the model's latents → what `vae.decode` takes."""
    return latents / scaling_factor + shift_factor


@dataclass
class LatentCodec:
    """A loaded VAE with its latent scaling: scaled latents ↔ pixels in [-1, 1] (sampling, captioning).

    Encoding uses the posterior *mean*, so a caption depends on the image only. Finding and checking the
    VAE of a checkpoint is `sampling/loading.py`'s."""

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
        z = to_vae_space(latents.to(self.device, dtype), self.scaling_factor, self.shift_factor)
        return self.vae.decode(z).sample.float()

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [-1, 1] → (B, C, h, w) scaled posterior-mean latents, float32."""
        dtype = next(self.vae.parameters()).dtype
        mean = self.vae.encode(pixels.to(self.device, dtype)).latent_dist.mean
        return to_model_space(mean.float(), self.scaling_factor, self.shift_factor)
