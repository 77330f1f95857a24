"""The tiny VAE's decoder-only phase (scripts/tiny_vae.py, issue 23) trains the decoder and leaves every
latent bit-identical: encoder and quant_conv do not move."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import tiny_vae  # noqa: E402


def test_decoder_phase_moves_the_decoder_only():
    settings = tiny_vae.VAESettings(
        resolution=32, block_channels=(8, 16, 16), batch_size=4, num_train_images=16, decoder_steps=4, warmup_steps=2
    )
    torch.manual_seed(0)
    vae = tiny_vae.build_vae(settings).eval()
    images = tiny_vae.images_tensor(range(16), 0, 32)
    x = tiny_vae.to_model_range(images[:4])
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    with torch.no_grad():
        latents_before = vae.encode(x).latent_dist.mean
        recon_before = vae.decode(latents_before).sample
    mses = []
    report = tiny_vae.train_decoder(vae, images, settings, seed=0, on_step=lambda step, mse: mses.append(mse))
    assert report["steps_done"] == 4 and not report["stopped_early"] and len(mses) == 4
    after = vae.state_dict()
    frozen = [k for k in after if k.startswith(("encoder.", "quant_conv."))]
    trained = [k for k in after if k.startswith(("decoder.", "post_quant_conv."))]
    assert frozen and trained and len(frozen) + len(trained) == len(after)
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in trained if after[k].is_floating_point())
    with torch.no_grad():
        assert torch.equal(vae.encode(x).latent_dist.mean, latents_before)
        assert not torch.equal(vae.decode(latents_before).sample, recon_before)
    assert not any(p.requires_grad for p in vae.parameters()) and not vae.training


def test_decoder_lr_follows_warmup_and_cosine():
    s = tiny_vae.VAESettings(decoder_steps=100, decoder_lr=1e-3, warmup_steps=10)
    assert tiny_vae.lr_at(0, s, decoder=True) == 1e-4
    assert tiny_vae.lr_at(10, s, decoder=True) == 1e-3
    assert tiny_vae.lr_at(99, s, decoder=True) < 1e-6
    assert tiny_vae.lr_at(10, s) == s.lr and tiny_vae.lr_at(599, s) < 1e-6  # the joint phase keeps its own
