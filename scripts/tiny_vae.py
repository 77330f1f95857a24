"""The embedded tiny VAE: a diffusers `AutoencoderKL` trained on the shapes images (issue 4).

Used by `scripts/build_assets.py`; owns the VAE config, its training loop (MSE + L1 + tiny KL, warmup +
cosine, gradient clipping, an EMA copy that is what gets saved), the decoder-only phase after it (issue
23: the joint phase leaves triangles decoding as blobs; training the decoder alone, encoder and
`quant_conv` frozen, sharpens them without moving any latent), the reconstruction PSNR on held-out
images, and the latent scale/shift stored in the VAE config. Shapes images come from
`lmfusion_cli/data/shapes.py`. Seeded; runs on CPU."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from lmfusion_cli.common.progress import progress
from lmfusion_cli.data.shapes import make_item

HELDOUT_SEED_OFFSET = 1_000_003  # held-out images use seed + this: a random stream disjoint from training


@dataclass(frozen=True)
class VAESettings:
    resolution: int = 64
    """Image side in pixels."""
    block_channels: tuple[int, ...] = (32, 64, 64)
    """Encoder/decoder block widths; len-1 halvings (3 blocks: 64 px -> 16x16 latents)."""
    latent_channels: int = 4
    """Latent channels."""
    norm_num_groups: int = 8
    """GroupNorm groups (32 strips flat colours: MEASURED-NOTES)."""
    num_train_images: int = 12000
    """Distinct training images (make_item indexes 0..N-1 of the seed)."""
    batch_size: int = 12
    """Images per step."""
    steps: int = 600
    """Optimizer steps."""
    lr: float = 2e-3
    """Peak learning rate (AdamW)."""
    warmup_steps: int = 40
    """Linear warmup steps."""
    l1_weight: float = 0.5
    """Weight of the L1 pixel loss next to MSE (sharpens flat regions and edges)."""
    kl_weight: float = 1e-6
    """Weight of the KL term."""
    ema_decay: float = 0.99
    """Decay of the weight EMA that is evaluated and saved."""
    logvar_bias_init: float = -6.0
    """Initial bias of the posterior log-variance outputs of quant_conv."""
    max_minutes: float = 60.0
    """Safety cap on training time; a run that hits it stops early and says so in the report."""
    decoder_steps: int = 1500
    """Decoder-only steps after the joint phase (0 = none): the checker's shape on held-out reconstructions
    0.65 → 0.96 (docs/training.md "What limits shape"); latents are unchanged."""
    decoder_lr: float = 1e-3
    """Peak learning rate of the decoder-only phase (same warmup + cosine shape)."""


def images_tensor(indexes: range | list[int], seed: int, resolution: int) -> torch.Tensor:
    """Shapes images `indexes` of `seed` as uint8 (N, 3, H, W)."""
    arrays = [
        np.asarray(make_item(i, seed=seed, resolution=resolution).image)
        for i in progress(indexes, desc="shapes images", unit="img")
    ]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def to_model_range(images_u8: torch.Tensor) -> torch.Tensor:
    return images_u8.float() / 127.5 - 1.0


def build_vae(settings: VAESettings):
    from diffusers import AutoencoderKL

    n = len(settings.block_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(settings.block_channels),
        layers_per_block=1,
        latent_channels=settings.latent_channels,
        norm_num_groups=settings.norm_num_groups,
        sample_size=settings.resolution,
    )
    with torch.no_grad():  # quant_conv outputs (mean, logvar): start with a nearly deterministic posterior
        vae.quant_conv.bias[settings.latent_channels :].fill_(settings.logvar_bias_init)
    return vae


def lr_at(step: int, settings: VAESettings, decoder: bool = False) -> float:
    """Warmup + cosine learning rate of the joint phase, or of the decoder-only phase (`decoder`)."""
    peak, steps = (settings.decoder_lr, settings.decoder_steps) if decoder else (settings.lr, settings.steps)
    if step < settings.warmup_steps:
        return peak * (step + 1) / settings.warmup_steps
    frac = (step - settings.warmup_steps) / max(1, steps - settings.warmup_steps)
    return peak * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))


def vae_loss(vae, x: torch.Tensor, settings: VAESettings, gen: torch.Generator) -> tuple[torch.Tensor, float]:
    """(MSE + L1 + tiny KL on one batch, its MSE) — the loss of both phases."""
    posterior = vae.encode(x).latent_dist
    z = posterior.sample(generator=gen)
    recon = vae.decode(z).sample
    mse = torch.nn.functional.mse_loss(recon, x)
    kl = posterior.kl().mean() / z[0].numel()  # per latent element
    return mse + settings.l1_weight * (recon - x).abs().mean() + settings.kl_weight * kl, mse.item()


def optimise(
    vae, params, images_u8: torch.Tensor, settings: VAESettings, gen, steps: int, lr_of, name: str, on_step=None
):
    """The step loop of both phases: AdamW on `params` (lr `lr_of(step)`), batches of `settings.batch_size`
    images drawn with `gen`, `vae_loss`, gradient clipping at 1.0, a progress line every 200 steps; stops
    at `settings.max_minutes`. `on_step(step, mse)` runs after each optimizer step (EMA, reports).
    Returns the figures for the report."""
    opt = torch.optim.AdamW(params, lr=lr_of(0), betas=(0.9, 0.99), weight_decay=0.0)
    vae.train()
    start, steps_done = time.time(), 0
    bar = progress(total=steps, desc=f"tiny {name}", unit="step")
    for step in range(steps):
        if (time.time() - start) / 60 > settings.max_minutes:
            break
        for group in opt.param_groups:
            group["lr"] = lr_of(step)
        idx = torch.randint(0, len(images_u8), (settings.batch_size,), generator=gen)
        x = to_model_range(images_u8[idx])  # (B, 3, H, W) in [-1, 1]
        loss, mse = vae_loss(vae, x, settings, gen)
        if not torch.isfinite(loss):
            raise RuntimeError(f"tiny {name} loss is not finite at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        steps_done += 1
        if on_step is not None:
            on_step(step, mse)
        bar.update(1)
        if step % 200 == 0 or step == steps - 1:
            psnr = 10 * math.log10(4.0 / max(mse, 1e-12))
            print(
                f"  {name.lower()} step {step:5d}  mse {mse:.5f} (~{psnr:.1f} dB)  lr {lr_of(step):.2e}  "
                f"{time.time() - start:.0f} s",
                flush=True,
            )
    bar.close()
    return {
        "steps_done": steps_done,
        "stopped_early": steps_done < steps,
        "train_minutes": round((time.time() - start) / 60, 2),
    }


def train_vae(vae, images_u8: torch.Tensor, settings: VAESettings, seed: int):
    """Train `vae`; returns (EMA copy of the model, figures for the report)."""
    gen = torch.Generator().manual_seed(seed)
    ema = copy.deepcopy(vae).eval().requires_grad_(False)
    params = list(vae.parameters())

    @torch.no_grad()
    def fold_into_ema(step: int, mse: float) -> None:
        decay = min(settings.ema_decay, (1 + step) / (10 + step))  # short warm-up of the EMA itself
        for p_ema, p in zip(ema.parameters(), params):
            p_ema.lerp_(p, 1 - decay)

    lr_of = lambda step: lr_at(step, settings)  # noqa: E731
    return ema, optimise(vae, params, images_u8, settings, gen, settings.steps, lr_of, "VAE", fold_into_ema)


def train_decoder(vae, images_u8: torch.Tensor, settings: VAESettings, seed: int, on_step=None) -> dict:
    """Train the decoder of `vae` alone for `settings.decoder_steps` (in place); encoder and `quant_conv` stay
    frozen, so every latent (and the latent scale/shift) is unchanged. `on_step(step, mse)` is called after
    each step (e.g. held-out scores). Returns figures for the report."""
    gen = torch.Generator().manual_seed(seed + 7)
    vae.requires_grad_(False)
    vae.post_quant_conv.requires_grad_(True)
    vae.decoder.requires_grad_(True)
    params = [p for p in vae.parameters() if p.requires_grad]
    lr_of = lambda step: lr_at(step, settings, decoder=True)  # noqa: E731
    report = optimise(vae, params, images_u8, settings, gen, settings.decoder_steps, lr_of, "VAE decoder", on_step)
    vae.eval().requires_grad_(False)
    return report


@torch.no_grad()
def psnr_db(vae, images_u8: torch.Tensor, batch_size: int = 50) -> dict:
    """Reconstruction PSNR (posterior mean, decoded, clamped, 8-bit): mean over images and of the pooled MSE."""
    per_image = []
    for i in range(0, len(images_u8), batch_size):
        x = to_model_range(images_u8[i : i + batch_size])
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample
        recon_u8 = ((recon.clamp(-1, 1) + 1) * 127.5).round()
        mse = ((recon_u8 - images_u8[i : i + batch_size].float()) ** 2).mean(dim=(1, 2, 3))
        per_image.append(mse)
    mse = torch.cat(per_image).clamp_min(1e-10)
    return {
        "psnr_mean_db": round(float((10 * torch.log10(255.0**2 / mse)).mean()), 3),
        "psnr_pooled_db": round(float(10 * torch.log10(255.0**2 / mse.mean())), 3),
        "num_images": len(images_u8),
    }


@torch.no_grad()
def latent_stats(vae, images_u8: torch.Tensor, seed: int, batch_size: int = 50) -> tuple[float, float]:
    """(mean, std) over all elements of posterior *samples* of `images_u8` (what diffusion trains on)."""
    gen = torch.Generator().manual_seed(seed)
    zs = [
        vae.encode(to_model_range(images_u8[i : i + batch_size])).latent_dist.sample(generator=gen)
        for i in range(0, len(images_u8), batch_size)
    ]
    z = torch.cat(zs).double()
    return float(z.mean()), float(z.std())


def settings_dict(settings: VAESettings) -> dict:
    return asdict(settings)
