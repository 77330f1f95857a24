"""Save → load gives identical outputs; a different base is refused; merge is self-contained.
Also: packing two documents gives each the outputs it has alone."""

from __future__ import annotations

import json

import pytest
import torch

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.model import TEXT, collate, pack
from lmfusion_cli.model.checkpoint import META, WEIGHTS, load, merge, save_trainable

from .helpers import mixed_batch, mixed_examples, tiny_base, tiny_model


@pytest.fixture
def saved_base(tmp_path):
    base = tiny_base("qwen2")
    base.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def _outputs(model, batch, latents):
    t = torch.linspace(50, 950, batch.num_images)
    with torch.no_grad():
        out = model.forward_segment(batch, latents, t)
    return out.text_logits, out.image_prediction


def test_save_load_identical_outputs(tmp_path, saved_base):
    from lmfusion_cli.model import LMFusionModel

    model = LMFusionModel.from_base(saved_base, latent_size=8, unet_channels=(16, 32), patcher="linear")
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_trainable(model, tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / META).read_text())
    assert meta["base"] == str(saved_base) and len(meta["base_config_sha256"]) == 64
    assert meta["lmfusion_config"]["patcher"] == "linear"
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "ckpt" / WEIGHTS))
    assert not any(k.startswith("base.") for k in stored)  # text weights stay with the base
    assert len(stored) == len(model.trainable_parameters())

    restored = load(tmp_path / "ckpt")
    batch, latents = mixed_batch(model)
    for a, b in zip(_outputs(model, batch, latents), _outputs(restored, batch, latents)):
        assert torch.equal(a, b)

    merge(tmp_path / "ckpt", tmp_path / "merged")
    saved_base.rename(tmp_path / "moved")  # the merged folder must not need the original base
    merged = load(tmp_path / "merged")
    for a, b in zip(_outputs(model, batch, latents), _outputs(merged, batch, latents)):
        assert torch.equal(a, b)


def test_load_refuses_a_base_with_another_config(tmp_path, saved_base):
    from lmfusion_cli.model import LMFusionModel

    model = LMFusionModel.from_base(saved_base, latent_size=8, unet_channels=(16, 32))
    save_trainable(model, tmp_path / "ckpt")
    other = tiny_base("qwen2", intermediate_size=48)
    with pytest.raises(UserError) as err:
        load(tmp_path / "ckpt", base=other)
    assert str(tmp_path / "ckpt") in str(err.value) and str(err.value).count(".") >= 1
    with pytest.raises(UserError, match="not an LMFusion checkpoint"):
        load(tmp_path)


def test_packed_documents_match_each_document_alone():
    model = tiny_model("llama3")
    examples = mixed_examples(model)
    packed, packed_latents = pack(examples, row_length=sum(len(e) for e in examples))
    assert packed.input_ids.shape[0] == 1
    t_all = torch.tensor([100.0, 400.0, 700.0, 900.0])
    with torch.no_grad():
        together = model.forward_segment(packed, packed_latents, t_all)
    start, image = 0, 0
    for ex in examples:
        alone_batch, alone_latents = collate([ex])
        k = alone_batch.num_images
        with torch.no_grad():
            alone = model.forward_segment(alone_batch, alone_latents, t_all[image : image + k])
        span = slice(start, start + len(ex))
        text = alone_batch.modality[0] == TEXT
        torch.testing.assert_close(together.text_logits[0, span][text], alone.text_logits[0][text], atol=1e-5, rtol=0)
        torch.testing.assert_close(
            together.image_prediction[image : image + k], alone.image_prediction, atol=1e-5, rtol=0
        )
        start, image = start + len(ex), image + k


def test_training_loss_of_packed_equals_per_example_losses():
    model = tiny_model("llama3")
    examples = mixed_examples(model)
    batch, latents = pack(examples, row_length=sum(len(e) for e in examples))
    t = torch.tensor([100.0, 400.0, 700.0, 900.0])
    noise = torch.randn_like(latents)
    with torch.no_grad():
        out = model(batch, latents, timesteps=t, noise=noise)
        image = 0
        for i, ex in enumerate(examples):
            b, lat = collate([ex])
            k = b.num_images
            alone = model(b, lat, timesteps=t[image : image + k], noise=noise[image : image + k])
            torch.testing.assert_close(out.example_loss[i], alone.example_loss[0], atol=1e-5, rtol=1e-5)
            image += k


def test_tied_base_saves_only_trainable_and_tolerates_an_old_alias(tmp_path, caplog):
    """Issue 16: SmolLM2 / Llama-3.2 tie `lm_head.weight` to the frozen `embed_tokens.weight`; the alias is
    never stored, and a folder written before the fix (alias stored) still loads, with a debug log."""
    import logging

    from safetensors.torch import load_file, save_file

    from lmfusion_cli.model import LMFusionModel

    base = tiny_base("smollm")
    assert base.lm_head.weight is base.model.embed_tokens.weight
    base.save_pretrained(tmp_path / "base")
    model = LMFusionModel.from_base(tmp_path / "base", latent_size=8, unet_channels=(16, 32), patcher="linear")
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_trainable(model, tmp_path / "ckpt")
    stored = load_file(str(tmp_path / "ckpt" / WEIGHTS))
    assert set(stored) == {n for n, p in model.named_parameters() if p.requires_grad}

    old = dict(stored, **{"base.lm_head.weight": model.base.lm_head.weight.detach().clone()})
    save_file(old, str(tmp_path / "ckpt" / WEIGHTS))  # what training wrote before the fix
    with caplog.at_level(logging.DEBUG, logger="lmfusion_cli.model.checkpoint"):
        restored = load(tmp_path / "ckpt")
    assert "ignoring base.lm_head.weight" in caplog.text
    assert restored.base.lm_head.weight is restored.base.model.embed_tokens.weight  # still tied
    batch, latents = mixed_batch(model)
    for a, b in zip(_outputs(model, batch, latents), _outputs(restored, batch, latents)):
        assert torch.equal(a, b)

    save_file(dict(stored, **{"base.nonsense.weight": torch.zeros(1)}), str(tmp_path / "ckpt" / WEIGHTS))
    with pytest.raises(UserError, match="has weights this model lacks"):  # anything else is still refused
        load(tmp_path / "ckpt")
