"""Diffusion math for image latents: the training schedule, timesteps, noising and training targets.

Two objectives, both backed by diffusers schedulers so the schedule is the field's, not ours:
- `ddpm-eps` (paper): `DDPMScheduler(clip_sample=False, prediction_type="epsilon")`, cosine schedule
  (`squaredcos_cap_v2`); x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε, the model predicts ε. Timesteps are integers.
- `flow` (rectified flow): `FlowMatchEulerDiscreteScheduler` math; σ = t / T,
  x_t = (1-σ) x0 + σ ε, the model predicts the velocity v = ε - x0. Timesteps are real numbers.

This file owns the β schedules (`BETA_SCHEDULES`, `ddpm_schedule`): the sampling schedulers
(`sampling/schedulers.py`) take the training schedule from here. It owns no parameters and no
sampling loop; which image gets which noise level is `noising.py`'s.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from lmfusion_cli.model.config import LMFusionConfig

BETA_SCHEDULES = {"cosine": "squaredcos_cap_v2", "linear": "linear"}
"""`noise_schedule` → diffusers' `beta_schedule` name."""


def ddpm_schedule(config: Any) -> dict[str, Any]:
    """The ddpm-eps training schedule as diffusers scheduler arguments (`num_train_timesteps`,
    `beta_schedule`, `prediction_type`), for the training scheduler and every sampler alike."""
    return dict(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=BETA_SCHEDULES[config.noise_schedule],
        prediction_type="epsilon",
    )


def shift_noise_level(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """σ ∈ [0, 1] ↦ s·σ / (1 + (s−1)·σ): the time shift of diffusers' `FlowMatchEulerDiscreteScheduler`
    (SD3). Monotone, fixes 0 and 1; s > 1 moves mass toward high noise."""
    if shift == 1.0:
        return sigma
    return shift * sigma / (1 + (shift - 1) * sigma)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) → (N, 1, 1, ...) broadcastable against `like` (N, ...)."""
    return values.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class Diffusion:
    """Schedule math for one objective. All tensors are (N, C, H, W) latents, `t` is (N,) timesteps."""

    def __init__(self, config: LMFusionConfig):
        self.objective = config.objective
        self.num_train_timesteps = config.num_train_timesteps
        self.timestep_shift = config.timestep_shift
        self.scheduler = make_training_scheduler(config)
        if self.objective == "ddpm-eps":
            self.alphas_cumprod = self.scheduler.alphas_cumprod.to(torch.float32)  # (T,)

    # ---- timesteps -------------------------------------------------------------------------------
    def sample_timesteps(self, max_fraction: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One timestep per image: u uniform in [0, 1), shifted (`shift_noise_level`) when max_fraction is 1
        (generation images), times max_fraction · T.

        max_fraction: (N,) float in (0, 1]; 1 = whole schedule. (Clean images, fraction 0, are
        not noised at all: the model skips `add_noise` for them and passes t = 0.)
        Returns (N,) float32: integer-valued for ddpm-eps, continuous for flow.
        """
        u = torch.rand(max_fraction.shape, generator=generator, device=max_fraction.device)
        # the shift is for generation images (whole schedule); capped understanding images stay uniform
        u = torch.where(max_fraction >= 1, shift_noise_level(u, self.timestep_shift), u)
        t = u * max_fraction.float() * self.num_train_timesteps  # (N,)
        if self.objective == "ddpm-eps":
            t = t.floor().clamp(max=self.num_train_timesteps - 1)
        return t

    def fixed_timesteps(self, fraction: torch.Tensor) -> torch.Tensor:
        """(N,) float32 timesteps at a fixed noise level: ⌊fraction · T⌋ (validation at chosen levels)."""
        t = (fraction.float() * self.num_train_timesteps).floor()
        return t.clamp(max=self.num_train_timesteps - 1) if self.objective == "ddpm-eps" else t

    # ---- forward process ---------------------------------------------------------------------------
    def _ddpm_coefficients(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(√ᾱ_t, √(1-ᾱ_t)), each (N, 1, 1, 1)."""
        alpha_bar = self.alphas_cumprod.to(x.device)[t.long()]  # (N,)
        return _per_sample(alpha_bar.sqrt(), x), _per_sample((1 - alpha_bar).sqrt(), x)

    def sigma(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Flow σ = t / T, (N, 1, 1, 1)."""
        return _per_sample(t.float() / self.num_train_timesteps, like)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t from clean latents x0 and noise ε (both (N, C, H, W)) at timesteps t (N,)."""
        if self.objective == "ddpm-eps":
            a, s = self._ddpm_coefficients(x0, t)
            return a * x0 + s * noise
        sigma = self.sigma(t, x0)
        return (1 - sigma) * x0 + sigma * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the model is trained to predict: ε (ddpm-eps) or v = ε - x0 (flow)."""
        return noise if self.objective == "ddpm-eps" else noise - x0

    def loss_per_image(self, prediction: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """MSE between prediction and target, averaged over C, H, W: (N,) float32."""
        error = (prediction.float() - self.target(x0, noise).float()) ** 2
        return error.flatten(1).mean(dim=1)


def make_training_scheduler(config: LMFusionConfig) -> DDPMScheduler | FlowMatchEulerDiscreteScheduler:
    """The diffusers scheduler whose schedule defines training (clip_sample=False: latents are unbounded)."""
    if config.objective == "ddpm-eps":
        return DDPMScheduler(**ddpm_schedule(config), clip_sample=False)
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=config.num_train_timesteps, shift=config.timestep_shift)
