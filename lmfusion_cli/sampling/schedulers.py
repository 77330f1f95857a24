"""Samplers: diffusers schedulers configured from the model's objective and training noise schedule.

`make_sampler(model_config, name, steps)` returns a `Sampler` that drives one of four diffusers
schedulers the way diffusers' own pipelines do (`x = noise · init_noise_sigma`; per step
`scale_model_input` → model → `step`), with the settings that fit our training:

| name         | ddpm-eps objective (ε-prediction)          | flow objective (velocity)                  |
|--------------|--------------------------------------------|--------------------------------------------|
| `ddpm`       | `DDPMScheduler` (ancestral, stochastic)    | refused (no flow form in diffusers)        |
| `ddim`       | `DDIMScheduler` (η = 0, deterministic)     | refused                                    |
| `dpm-solver` | `DPMSolverMultistepScheduler` (2M, ++)     | the same, `use_flow_sigmas`                |
| `euler`      | `EulerDiscreteScheduler`                   | `FlowMatchEulerDiscreteScheduler`          |

Every scheduler gets the training schedule (`num_train_timesteps`, β schedule of `noise_schedule`),
`clip_sample=False` / no thresholding (latents are unbounded: DESIGN §9) and `trailing` timestep
spacing, so the first step starts at the most noisy training timestep (Lin et al. 2023, Table 2).

`Sampler.model_timestep(i)` is the timestep the *model* is conditioned on at step i. It differs from
the scheduler's own `timesteps[i]` only for flow DPM-Solver, whose timesteps diffusers rounds to
integers while its σ stay exact; we give the model σ·T so its conditioning matches the latent's noise.

This file owns the scheduler choice and configuration; the denoising loop is `t2i.py`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
)

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.model.diffusion import ddpm_schedule
from lmfusion_cli.sampling.config import SAMPLERS

_FLOW_SAMPLERS = ("dpm-solver", "euler")
_COSINE_LAMBDA_MIN = -5.1
"""DPM-Solver's clip of log-SNR λ(t) for the cosine schedule, where λ → -∞ at t = T (diffusers docs:
"critical for squaredcos_cap_v2"; value from the DPM-Solver authors' guided-diffusion setting)."""


def _ddpm_schedule(model_config: Any) -> dict[str, Any]:
    """The training schedule (`model/diffusion.py` owns it) with trailing timestep spacing."""
    return dict(ddpm_schedule(model_config), timestep_spacing="trailing")


def build_noise_scheduler(model_config: Any, name: str):
    """The configured diffusers scheduler for `name` (before `set_timesteps`)."""
    if name not in SAMPLERS:
        raise UserError(f"Unknown sampler '{name}'; use one of {', '.join(SAMPLERS)}.")
    objective = model_config.objective
    if objective == "flow":
        if name not in _FLOW_SAMPLERS:
            raise UserError(
                f"Sampler '{name}' cannot sample a flow-objective checkpoint; use sampler euler or dpm-solver."
            )
        T = model_config.num_train_timesteps
        shift = model_config.timestep_shift
        if name == "euler":
            return FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=shift)
        return DPMSolverMultistepScheduler(
            num_train_timesteps=T,
            use_flow_sigmas=True,
            flow_shift=shift,
            prediction_type="flow_prediction",
            algorithm_type="dpmsolver++",
            solver_order=2,
            thresholding=False,
        )
    schedule = _ddpm_schedule(model_config)
    if name == "ddpm":
        return DDPMScheduler(**schedule, clip_sample=False, thresholding=False, variance_type="fixed_small")
    if name == "ddim":
        return DDIMScheduler(**schedule, clip_sample=False, thresholding=False, set_alpha_to_one=True)
    if name == "euler":
        return EulerDiscreteScheduler(**schedule)
    lambda_min = _COSINE_LAMBDA_MIN if model_config.noise_schedule == "cosine" else -float("inf")
    return DPMSolverMultistepScheduler(
        **schedule,
        algorithm_type="dpmsolver++",
        solver_order=2,
        thresholding=False,
        lambda_min_clipped=lambda_min,
    )


@dataclass
class Sampler:
    """One denoising run's scheduler state: build a fresh one per batch (multistep solvers keep history)."""

    name: str
    scheduler: Any
    objective: str
    num_train_timesteps: int

    @property
    def timesteps(self) -> torch.Tensor:
        """(steps,) the scheduler's timesteps, most noisy first."""
        return self.scheduler.timesteps

    @property
    def num_steps(self) -> int:
        return int(self.scheduler.timesteps.shape[0])

    def initial_latents(self, shape: tuple[int, ...], generators: list[torch.Generator]) -> torch.Tensor:
        """x_T: standard normal noise, one generator per sample (row), scaled by `init_noise_sigma`.

        Drawing each row from its own generator makes a sample independent of its batch neighbours.
        """
        noise = torch.stack([torch.randn(shape[1:], generator=g, dtype=torch.float32) for g in generators])
        return noise * getattr(self.scheduler, "init_noise_sigma", 1.0)  # (B, C, H, W); flow: σ_max = 1

    def model_timestep(self, i: int) -> float:
        """The training-scale timestep the model is conditioned on at step i."""
        if self.objective == "flow" and isinstance(self.scheduler, DPMSolverMultistepScheduler):
            return float(self.scheduler.sigmas[i]) * self.num_train_timesteps
        return float(self.scheduler.timesteps[i])

    def model_input(self, latents: torch.Tensor, i: int) -> torch.Tensor:
        """x_t as the model saw it in training (Euler keeps an unscaled x; `scale_model_input` undoes it).

        Flow-match Euler works in the model's own space and has no `scale_model_input`."""
        scale = getattr(self.scheduler, "scale_model_input", None)
        return latents if scale is None else scale(latents, self.scheduler.timesteps[i])

    def step(
        self, prediction: torch.Tensor, i: int, latents: torch.Tensor, generators: list[torch.Generator]
    ) -> torch.Tensor:
        """x_{t_i} → x_{t_{i+1}} from the model's prediction (ε or velocity) at step i."""
        out = self.scheduler.step(prediction, self.scheduler.timesteps[i], latents, generator=generators)
        return out.prev_sample


def make_sampler(model_config: Any, name: str, steps: int) -> Sampler:
    """A `Sampler` for `model_config` (an `LMFusionConfig`: objective, noise_schedule,
    num_train_timesteps) with `steps` denoising steps."""
    if steps < 1:
        raise UserError(f"steps must be >= 1, got {steps}.")
    scheduler = build_noise_scheduler(model_config, name)
    scheduler.set_timesteps(steps)
    return Sampler(
        name=name,
        scheduler=scheduler,
        objective=model_config.objective,
        num_train_timesteps=model_config.num_train_timesteps,
    )
