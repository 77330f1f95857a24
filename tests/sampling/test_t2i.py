"""Text→image denoising: cached == uncached, batched CFG == two passes, both == a naive reference
built from training's own sequence layout (`caption_to_image`), and CFG scale 1 == the conditional
branch alone."""

from __future__ import annotations

import pytest
import torch

from lmfusion_cli.model import caption_to_image, collate
from lmfusion_cli.sampling.schedulers import make_sampler
from lmfusion_cli.sampling.t2i import denoise, image_prefix, prompt_denoiser

PROMPTS = [[6, 14], [9, 20, 7, 11, 12], []]  # different lengths (left padding), and the empty caption


def assert_close_scaled(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    """|a - b| small against the scale of a: an untrained ε-model's x_0 estimates at t ≈ T reach
    ~1e5 (1/√ᾱ_T), so float32 rounding is relative; a bug gives O(1) relative differences."""
    scale = a.abs().max().item()
    assert (a - b).abs().max().item() <= rel * scale, f"max diff {(a - b).abs().max().item()} vs scale {scale}"


def _prefixes(model, prompts):
    return [image_prefix(p, bos_id=1, boi_id=model.boi_id) for p in prompts]


def _naive_prediction(model, prompt, x_t, t):
    """One prompt, full sequence `[BOS] prompt BOI image EOI` as training lays it out, no cache."""
    ex = caption_to_image(
        prompt, num_image_tokens=model.num_image_tokens, boi_id=model.boi_id, eoi_id=model.eoi_id, bos_id=1
    )
    batch, _ = collate([ex])
    return model.forward_segment(batch, latents=x_t, timesteps=torch.full((1,), float(t))).image_prediction


@torch.no_grad()
def _naive_sample(model, prompts, cfg_scale, sampler_name, steps, seeds):
    shape = (model.config.latent_channels, model.config.latent_size, model.config.latent_size)
    out = []
    for prompt, seed in zip(prompts, seeds):
        sampler = make_sampler(model.config, sampler_name, steps)
        gens = [torch.Generator().manual_seed(seed)]
        x = sampler.initial_latents((1, *shape), gens)
        for i in range(sampler.num_steps):
            x_in, t = sampler.model_input(x, i), sampler.model_timestep(i)
            cond = _naive_prediction(model, prompt, x_in, t)
            pred = cond
            if cfg_scale != 1.0:
                uncond = _naive_prediction(model, [], x_in, t)
                pred = uncond + cfg_scale * (cond - uncond)
            x = sampler.step(pred, i, x, gens)
        out.append(x)
    return torch.cat(out)


def _sample(model, prompts, cfg_scale, sampler_name="ddim", steps=4, seeds=(3, 4, 5), **kw):
    denoiser = prompt_denoiser(model, _prefixes(model, prompts), [1, model.boi_id], cfg_scale, **kw)
    sampler = make_sampler(model.config, sampler_name, steps)
    shape = (model.config.latent_channels, model.config.latent_size, model.config.latent_size)
    gens = [torch.Generator().manual_seed(s) for s in seeds[: len(prompts)]]
    return denoise(denoiser, sampler, shape, gens)


@pytest.mark.parametrize("cfg_scale", [1.0, 4.0])
def test_cached_equals_uncached_equals_naive(model, cfg_scale):
    cached = _sample(model, PROMPTS, cfg_scale, use_cache=True)
    uncached = _sample(model, PROMPTS, cfg_scale, use_cache=False)
    naive = _naive_sample(model, PROMPTS, cfg_scale, "ddim", 4, (3, 4, 5))
    assert_close_scaled(cached, uncached)
    assert_close_scaled(cached, naive)
    assert torch.isfinite(cached).all()


def test_cached_equals_naive_for_a_flow_model(tokenizer):
    from sampling_helpers import make_model

    flow = make_model(tokenizer, seed=3, objective="flow", patcher="linear")
    cached = _sample(flow, PROMPTS, 3.0, sampler_name="euler")
    naive = _naive_sample(flow, PROMPTS, 3.0, "euler", 4, (3, 4, 5))
    torch.testing.assert_close(cached, naive, atol=1e-4, rtol=1e-4)


def test_batched_cfg_step_equals_two_separate_passes(model):
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    prefixes = _prefixes(model, PROMPTS)
    batched = prompt_denoiser(model, prefixes, [1, model.boi_id], 3.0, batch_branches=True)
    separate = prompt_denoiser(model, prefixes, [1, model.boi_id], 3.0, batch_branches=False)
    assert len(batched.passes) == 1 and batched.passes[0].batch_size == 6 and len(separate.passes) == 2
    torch.testing.assert_close(batched.predict(x, 500.0), separate.predict(x, 500.0), atol=1e-5, rtol=1e-5)


def test_cfg_scale_one_is_the_conditional_branch_alone(model):
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    prefixes = _prefixes(model, PROMPTS)
    plain = prompt_denoiser(model, prefixes, [1, model.boi_id], 1.0)
    assert not plain.guided and sum(p.batch_size for p in plain.passes) == 3  # no unconditional rows run
    guided = prompt_denoiser(model, prefixes, [1, model.boi_id], 2.0, batch_branches=False)
    cond_only = guided.passes[0].predict(model, x, 250.0)
    torch.testing.assert_close(plain.predict(x, 250.0), cond_only, atol=1e-5, rtol=1e-5)
    # and guidance does change the prediction (the branches differ)
    assert (guided.predict(x, 250.0) - cond_only).abs().max() > 1e-3


def test_guidance_formula(model):
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    d = prompt_denoiser(model, _prefixes(model, PROMPTS[:2]), [1, model.boi_id], 5.0, batch_branches=False)
    cond, uncond = d.passes[0].predict(model, x, 100.0), d.passes[1].predict(model, x, 100.0)
    torch.testing.assert_close(d.predict(x, 100.0), uncond + 5.0 * (cond - uncond))


def test_sample_depends_only_on_its_seed(model):
    both = _sample(model, PROMPTS[:2], 3.0, seeds=(7, 8))
    alone = _sample(model, PROMPTS[1:2], 3.0, seeds=(8,))
    assert_close_scaled(both[1:], alone)
    other = _sample(model, PROMPTS[1:2], 3.0, seeds=(9,))
    assert (other - alone).abs().max() > 1e-2 * alone.abs().max()


def test_a_bfloat16_model_samples_from_float32_latents(tokenizer):
    """A model loaded in bf16 (the 1B-class GPU configuration) takes the sampler's fp32 latents and hands
    back an fp32 prediction: before the fix the patcher's timestep MLP refused fp32 inputs."""
    from sampling_helpers import make_model

    for patcher in ("linear", "unet"):
        model = make_model(tokenizer, seed=5, patcher=patcher).to(torch.bfloat16)
        out = _sample(model, PROMPTS[:2], 3.0, steps=2)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_flow_samplers_use_the_models_timestep_shift(tokenizer):
    """Training draws shifted noise levels (σ ↦ sσ/(1+(s-1)σ)); flow samplers must walk the same ones."""
    from sampling_helpers import make_model

    from lmfusion_cli.model.diffusion import shift_noise_level

    shifted = make_model(tokenizer, seed=3, objective="flow", patcher="linear", timestep_shift=4.0).config
    plain = make_model(tokenizer, seed=3, objective="flow", patcher="linear").config
    for name in ("euler", "dpm-solver"):
        sigmas = make_sampler(shifted, name, 10).scheduler.sigmas.double()
        expected = shift_noise_level(make_sampler(plain, name, 10).scheduler.sigmas.double(), 4.0)
        assert sigmas[1] > 0.9  # most steps spent at high noise
        # all but the last step (diffusers' Euler grid ends at its shifted σ_min, shifted once more)
        torch.testing.assert_close(sigmas[:-2], expected[:-2], atol=1e-2, rtol=0)
