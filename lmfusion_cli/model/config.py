"""`LMFusionConfig`: every option of the LMFusion model, as one frozen dataclass.

Sizes of the text model (hidden, heads, layers, vocabulary) are never here: they come from the loaded
base checkpoint. Latent sizes come from the VAE / latent manifest and are filled in by the stage
(`dataclasses.replace`); the training config's `model` section is this class with `latent_size` unset.
Choices are `Literal` types, checked by `common.configs.check_choices`; to and from plain data with
`common.configs.config_to_dict` / `build_config` (checkpoints store it that way).
This file owns validation of the options; it does not build anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from lmfusion_cli.common.configs import check_choices


@dataclass(frozen=True)
class LMFusionConfig:
    image_init: Literal["copy", "random"] = "copy"
    """How image experts start: `copy` of the text modules (paper) or `random` (ablation)."""
    patcher: Literal["unet", "linear", "conv"] = "unet"
    """Latents ↔ tokens: `unet` (U-Net down/up path with skips, paper), `linear` patches, or `conv` (the
    U-Net's top level without its skip: `unet_layers_per_block` residual conv blocks of width
    `unet_channels[0]`, without normalisation, at full latent resolution each way; nothing around the
    transformer)."""
    patch_size: int = 2
    """Side of one image token in latent pixels (latent cells per token edge)."""
    image_position: Literal["learned", "sincos"] = "learned"
    """Position of each image token on the grid: `learned` (a zero-initialised table, trained) or `sincos`
    (DiT's fixed 2-D sine-cosine table, diffusers `get_2d_sincos_pos_embed`, under the same learned
    table). Recomputed from the config, never saved."""
    latent_channels: int = 4
    """Channels of the VAE latent (from the VAE config / latent manifest)."""
    latent_size: int | None = None
    """Latent height = width in latent pixels (from the latent manifest); None until the stage fills it in
    (a model needs it)."""
    unet_channels: tuple[int, ...] = (64, 128)
    """Channels per U-Net level (count); 2**(levels-1) must equal `patch_size`."""
    unet_layers_per_block: int = 1
    """ResNet blocks per U-Net level (count)."""
    objective: Literal["ddpm-eps", "flow"] = "ddpm-eps"
    """Diffusion objective: `ddpm-eps` (ε-prediction, paper) or `flow` (rectified flow, velocity)."""
    noise_schedule: Literal["cosine", "linear"] = "cosine"
    """DDPM β schedule: `cosine` (diffusers `squaredcos_cap_v2`, paper) or `linear`; unused by flow."""
    num_train_timesteps: int = 1000
    """Length of the training noise schedule (timesteps)."""
    timestep_shift: float = 1.0
    """Shift of the noise levels toward high noise, σ ↦ s·σ / (1 + (s−1)·σ) (SD3's `shift`): the training
    timesteps of generation images are drawn uniformly and then shifted (understanding images keep
    uniform noise below their cap), and flow samplers use the same shift. 1 = none. Use
    s > 1 for small or redundant images (a uniform background stays visible under heavy noise, so the
    caption matters only at the noisiest steps); for `ddpm-eps` it changes only the training density."""
    lambda_image: float = 5.0
    """λ weighting the latent loss against the LM loss (dimensionless; 5 in Transfusion/LMFusion)."""
    understanding_max_timestep_fraction: float = 0.5
    """Cap on the noise of images that condition a caption, as a fraction of the schedule (0 = clean)."""
    understanding_image_loss: Literal["diffusion", "none"] = "diffusion"
    """Loss on the image of an image→caption example: `diffusion` (Transfusion §4.3: an unconditional
    diffusion target, t drawn up to `understanding_max_timestep_fraction`; none when that is 0) or `none`
    (the image only conditions the caption)."""
    attention_backend: Literal["auto", "sdpa", "flex"] = "auto"
    """Attention kernel: `auto` (flex on CUDA, sdpa elsewhere), `sdpa` with a dense bool mask (reference,
    trains on CPU; on CUDA masked GQA expands K/V instead of reaching the math kernel) or `flex`
    (compiled FlexAttention; no backward on CPU)."""
    experts: Literal["deep", "ffn-only", "none"] = "deep"
    """Image experts: `deep` (own attention, norms, FFN), `ffn-only` (shared attention), `none` (dense)."""
    freeze_text: bool = True
    """Freeze all text modules (paper); False makes them trainable (ablation)."""
    from_scratch: bool = False
    """Re-initialise every base weight randomly and train everything (Transfusion baseline)."""
    boi_id: int | None = None
    """Token id of begin-of-image: None (default) = a new trainable row after the vocabulary (id V); an id
    inside the vocabulary is the legacy layout of checkpoints made before issue 18 (a reserved token
    whose logit row is the frozen base row: such a model cannot learn to open an image)."""
    eoi_id: int | None = None
    """Token id of end-of-image: None (default) = a new row after the vocabulary (id V+1); see boi_id."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Parameter dtype used when the base is loaded from a path or hub id."""

    def __post_init__(self) -> None:
        check_choices(self)
        if not isinstance(self.unet_channels, tuple):
            object.__setattr__(self, "unet_channels", tuple(self.unet_channels))
        if self.patch_size < 1 or self.patch_size & (self.patch_size - 1):
            raise ValueError(f"patch_size must be a power of two >= 1; got {self.patch_size}")
        if self.latent_channels < 1:
            raise ValueError(f"latent_channels must be >= 1; got {self.latent_channels}")
        if self.latent_size is not None and (self.latent_size < 1 or self.latent_size % self.patch_size):
            raise ValueError(
                f"latent_size must be a positive multiple of patch_size={self.patch_size}; got {self.latent_size}"
            )
        if self.patcher == "unet":
            levels = int(math.log2(self.patch_size)) + 1
            if len(self.unet_channels) != levels:
                raise ValueError(
                    f"unet_channels needs {levels} levels for patch_size={self.patch_size} "
                    f"(one downsample per level but the last); got {self.unet_channels}"
                )
        if self.patcher != "linear" and (any(c < 1 for c in self.unet_channels) or self.unet_layers_per_block < 1):
            raise ValueError("unet_channels and unet_layers_per_block must be positive")
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2; got {self.num_train_timesteps}")
        if not self.timestep_shift > 0:
            raise ValueError(f"timestep_shift must be > 0; got {self.timestep_shift}")
        if self.lambda_image < 0:
            raise ValueError(f"lambda_image must be >= 0; got {self.lambda_image}")
        if not 0.0 <= self.understanding_max_timestep_fraction <= 1.0:
            raise ValueError(
                f"understanding_max_timestep_fraction must be in [0, 1]; got {self.understanding_max_timestep_fraction}"
            )
        if (self.boi_id is None) != (self.eoi_id is None):
            raise ValueError("boi_id and eoi_id must be given together (see sequence.resolve_boi_eoi)")
        if self.boi_id is not None and (self.boi_id == self.eoi_id or min(self.boi_id, self.eoi_id) < 0):
            raise ValueError(f"boi_id and eoi_id must be distinct ids >= 0; got {self.boi_id}, {self.eoi_id}")

    @property
    def num_image_tokens(self) -> int:
        """Tokens per image: (latent_size / patch_size)²."""
        if self.latent_size is None:
            raise ValueError("latent_size must be given (latent height = width, from the latent manifest)")
        return (self.latent_size // self.patch_size) ** 2
