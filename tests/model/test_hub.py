"""`LMFusionModel.save_pretrained` / `from_pretrained` (huggingface_hub's PyTorchModelHubMixin, issue 16):
a round trip gives the same outputs and stores only the trainable weights; a hub id that cannot be
fetched (the tests run offline) is one sentence."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.model import LMFusionModel

from .helpers import mixed_batch, tiny_base


def test_save_and_from_pretrained_round_trip(tmp_path):
    tiny_base("smollm").save_pretrained(tmp_path / "base")  # tied embeddings
    model = LMFusionModel.from_base(tmp_path / "base", latent_size=8, unet_channels=(16, 32), patcher="linear")
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path / "saved")
    stored = load_file(str(tmp_path / "saved" / "model.safetensors"))
    assert set(stored) == {n for n, p in model.named_parameters() if p.requires_grad}
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["latent_size"] == 8 and config["patcher"] == "linear"
    assert "library_name: lmfusion" in (tmp_path / "saved" / "README.md").read_text()
    restored = LMFusionModel.from_pretrained(tmp_path / "saved")
    batch, latents = mixed_batch(model)
    t = torch.linspace(50, 950, batch.num_images)
    with torch.no_grad():
        a = model.eval().forward_segment(batch, latents, t)
        b = restored.forward_segment(batch, latents, t)
    assert torch.equal(a.text_logits, b.text_logits) and torch.equal(a.image_prediction, b.image_prediction)


def test_an_unreachable_hub_id_is_one_sentence():
    with pytest.raises(UserError, match="Cannot fetch the LMFusion model someone/no-such-lmfusion-model"):
        LMFusionModel.from_pretrained("someone/no-such-lmfusion-model")


def test_model_card_names_the_training_vae_without_repeating_a_local_path(tmp_path):
    """The cache's VAE is named by reference when it is the exported one (same weights), else by its id."""
    from lmfusion_cli.packaging.model_card import _training_data

    latents = tmp_path / "latents"
    latents.mkdir()
    (latents / "manifest.json").write_text(
        json.dumps({"vae": {"id": "/home/me/vae", "weights_sha256": "abc"}, "resolution": 64, "shards": []})
    )
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"data:\n  latents: {latents}\n")
    same = "\n".join(_training_data(run, {"id": "../tiny-vae", "weights_sha256": "abc"}))
    assert "the VAE above (same weights)" in same and "/home/me/vae" not in same
    other = "\n".join(_training_data(run, {"id": "vae", "weights_sha256": "def"}))
    assert "VAE `/home/me/vae`" in other
