"""Diffusion math against diffusers' own schedulers."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from lmfusion_cli.model import LMFusionConfig
from lmfusion_cli.model.diffusion import Diffusion
from lmfusion_cli.sampling.schedulers import make_sampler


def _cfg(**kw):
    return LMFusionConfig(latent_size=8, **kw)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, 4, 8, 8, generator=g), torch.randn(5, 4, 8, 8, generator=g)


def test_ddpm_scheduler_is_the_paper_one():
    scheduler = Diffusion(_cfg()).scheduler
    assert isinstance(scheduler, DDPMScheduler)
    assert scheduler.config.clip_sample is False
    assert scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert scheduler.config.prediction_type == "epsilon"
    assert scheduler.config.num_train_timesteps == 1000


def test_ddpm_noising_and_target_equal_diffusers(data):
    x0, eps = data
    diffusion = Diffusion(_cfg())
    reference = DDPMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=False, prediction_type="epsilon")
    t = torch.tensor([0, 1, 250, 700, 999])
    x_t = diffusion.add_noise(x0, eps, t)
    torch.testing.assert_close(x_t, reference.add_noise(x0, eps, t))
    torch.testing.assert_close(diffusion.target(x0, eps), eps)
    # the trained target read as ε by a diffusers step recovers the clean latent (1/√ᾱ_t amplifies fp32
    # error near t = T, so up to t = 950)
    reference.set_timesteps(1000)
    t = torch.tensor([0, 1, 250, 700, 950])
    x_t = diffusion.add_noise(x0, eps, t)
    for i, step in enumerate(t.tolist()):
        out = reference.step(diffusion.target(x0, eps)[i : i + 1], step, x_t[i : i + 1])
        torch.testing.assert_close(out.pred_original_sample, x0[i : i + 1], atol=1e-4, rtol=1e-4)


def test_flow_noising_and_target_equal_diffusers(data):
    x0, eps = data
    diffusion = Diffusion(_cfg(objective="flow"))
    reference = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
    t = reference.timesteps[[0, 10, 500, 998, 999]]  # the scheduler's own training grid
    x_t = diffusion.add_noise(x0, eps, t)
    torch.testing.assert_close(x_t, reference.scale_noise(x0, t, eps))
    v = diffusion.target(x0, eps)
    torch.testing.assert_close(v, eps - x0)
    # one Euler step of the sampler the sampling stage uses moves x_t along the trained velocity
    sampler = make_sampler(_cfg(objective="flow"), "euler", 10)
    x = x_t[:1]
    step = sampler.step(v[:1], 0, x, [torch.Generator().manual_seed(0)])
    dt = (sampler.scheduler.sigmas[1] - sampler.scheduler.sigmas[0]).item()
    torch.testing.assert_close(step, x + dt * v[:1])


def test_timesteps_are_per_image_and_capped():
    diffusion = Diffusion(_cfg())
    g = torch.Generator().manual_seed(0)
    fraction = torch.tensor([1.0] * 500 + [0.5] * 500)
    t = diffusion.sample_timesteps(fraction, g)
    assert t.unique().numel() > 100  # per image, not one shared draw
    assert t[:500].max() > 900 and t[500:].max() < 500 and (t == t.round()).all()
    flow = Diffusion(_cfg(objective="flow")).sample_timesteps(fraction, g)
    assert flow[500:].max() < 500 and (flow != flow.round()).any()


def test_training_uses_real_timestep_embedding():
    """The patcher's output depends on the timestep (never an embedding fixed at 0)."""
    from .helpers import tiny_model

    for patcher in ("unet", "linear", "conv"):
        model = tiny_model("llama3", patcher=patcher)
        latents = torch.randn(1, 4, 8, 8)
        a, _ = model.patcher.encode(latents, torch.tensor([10.0]))
        b, _ = model.patcher.encode(latents, torch.tensor([900.0]))
        assert not torch.allclose(a, b)


@pytest.mark.parametrize("understanding_loss", ["diffusion", "none"])
def test_understanding_images_are_capped_or_clean(understanding_loss):
    """Image→caption images: noise capped at the fraction (clean at 0). With `diffusion` (Transfusion
    §4.3) each is also a diffusion target whose loss is the plain MSE of its prediction; with `none`, or
    clean at cap 0, it carries no diffusion loss."""
    from lmfusion_cli.model import collate, image_to_caption

    from .helpers import tiny_model

    for cap in (0.5, 0.0):
        model = tiny_model(
            "llama3", understanding_max_timestep_fraction=cap, understanding_image_loss=understanding_loss
        )
        kw = dict(num_image_tokens=model.num_image_tokens, boi_id=model.boi_id, eoi_id=model.eoi_id)
        batch, latents = collate([image_to_caption([5, 6], latents=torch.randn(1, 4, 8, 8), **kw) for _ in range(64)])
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            a, b = model(batch, latents, generator=g), model(batch, latents, generator=g)
        with_loss = understanding_loss == "diffusion" and cap > 0
        assert int(a.num_image_targets) == (64 if with_loss else 0)
        assert (a.image_loss > 0) == with_loss
        if cap:
            assert a.timesteps.max() < 500 and a.timesteps.unique().numel() > 10
            assert not torch.equal(a.text_loss, b.text_loss)  # noise differs between draws
        else:
            assert (a.timesteps == 0).all() and torch.equal(a.text_loss, b.text_loss)  # clean latents


@pytest.mark.parametrize("understanding_loss", ["diffusion", "none"])
def test_understanding_image_loss_is_the_mse_of_its_prediction(understanding_loss):
    """The understanding image's loss equals the objective's MSE recomputed from `forward_segment` on the
    same noisy latents (unconditional: only BOS precedes it), and its gradient reaches the patcher's
    output path only with `diffusion`."""
    from lmfusion_cli.model import collate, image_to_caption

    from .helpers import tiny_model

    model = tiny_model("llama3", understanding_image_loss=understanding_loss)
    kw = dict(num_image_tokens=model.num_image_tokens, boi_id=model.boi_id, eoi_id=model.eoi_id, bos_id=1, eos_id=2)
    batch, latents = collate([image_to_caption([5, 6, 7], latents=torch.randn(1, 4, 8, 8), **kw)])
    t, noise = torch.tensor([300.0]), torch.randn(1, 4, 8, 8)
    out = model(batch, latents, timesteps=t, noise=noise)
    out.loss.backward()
    decoder_grad = model.patcher.conv_out.weight.grad
    if understanding_loss == "none":
        assert int(out.num_image_targets) == 0 and float(out.image_loss) == 0
        assert decoder_grad is None or not decoder_grad.any()
        return
    noisy = model.diffusion.add_noise(latents, noise, t)
    with torch.no_grad():
        pred = model.forward_segment(batch, noisy, t).image_prediction
    reference = model.diffusion.loss_per_image(pred, latents, noise)
    torch.testing.assert_close(out.image_loss.detach(), reference[0], rtol=1e-5, atol=1e-6)
    assert decoder_grad is not None and decoder_grad.abs().sum() > 0


@pytest.mark.parametrize("objective", ["flow", "ddpm-eps"])
def test_timestep_shift_moves_training_noise_levels_like_diffusers(objective):
    """With shift s the training σ = t/T is distributed as diffusers' shifted flow sigmas: the CDF of
    σ at x equals u with x = s·u/(1+(s-1)·u) (FlowMatchEulerDiscreteScheduler's own shift of a
    uniform grid), and the cap of understanding images still holds."""
    shift, n = 6.0, 20000
    g = torch.Generator().manual_seed(0)
    sigma = Diffusion(_cfg(objective=objective, timestep_shift=shift)).sample_timesteps(torch.ones(n), g) / 1000
    grid = torch.linspace(0.05, 0.95, 19)
    reference = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    shifted = (shift * grid / (1 + (shift - 1) * grid)).double()
    sched_sigmas = reference.sigmas.double()  # diffusers' shifted training grid, high → low noise
    unshifted = torch.linspace(1, 1 / 1000, 1000, dtype=torch.float64)
    torch.testing.assert_close(
        sched_sigmas[::100], (shift * unshifted / (1 + (shift - 1) * unshifted))[::100], atol=1e-6, rtol=0
    )
    empirical_cdf = (sigma.double()[None, :] <= shifted[:, None]).double().mean(1)
    assert (empirical_cdf - grid.double()).abs().max() < 0.02
    assert (sigma > 0.5).double().mean() > 0.8  # most draws at high noise (0.5 with no shift)
    capped = Diffusion(_cfg(objective=objective, timestep_shift=shift)).sample_timesteps(torch.full((n,), 0.5), g)
    assert capped.max() < 500
    # understanding images (capped) are not shifted: uniform below the cap, as captioning sees clean images
    assert abs((capped < 250).double().mean().item() - 0.5) < 0.02


def test_timestep_shift_must_be_positive():
    with pytest.raises(ValueError, match="timestep_shift"):
        _cfg(timestep_shift=0.0)
