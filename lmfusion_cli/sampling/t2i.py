"""Text → image latents: classifier-free guidance over a prefix KV cache (DESIGN §4).

The sequence of a generated image is `[BOS] prompt [BOI] <image tokens> [EOI]` (training's
`sequence.caption_to_image`); the unconditional branch is the empty caption `[BOS] [BOI]`, which is
what training's caption dropout shows the model. Per batch of B prompts:

1. the 2B prefixes (B conditional, then B unconditional; left-padded) go through the model once,
   filling one KV cache (`forward_segment(update_cache=True)`, via `context.SequenceContext`);
2. each denoising step runs only the 2B × N image tokens against that cache, with x_t duplicated for
   both branches, and combines ε̂ = ε̂_u + s · (ε̂_c − ε̂_u) (Ho & Salimans 2022), then steps the
   diffusers scheduler (`schedulers.Sampler`).

With `cfg_scale == 1` the unconditional branch is not computed at all (the guided prediction *is*
the conditional one). `use_cache=False` recomputes the whole prefix at every step (the reference the
cache must equal); `batch_branches=False` runs the two branches as two passes (the reference the
batched step must equal, and the benchmark's baseline).

This file owns guidance and the denoising loop; tokenising prompts, VAE decoding and files are
`generate.py`'s. The denoiser also serves interleaved generation (branches from any context).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lmfusion_cli.model.sequence import left_pad
from lmfusion_cli.sampling.context import Branch, SequenceContext
from lmfusion_cli.sampling.schedulers import Sampler


def image_prefix(prompt_ids: Sequence[int], *, bos_id: int | None, boi_id: int) -> list[int]:
    """`[BOS] prompt [BOI]`: the positions before a generated image."""
    return ([bos_id] if bos_id is not None else []) + list(prompt_ids) + [boi_id]


class GuidedDenoiser:
    """The guided model prediction for B images: `predict(x_t, t)` → ε̂ or v̂ (B, C, H, W).

    `passes` are the forward passes of one step; their rows, in order, are the B conditional rows
    and then (when guided) the B unconditional rows: one pass of 2B rows (batched CFG) or two of B.
    """

    def __init__(self, model, passes: Sequence[Branch], batch_size: int, cfg_scale: float):
        self.model, self.passes, self.batch_size = model, list(passes), batch_size
        self.cfg_scale = float(cfg_scale)
        expected = batch_size * (2 if self.guided else 1)
        if sum(p.batch_size for p in self.passes) != expected:
            raise ValueError(f"the passes hold {sum(p.batch_size for p in self.passes)} rows, expected {expected}")

    @property
    def guided(self) -> bool:
        return self.cfg_scale != 1.0

    def predict(self, x_t: torch.Tensor, t: float) -> torch.Tensor:
        """x_t (B, C, H, W) at model timestep t → the guided prediction (B, C, H, W)."""
        rows = torch.cat([x_t, x_t]) if self.guided else x_t  # (B or 2B, C, H, W)
        outputs, start = [], 0
        for branch in self.passes:
            outputs.append(branch.predict(self.model, rows[start : start + branch.batch_size], t))
            start += branch.batch_size
        prediction = torch.cat(outputs)
        if not self.guided:
            return prediction
        cond, uncond = prediction[: self.batch_size], prediction[self.batch_size :]
        return uncond + self.cfg_scale * (cond - uncond)


@torch.no_grad()
def prompt_denoiser(
    model,
    prefixes: Sequence[Sequence[int]],
    uncond_prefix: Sequence[int],
    cfg_scale: float,
    use_cache: bool = True,
    batch_branches: bool = True,
) -> GuidedDenoiser:
    """A denoiser for images after text prefixes (each ending with BOI); the prefixes are encoded once.

    uncond_prefix: the unconditional branch's sequence (`[BOS] [BOI]`), used for every row."""
    rows = [list(p) for p in prefixes]
    if cfg_scale != 1.0:
        rows += [list(uncond_prefix)] * len(prefixes)
    groups = [rows] if batch_branches or cfg_scale == 1.0 else [rows[: len(prefixes)], rows[len(prefixes) :]]
    passes = [SequenceContext(model, left_pad(group), use_cache=use_cache).branch() for group in groups]
    return GuidedDenoiser(model, passes, len(prefixes), cfg_scale)


@torch.no_grad()
def denoise(
    denoiser: GuidedDenoiser,
    sampler: Sampler,
    latent_shape: tuple[int, int, int],
    generators: list[torch.Generator],
    device: torch.device | str = "cpu",
    on_step: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Run the sampler from noise to clean latents: (B, C, H, W) float32, B = len(generators).

    Noise is drawn on the CPU from one generator per sample, so a sample depends on its seed only."""
    x = sampler.initial_latents((len(generators), *latent_shape), generators).to(device)
    for i in range(sampler.num_steps):
        prediction = denoiser.predict(sampler.model_input(x, i), sampler.model_timestep(i))
        x = sampler.step(prediction.float(), i, x, generators)
        if on_step is not None:
            on_step()
    return x
