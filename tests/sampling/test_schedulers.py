"""Samplers vs the training schedule: an exact denoiser must lead every sampler back to the data.

With a one-point data distribution x0*, the ideal model's prediction is known in closed form from the
*training* schedule (diffusers' `DDPMScheduler` for ε, σ = t/T for flow). Each sampler driven by it
must end at x0* — this catches a wrong prediction type, β schedule, timestep unit or input scaling,
and `clip_sample` (x0* has values far outside [-1, 1])."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.model import LMFusionConfig
from lmfusion_cli.model.diffusion import Diffusion
from lmfusion_cli.sampling.schedulers import SAMPLERS, make_sampler


def _config(objective: str, schedule: str = "cosine") -> SimpleNamespace:
    return SimpleNamespace(objective=objective, noise_schedule=schedule, num_train_timesteps=1000, timestep_shift=1.0)


def _oracle(config, x0: torch.Tensor):
    """The exact prediction for data = {x0}: ε = (x_t - √ᾱ x0)/√(1-ᾱ), or v = (x_t - x0)/σ."""
    T = config.num_train_timesteps
    if config.objective == "flow":
        return lambda x_t, t: (x_t - x0) / (t / T)
    beta = {"cosine": "squaredcos_cap_v2", "linear": "linear"}[config.noise_schedule]
    alphas_cumprod = DDPMScheduler(num_train_timesteps=T, beta_schedule=beta).alphas_cumprod.double()

    def predict(x_t: torch.Tensor, t: float) -> torch.Tensor:
        assert float(t).is_integer(), "ddpm-eps samplers must condition the model on training timesteps"
        a = alphas_cumprod[int(t)]
        return ((x_t.double() - a.sqrt() * x0.double()) / (1 - a).sqrt()).float()

    return predict


def _run(config, name: str, steps: int, x0: torch.Tensor, seed: int = 0) -> torch.Tensor:
    sampler = make_sampler(config, name, steps)
    oracle = _oracle(config, x0)
    generators = [torch.Generator().manual_seed(seed + i) for i in range(x0.shape[0])]
    x = sampler.initial_latents(tuple(x0.shape), generators)
    for i in range(sampler.num_steps):
        prediction = oracle(sampler.model_input(x, i), sampler.model_timestep(i))
        x = sampler.step(prediction, i, x, generators)
    return x


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("name", SAMPLERS)
def test_ddpm_eps_samplers_recover_the_data_point(name, schedule):
    x0 = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1)) * 3  # |x| > 1: clipping would show
    out = _run(_config("ddpm-eps", schedule), name, steps=12, x0=x0)
    torch.testing.assert_close(out, x0, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("name", ["euler", "dpm-solver"])
def test_flow_samplers_recover_the_data_point(name):
    x0 = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(2)) * 3
    out = _run(_config("flow"), name, steps=12, x0=x0)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=1e-4)


def test_flow_dpm_conditions_the_model_on_its_exact_sigma():
    sampler = make_sampler(_config("flow"), "dpm-solver", 7)
    sigmas = sampler.scheduler.sigmas
    for i in range(sampler.num_steps):
        assert sampler.model_timestep(i) == pytest.approx(float(sigmas[i]) * 1000)
    # diffusers rounds this scheduler's own timesteps; ours must not be those where σ·T is fractional
    assert any(sampler.model_timestep(i) != float(sampler.timesteps[i]) for i in range(sampler.num_steps))


@pytest.mark.parametrize("name", SAMPLERS)
def test_schedulers_never_clip_and_use_the_training_schedule(name):
    sampler = make_sampler(_config("ddpm-eps", "cosine"), name, 5)
    cfg = sampler.scheduler.config
    assert cfg.num_train_timesteps == 1000 and cfg.beta_schedule == "squaredcos_cap_v2"
    assert cfg.prediction_type == "epsilon"
    assert not cfg.get("clip_sample", False) and not cfg.get("thresholding", False)
    assert sampler.num_steps == 5
    # trailing spacing starts at the noisiest training step (DPM-Solver: the noisiest with λ >= -5.1)
    assert int(sampler.timesteps[0]) == 999 if name != "dpm-solver" else 990 <= int(sampler.timesteps[0]) < 999


def test_sampling_is_seeded_per_row():
    config, x0 = _config("ddpm-eps"), torch.zeros(1, 4, 2, 2)
    sampler = make_sampler(config, "ddpm", 3)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    pair = sampler.initial_latents((2, 4, 2, 2), gens([5, 6]))
    alone = sampler.initial_latents((1, 4, 2, 2), gens([6]))
    torch.testing.assert_close(pair[1:], alone, rtol=0, atol=0)
    assert not torch.equal(pair[0], pair[1])
    # the stochastic DDPM sampler is repeatable with the same seeds and differs with others
    a, b, c = (_run(config, "ddpm", 4, x0 + 0.5, seed=s) for s in (0, 0, 1))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_flow_refuses_ddpm_and_ddim(name):
    with pytest.raises(UserError, match="euler or dpm-solver"):
        make_sampler(_config("flow"), name, 10)


def test_unknown_sampler_and_bad_steps_are_user_errors():
    with pytest.raises(UserError, match="Unknown sampler 'heun'"):
        make_sampler(_config("ddpm-eps"), "heun", 10)
    with pytest.raises(UserError, match="steps must be >= 1"):
        make_sampler(_config("ddpm-eps"), "ddim", 0)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("name", SAMPLERS)
def test_samplers_use_the_training_noise_schedule(name, schedule):
    """Every ddpm-eps sampler's ᾱ_t equals the training schedule's (one owner: `ddpm_schedule`), and both
    equal diffusers' `DDPMScheduler` for the β schedule named in the config."""
    config = LMFusionConfig(latent_size=8, noise_schedule=schedule)
    training = Diffusion(config).alphas_cumprod
    beta = {"cosine": "squaredcos_cap_v2", "linear": "linear"}[schedule]
    torch.testing.assert_close(training, DDPMScheduler(beta_schedule=beta).alphas_cumprod.float())
    sampling = make_sampler(config, name, 4).scheduler.alphas_cumprod.float()
    torch.testing.assert_close(sampling, training)
