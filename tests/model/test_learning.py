"""A tiny LMFusion learns (acceptance 8): 64 fixed coloured-square latents with their captions.

A tiny LM pretrained here on the caption texts (then frozen), image experts copied from it; 300
seeded CPU steps of mixed caption→image and image→caption batches. Losses are measured on the whole set at fixed timesteps
and noise (validation-style) before and after training.
"""

from __future__ import annotations

import itertools

import torch

from lmfusion_cli.model import LMFusionModel, caption_to_image, collate, image_to_caption

from .helpers import tiny_base

COLOURS, CORNERS = 4, 4  # 4 foreground × 4 background colours × 4 corners = 64 images
WORD = {"square": 10, "on": 11, "fg": 20, "bg": 30, "corner": 40}


def shapes_set(latent_size: int, channels: int, seed: int = 0):
    """(64, C, S, S) latents: a background colour with a square of another colour in one corner."""
    g = torch.Generator().manual_seed(seed)
    palette = torch.randn(COLOURS, channels, generator=g) * 1.5
    half = latent_size // 2
    latents, captions = [], []
    for fg, bg, corner in itertools.product(range(COLOURS), range(COLOURS), range(CORNERS)):
        x = palette[bg][:, None, None].repeat(1, latent_size, latent_size)
        r, c = divmod(corner, 2)
        x[:, r * half : (r + 1) * half, c * half : (c + 1) * half] = palette[fg][:, None, None]
        latents.append(x)
        captions.append([WORD["fg"] + fg, WORD["square"], WORD["on"], WORD["bg"] + bg, WORD["corner"] + corner])
    return torch.stack(latents), captions


def pretrain_text(base, captions, steps: int = 150) -> None:
    """Make the tiny base a (weak) LM of the caption language first: LMFusion's premise is a capable
    frozen LM. It learns the template; colours and corners stay uniform guesses without the image."""
    ids = torch.tensor([[1, *c, 2] for c in captions])
    optimizer = torch.optim.AdamW(base.parameters(), lr=1e-2)
    base.train()
    for _ in range(steps):
        loss = base(ids, labels=ids).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    base.eval()


def _batches(model, latents, captions, generate: bool):
    build = caption_to_image if generate else image_to_caption
    kw = dict(num_image_tokens=model.num_image_tokens, boi_id=model.boi_id, eoi_id=model.eoi_id, bos_id=1, eos_id=2)
    return collate([build(c, latents=latents[i : i + 1], **kw) for i, c in enumerate(captions)])


def test_tiny_lmfusion_learns():
    torch.manual_seed(0)
    base = tiny_base("llama3", hidden_size=48, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2)
    latents, captions = shapes_set(8, 4)
    pretrain_text(base, captions)
    model = LMFusionModel.from_base(base, latent_size=8, unet_channels=(32, 64), lambda_image=1.0)
    generation = _batches(model, latents, captions, generate=True)
    understanding = _batches(model, latents, captions, generate=False)

    g = torch.Generator().manual_seed(1)
    eval_t = torch.linspace(0, 999, 64).round()
    eval_noise = torch.randn(latents.shape, generator=g)
    eval_cap_t = torch.full((64,), 100.0)

    def evaluate():
        with torch.no_grad():
            image = model(*generation, timesteps=eval_t, noise=eval_noise).image_loss
            text = model(*understanding, timesteps=eval_cap_t, noise=eval_noise).text_loss
        return image.item(), text.item()

    image_before, text_before = evaluate()
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=3e-3, weight_decay=0.0)
    kw = dict(num_image_tokens=model.num_image_tokens, boi_id=model.boi_id, eoi_id=model.eoi_id, bos_id=1, eos_id=2)
    for _ in range(300):
        rows = torch.randint(0, 64, (16,), generator=g).tolist()
        examples = [caption_to_image(captions[i], latents=latents[i : i + 1], **kw) for i in rows[:8]]
        examples += [image_to_caption(captions[i], latents=latents[i : i + 1], **kw) for i in rows[8:]]
        loss = model(*collate(examples), generator=g).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    image_after, text_after = evaluate()
    print(f"diffusion {image_before:.3f} -> {image_after:.3f}; caption LM {text_before:.3f} -> {text_after:.3f}")
    assert image_after <= image_before / 3
    # the caption loss first jumps (the LM meets BOI/EOI and image tokens) and training brings it
    # back to the caption template's floor, ln(4)·3/6 ≈ 0.69 nats: colours and corners still guessed.
    # Reading them from the image takes longer than this test's budget (measured: 0.68 at 400 steps).
    assert text_after <= 0.5 * text_before and text_after < 0.8
