"""Which noise each image of a batch gets: its timestep, within its image's cap, and its noise.

Generation images use the whole schedule; understanding images at most
`understanding_max_timestep_fraction` of it (Transfusion §4.3), and stay clean when it is 0. Each image
draws its timestep, then its noise, from its own generator, so the training workload can seed an
image by its sample (its noise does not depend on its batch neighbours or the process layout) and
`LMFusionModel.forward` can pass one generator for all. Validation asks for a fixed noise level
(`fraction`) instead of a random one.

This file owns the per-image draw and the understanding cap; the schedule math (timestep sampling,
`add_noise`) is `diffusion.py`'s. The model holds one `ImageNoising` (`LMFusionModel.noising`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmfusion_cli.model.diffusion import Diffusion


class ImageNoising:
    """Noise levels and noise for the images of a batch, under one schedule and understanding cap."""

    def __init__(self, diffusion: Diffusion, understanding_cap: float):
        self.diffusion = diffusion
        self.understanding_cap = understanding_cap
        """Largest noise fraction of an understanding image (`understanding_max_timestep_fraction`)."""

    def limits(self, generate: torch.Tensor, fraction: float | None = None) -> torch.Tensor:
        """(n,) float32 on the CPU: the noise fraction each image may reach (random draws) or gets (fixed).

        generate: (n,) bool, the generation images. Generation images: `fraction` (1 = the whole
        schedule when None); understanding images: the same, but at most the cap."""
        full = 1.0 if fraction is None else float(fraction)
        return torch.where(generate.cpu(), full, min(full, self.understanding_cap)).float()

    def draw(
        self,
        generate: torch.Tensor,
        latent_shape: Sequence[int],
        generators: Sequence[torch.Generator | None],
        fraction: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(timesteps (n,), noise (n, C, H, W)), both float32 on the generators' device.

        Image i draws from `generators[i]`: its timestep (below its limit, shifted for the whole schedule:
        `Diffusion.sample_timesteps`; or ⌊limit · T⌋ at a fixed `fraction`), then its noise. One
        generator may serve several images (drawn in turn); None draws from the global RNG."""
        limits = self.limits(generate, fraction)
        if len(generators) != limits.shape[0]:
            raise ValueError(f"{limits.shape[0]} images need as many generators, got {len(generators)}")
        timesteps, noise = [], []
        for i, generator in enumerate(generators):
            device = generator.device if generator is not None else torch.device("cpu")
            limit = limits[i : i + 1].to(device)  # (1,)
            if fraction is None:
                timesteps.append(self.diffusion.sample_timesteps(limit, generator))
            else:
                timesteps.append(self.diffusion.fixed_timesteps(limit))
            noise.append(torch.randn(tuple(latent_shape), generator=generator, device=device))
        if not timesteps:  # no images
            return torch.zeros(0), torch.zeros(0, *latent_shape)
        return torch.cat(timesteps), torch.stack(noise)

    def apply(
        self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, generate: torch.Tensor
    ) -> torch.Tensor:
        """x_t (n, C, H, W) from clean latents; with a cap of 0 the understanding images stay clean."""
        noisy = self.diffusion.add_noise(latents, noise, timesteps)
        if self.understanding_cap == 0:
            noisy = torch.where(generate[:, None, None, None], noisy, latents)
        return noisy
