"""The model owns noising: per-image draws, the understanding cap, fixed validation levels."""

from __future__ import annotations

import pytest
import torch

from lmfusion_cli.model import LMFusionConfig, caption_to_image, collate, image_to_caption
from lmfusion_cli.model.diffusion import Diffusion
from lmfusion_cli.model.noising import ImageNoising

from .helpers import tiny_model


def _noising(cap: float, **options) -> ImageNoising:
    return ImageNoising(Diffusion(LMFusionConfig(latent_size=8, **options)), cap)


def test_limits_cap_understanding_images_only():
    generate, noising = torch.tensor([True, False, True, False]), _noising(0.3)
    torch.testing.assert_close(noising.limits(generate), torch.tensor([1.0, 0.3, 1.0, 0.3]))
    torch.testing.assert_close(noising.limits(generate, fraction=0.2), torch.tensor([0.2, 0.2, 0.2, 0.2]))
    torch.testing.assert_close(noising.limits(generate, fraction=0.9), torch.tensor([0.9, 0.3, 0.9, 0.3]))


@pytest.mark.parametrize("objective", ["ddpm-eps", "flow"])
def test_fixed_levels_are_the_fraction_of_the_schedule(objective):
    noising = _noising(0.25, objective=objective)
    generate = torch.tensor([True, False])
    generators = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]
    t, noise = noising.draw(generate, (4, 8, 8), generators, fraction=0.5)
    assert t.tolist() == [500.0, 250.0] and noise.shape == (2, 4, 8, 8)
    t, _ = noising.draw(generate, (4, 8, 8), generators, fraction=1.0)
    assert t[0] == (999 if objective == "ddpm-eps" else 1000)  # within the ddpm table's 1000 entries


def test_each_image_draws_from_its_own_generator():
    """An image's timestep and noise depend on its generator only, not on its neighbours."""
    noising, generate, seeds = _noising(0.5), torch.tensor([True, False, True]), [3, 4, 5]
    t, noise = noising.draw(generate, (4, 8, 8), [torch.Generator().manual_seed(s) for s in seeds])
    for i, seed in enumerate(seeds):
        t_one, noise_one = noising.draw(generate[i : i + 1], (4, 8, 8), [torch.Generator().manual_seed(seed)])
        assert torch.equal(t_one[0], t[i]) and torch.equal(noise_one[0], noise[i])
    assert t[1] < 500  # the understanding image is capped
    with pytest.raises(ValueError, match="generators"):
        noising.draw(generate, (4, 8, 8), [None])


def test_a_cap_of_zero_keeps_understanding_images_clean():
    noising, generate = _noising(0.0), torch.tensor([True, False])
    latents = torch.randn(2, 4, 8, 8)
    t, noise = noising.draw(generate, (4, 8, 8), [torch.Generator().manual_seed(0)] * 2)
    noisy = noising.apply(latents, noise, t, generate)
    assert t[1] == 0 and torch.equal(noisy[1], latents[1]) and not torch.equal(noisy[0], latents[0])


def test_forward_draws_through_the_models_noising():
    """`forward(generator=g)` equals `forward(timesteps, noise)` with `noising.draw` from the same seed: the
    training forward and the workload (which passes timesteps and noise) noise images the same way."""
    model = tiny_model("llama3", understanding_max_timestep_fraction=0.4)
    kw = dict(num_image_tokens=model.num_image_tokens, boi_id=model.boi_id, eoi_id=model.eoi_id, bos_id=1, eos_id=2)
    examples = [caption_to_image([5, 6], latents=torch.randn(1, 4, 8, 8), **kw)]
    examples.append(image_to_caption([7, 8, 9], latents=torch.randn(1, 4, 8, 8), **kw))
    batch, latents = collate(examples)
    with torch.no_grad():
        drawn = model(batch, latents, generator=torch.Generator().manual_seed(0))
        g = torch.Generator().manual_seed(0)
        t, noise = model.noising.draw(batch.image_generate, latents.shape[1:], [g] * batch.num_images)
        given = model(batch, latents, timesteps=t, noise=noise)
    torch.testing.assert_close(drawn.timesteps, t)
    torch.testing.assert_close(drawn.loss, given.loss)
    assert t[1] < 400  # the understanding image's cap
