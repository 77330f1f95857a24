"""Latents ↔ image tokens: the patcher on the way in and out of the transformer.

Two patchers, one interface (`encode` → tokens + skips, `decode` → latent-shaped prediction):
- `UNetPatcher` (paper, Transfusion §3): conv-in and diffusers `DownBlock2D`s (one 2× downsample per
  level but the last, so 2**(levels-1) = patch_size) conditioned on the timestep embedding, a linear
  map to the LLM width per grid cell; on the way out the mirror `UpBlock2D`s with the down path's
  skip connections, norm, conv-out.
- `LinearPatcher`: p×p patches through one Linear each way, timestep embedding added to each token.
- `ConvPatcher`: the U-Net's top level without its skip: conv-in and `unet_layers_per_block` residual
  3×3 conv blocks at full latent resolution (width `unet_channels[0]`, timestep-conditioned, *no
  normalisation*), p×p space-to-depth and one Linear to the LLM width; on the way out the mirror
  (Linear, depth-to-space, conv blocks, conv-out). Every path from the noisy latent to the prediction goes
  through the transformer, and no layer sees more than its neighbourhood of x_t, so the prompt cannot be
  bypassed; each output pixel is still drawn from its 3×3 neighbourhood (edges across patch borders).
  With diffusers' GroupNorm ResNet blocks instead, the per-image statistics of x_t carried the global
  colour past the prompt (generated background 0.27–0.30 vs 0.79 without; docs/training.md).

All add a learned (zero-initialised) position embedding per token of the grid, on top of DiT's fixed 2-D
sine-cosine table when `image_position: sincos`. Tokens are ordered row-major over the
(latent_size/p)² grid. Sizes come from `LMFusionConfig` and the LLM's hidden size.
"""

from __future__ import annotations

import math

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps, get_2d_sincos_pos_embed
from diffusers.models.unets.unet_2d_blocks import DownBlock2D, UpBlock2D
from torch import nn

from lmfusion_cli.model.config import LMFusionConfig

Skips = tuple[torch.Tensor, ...]


def _grid_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(n, c, h, w) → (n, h·w, c), row-major."""
    return x.flatten(2).transpose(1, 2)


def _tokens_to_grid(x: torch.Tensor, side: int) -> torch.Tensor:
    """(n, h·w, c) → (n, c, h, w)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)


def _space_to_depth(x: torch.Tensor, p: int) -> torch.Tensor:
    """(n, c, s·p, s·p) → (n, s², c·p·p), tokens row-major, each token's p×p cell channel-major."""
    n, c, H, _ = x.shape
    s = H // p
    return x.reshape(n, c, s, p, s, p).permute(0, 2, 4, 1, 3, 5).reshape(n, s * s, c * p * p)


def _depth_to_space(x: torch.Tensor, p: int, side: int) -> torch.Tensor:
    """Inverse of `_space_to_depth`: (n, s², c·p·p) → (n, c, s·p, s·p)."""
    n, c = x.shape[0], x.shape[-1] // (p * p)
    return x.reshape(n, side, side, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(n, c, side * p, side * p)


def fixed_position_table(side: int, hidden_size: int, kind: str) -> torch.Tensor | None:
    """(side², D) fixed table added under a patcher's learned position table: DiT's 2-D sine-cosine table
    for `image_position: sincos` (half the features the row, half the column, positions 0 … side−1,
    row-major like `_grid_to_tokens`); None for `learned` (nothing to add)."""
    if kind != "sincos":
        return None
    if hidden_size % 4:
        raise ValueError(f"image_position: sincos needs a hidden size divisible by 4; got {hidden_size}")
    return get_2d_sincos_pos_embed(hidden_size, side, base_size=side, output_type="pt").float()


def _add_position(patcher: nn.Module, config: LMFusionConfig, hidden_size: int) -> None:
    """The learned zero-initialised `position` table (saved) and the fixed one beneath it (a
    non-persistent buffer: rebuilt from the config, absent from checkpoints, so both layouts load)."""
    patcher.position = nn.Parameter(torch.zeros(patcher.side * patcher.side, hidden_size))
    fixed = fixed_position_table(patcher.side, hidden_size, config.image_position)
    patcher.register_buffer("fixed_position", fixed, persistent=False)


def _positions(patcher: nn.Module) -> torch.Tensor:
    if patcher.fixed_position is None:
        return patcher.position
    return patcher.position + patcher.fixed_position.to(patcher.position.dtype)


class LinearPatcher(nn.Module):
    def __init__(self, config: LMFusionConfig, hidden_size: int):
        super().__init__()
        C, p = config.latent_channels, config.patch_size
        self.patch_size, self.side = p, config.latent_size // p
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(256, hidden_size)
        self.proj_in = nn.Linear(C * p * p, hidden_size)
        _add_position(self, config, hidden_size)
        self.proj_out = nn.Linear(hidden_size, C * p * p)

    def encode(self, latents: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, Skips]:
        """latents (n, C, H, W), timesteps (n,) → tokens (n, N, D), no skips."""
        patches = _space_to_depth(latents, self.patch_size)  # (n, N, C·p·p)
        temb = self.time_embed(self.time_proj(timesteps).to(latents.dtype))  # (n, D)
        return self.proj_in(patches) + _positions(self) + temb[:, None, :], ()

    def decode(self, tokens: torch.Tensor, timesteps: torch.Tensor, skips: Skips) -> torch.Tensor:
        """tokens (n, N, D) → prediction (n, C, H, W)."""
        return _depth_to_space(self.proj_out(tokens), self.patch_size, self.side)


class ConvBlock(nn.Module):
    """x + conv(silu(conv(silu(x)) + temb)): a ResNet block without normalisation (a norm's per-image
    statistics would hand the transformer-free path a global summary of the noisy latent)."""

    def __init__(self, width: int, temb_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, kernel_size=3, padding=1)
        self.time_proj = nn.Linear(temb_channels, width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(x)) + self.time_proj(nn.functional.silu(temb))[:, :, None, None]
        return x + self.conv2(nn.functional.silu(h))


class ConvPatcher(nn.Module):
    def __init__(self, config: LMFusionConfig, hidden_size: int):
        super().__init__()
        width, blocks = config.unet_channels[0], config.unet_layers_per_block
        self.patch_size, self.side = config.patch_size, config.latent_size // config.patch_size
        self.time_proj = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(width, 4 * width)
        self.time_to_token = nn.Linear(4 * width, hidden_size)
        self.conv_in = nn.Conv2d(config.latent_channels, width, kernel_size=3, padding=1)
        self.blocks_in = nn.ModuleList(ConvBlock(width, 4 * width) for _ in range(blocks))
        self.to_tokens = nn.Linear(width * self.patch_size**2, hidden_size)
        _add_position(self, config, hidden_size)
        self.from_tokens = nn.Linear(hidden_size, width * self.patch_size**2)
        self.blocks_out = nn.ModuleList(ConvBlock(width, 4 * width) for _ in range(blocks))
        self.conv_out = nn.Conv2d(width, config.latent_channels, kernel_size=3, padding=1)

    def _temb(self, timesteps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.time_embed(self.time_proj(timesteps).to(dtype))  # (n, 4·width)

    def encode(self, latents: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, Skips]:
        """latents (n, C, H, W), timesteps (n,) → tokens (n, N, D), no skips."""
        temb = self._temb(timesteps, latents.dtype)
        x = self.conv_in(latents)
        for block in self.blocks_in:
            x = block(x, temb)
        tokens = self.to_tokens(_space_to_depth(x, self.patch_size))
        return tokens + _positions(self) + self.time_to_token(nn.functional.silu(temb))[:, None, :], ()

    def decode(self, tokens: torch.Tensor, timesteps: torch.Tensor, skips: Skips) -> torch.Tensor:
        """tokens (n, N, D) → prediction (n, C, H, W)."""
        temb = self._temb(timesteps, tokens.dtype)
        x = _depth_to_space(self.from_tokens(tokens), self.patch_size, self.side)
        for block in self.blocks_out:
            x = block(x, temb)
        return self.conv_out(x)


class UNetPatcher(nn.Module):
    def __init__(self, config: LMFusionConfig, hidden_size: int):
        super().__init__()
        channels, layers = config.unet_channels, config.unet_layers_per_block
        groups = min(32, math.gcd(*channels))
        temb = 4 * channels[0]
        self.side = config.latent_size // config.patch_size
        resnet = dict(temb_channels=temb, resnet_eps=1e-6, resnet_act_fn="silu", resnet_groups=groups)
        self.time_proj = Timesteps(channels[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(channels[0], temb)
        self.conv_in = nn.Conv2d(config.latent_channels, channels[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList()
        previous = channels[0]
        for level, out in enumerate(channels):
            last = level == len(channels) - 1
            self.down_blocks.append(
                DownBlock2D(
                    in_channels=previous,
                    out_channels=out,
                    num_layers=layers,
                    add_downsample=not last,
                    downsample_padding=1,
                    **resnet,
                )
            )
            previous = out
        self.to_tokens = nn.Linear(channels[-1], hidden_size)
        _add_position(self, config, hidden_size)
        self.from_tokens = nn.Linear(hidden_size, channels[-1])
        # mirror of diffusers UNet2DModel's up path (with the transformer in place of the mid block)
        reversed_channels = list(reversed(channels))
        self.up_blocks = nn.ModuleList()
        out = reversed_channels[0]
        for level in range(len(channels)):
            previous, out = out, reversed_channels[level]
            skip_in = reversed_channels[min(level + 1, len(channels) - 1)]
            self.up_blocks.append(
                UpBlock2D(
                    in_channels=skip_in,
                    prev_output_channel=previous,
                    out_channels=out,
                    num_layers=layers + 1,
                    add_upsample=level < len(channels) - 1,
                    **resnet,
                )
            )
        self.norm_out = nn.GroupNorm(groups, channels[0], eps=1e-6)
        self.conv_out = nn.Conv2d(channels[0], config.latent_channels, kernel_size=3, padding=1)

    def _temb(self, timesteps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.time_embed(self.time_proj(timesteps).to(dtype))  # (n, 4·c0)

    def encode(self, latents: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, Skips]:
        """latents (n, C, H, W), timesteps (n,) → tokens (n, N, D) and the down path's skips."""
        temb = self._temb(timesteps, latents.dtype)
        x = self.conv_in(latents)  # (n, c0, H, W)
        skips: Skips = (x,)
        for block in self.down_blocks:
            x, residuals = block(x, temb)
            skips += residuals
        return self.to_tokens(_grid_to_tokens(x)) + _positions(self), skips  # (n, N, D)

    def decode(self, tokens: torch.Tensor, timesteps: torch.Tensor, skips: Skips) -> torch.Tensor:
        """tokens (n, N, D) + skips from `encode` → prediction (n, C, H, W)."""
        temb = self._temb(timesteps, tokens.dtype)
        x = _tokens_to_grid(self.from_tokens(tokens), self.side)  # (n, c_last, h, w)
        for block in self.up_blocks:
            residuals, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
            x = block(x, residuals, temb)
        return self.conv_out(nn.functional.silu(self.norm_out(x)))


PATCHERS = {"unet": UNetPatcher, "linear": LinearPatcher, "conv": ConvPatcher}


def make_patcher(config: LMFusionConfig, hidden_size: int) -> LinearPatcher | UNetPatcher | ConvPatcher:
    return PATCHERS[config.patcher](config, hidden_size)
