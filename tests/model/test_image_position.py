"""`image_position: sincos` (issue 23): DiT's fixed 2-D sine-cosine table under the patchers' learned,
zero-initialised one. The fixed table must follow the tokens' row-major grid (half its features the
column, half the row), reach every patcher, and stay out of checkpoints: rebuilt from the saved config, so
a saved sincos model reloads to the same outputs and a `learned` checkpoint keeps its keys."""

from __future__ import annotations

import json

import pytest
import torch

from lmfusion_cli.model import LMFusionConfig
from lmfusion_cli.model.checkpoint import META, WEIGHTS, load, save_trainable
from lmfusion_cli.model.patchers import fixed_position_table, make_patcher

from .helpers import mixed_batch, tiny_base


def test_table_halves_encode_column_and_row_of_the_row_major_grid():
    side, width = 8, 32
    table = fixed_position_table(side, width, "sincos").reshape(side, side, width)  # [row, column, feature]
    half = width // 2
    # first half: the column only (equal down each column), second half: the row only
    assert torch.allclose(table[:, :, :half], table[:1, :, :half].expand(side, -1, -1))
    assert torch.allclose(table[:, :, half:], table[:, :1, half:].expand(-1, side, -1))
    # both axes use the same 1-D code, so cell (r, c)'s column half equals cell (c, r)'s row half
    assert torch.allclose(table[2, 5, :half], table[5, 2, half:])
    # every cell distinct, position 0 is sin 0 / cos 0
    flat = table.reshape(side * side, width)
    assert torch.cdist(flat, flat).add(torch.eye(side * side) * 1e3).min() > 0.1
    assert torch.allclose(flat[0], torch.cat([torch.zeros(width // 4), torch.ones(width // 4)] * 2))
    assert fixed_position_table(side, width, "learned") is None


@pytest.mark.parametrize("patcher", ["linear", "conv", "unet"])
def test_every_patcher_adds_the_fixed_table_to_its_tokens(patcher):
    common = dict(patcher=patcher, latent_size=16, patch_size=2, unet_channels=(8, 16) if patcher == "unet" else (8,))
    torch.manual_seed(0)
    learned = make_patcher(LMFusionConfig(**common), hidden_size=32).eval()
    torch.manual_seed(0)
    sincos = make_patcher(LMFusionConfig(**common, image_position="sincos"), hidden_size=32).eval()
    latents, t = torch.randn(2, 4, 16, 16), torch.tensor([500.0, 20.0])
    with torch.no_grad():
        difference = sincos.encode(latents, t)[0] - learned.encode(latents, t)[0]
    expected = fixed_position_table(8, 32, "sincos")
    assert torch.allclose(difference, expected.expand(2, -1, -1), atol=1e-5)
    # the learned table is the only position parameter, and it starts at zero
    assert not sincos.position.any() and "fixed_position" not in sincos.state_dict()
    assert "fixed_position" not in dict(sincos.named_parameters())


def test_odd_width_is_refused():
    with pytest.raises(ValueError, match="divisible by 4"):
        make_patcher(LMFusionConfig(patcher="linear", latent_size=8, image_position="sincos"), hidden_size=30)


def test_sincos_model_saves_no_table_and_reloads_to_the_same_outputs(tmp_path):
    from lmfusion_cli.model import LMFusionModel

    tiny_base("llama3").save_pretrained(tmp_path / "base")
    model = LMFusionModel.from_base(tmp_path / "base", latent_size=8, patcher="linear", image_position="sincos")
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_trainable(model, tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / META).read_text())
    assert meta["lmfusion_config"]["image_position"] == "sincos"
    from safetensors.torch import load_file

    assert not any("fixed_position" in k for k in load_file(str(tmp_path / "ckpt" / WEIGHTS)))
    restored = load(tmp_path / "ckpt")
    assert restored.config.image_position == "sincos"
    batch, latents = mixed_batch(model)
    t = torch.linspace(50, 950, batch.num_images)
    with torch.no_grad():
        a, b = model.forward_segment(batch, latents, t), restored.forward_segment(batch, latents, t)
    assert torch.equal(a.image_prediction, b.image_prediction) and torch.equal(a.text_logits, b.text_logits)
