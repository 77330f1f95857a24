"""BOI/EOI rows in checkpoints: new rows (ids V, V+1) save and load with their own weights, on a tied
base too; a legacy checkpoint that reused reserved ids loads unchanged; a checkpoint lacking a
trainable weight of the model is refused in one sentence naming it."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.model import LMFusionModel
from lmfusion_cli.model.checkpoint import WEIGHTS, load, save_trainable

from .helpers import VOCAB, mixed_batch, tiny_base


def _saved(tmp_path, layout, **options):
    base = tiny_base(layout)
    base.save_pretrained(tmp_path / "base")
    model = LMFusionModel.from_base(tmp_path / "base", latent_size=8, patcher="linear", **options)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_trainable(model, tmp_path / "ckpt")
    return model


def _same_outputs(a, b):
    batch, latents = mixed_batch(a)
    t = torch.linspace(50, 950, batch.num_images)
    with torch.no_grad():
        x, y = a.forward_segment(batch, latents, t), b.forward_segment(batch, latents, t)
    return torch.equal(x.text_logits, y.text_logits) and torch.equal(x.image_prediction, y.image_prediction)


@pytest.mark.parametrize("layout", ["llama3", "smollm"])
def test_new_rows_round_trip_and_stay_apart_from_the_head(tmp_path, layout):
    model = _saved(tmp_path, layout)
    assert (model.boi_id, model.eoi_id) == (VOCAB, VOCAB + 1) and model.special_head.requires_grad
    assert model.special_head.data_ptr() != model.base.get_output_embeddings().weight.data_ptr()
    stored = load_file(str(tmp_path / "ckpt" / WEIGHTS))
    assert {"special_embed", "special_head"} <= set(stored)
    restored = load(tmp_path / "ckpt")
    assert _same_outputs(model, restored)
    if layout == "smollm":  # tied base: the head is still the embedding table, untouched
        assert restored.base.get_output_embeddings().weight is restored.base.model.embed_tokens.weight


def test_new_rows_start_at_the_mean_rows():
    base = tiny_base("llama3")
    model = LMFusionModel.from_base(base, latent_size=8, patcher="linear")
    mean_embed = base.model.embed_tokens.weight.detach().mean(0)
    mean_head = base.lm_head.weight.detach().mean(0)
    assert torch.equal(model.special_embed.detach(), mean_embed.expand(2, -1))
    assert torch.equal(model.special_head.detach(), mean_head.expand(2, -1))


def test_legacy_reserved_ids_load_unchanged(tmp_path):
    model = _saved(tmp_path, "llama3", boi_id=90, eoi_id=91)
    restored = load(tmp_path / "ckpt")
    assert (restored.boi_id, restored.eoi_id) == (90, 91) and restored.special_head is None
    assert _same_outputs(model, restored)


def test_missing_trainable_weight_is_refused(tmp_path):
    _saved(tmp_path, "llama3")
    path = tmp_path / "ckpt" / WEIGHTS
    state = load_file(str(path))
    del state["special_head"]
    save_file(state, str(path))
    with pytest.raises(UserError, match=r"lacks trainable weights the model has \(special_head\)") as e:
        load(tmp_path / "ckpt")
    assert "\n" not in str(e.value)


def test_trainable_tied_base_round_trips(tmp_path):
    """Unfrozen tied embeddings: one weight under two names is stored once and is not reported missing."""
    model = _saved(tmp_path, "smollm", freeze_text=False)
    restored = load(tmp_path / "ckpt")
    assert _same_outputs(model, restored)
