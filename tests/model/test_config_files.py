"""The model config on disk: `lmfusion_model.json` files written before the config became a typed,
generically serialised dataclass (issue 21) still load, into an equal config and identical outputs."""

from __future__ import annotations

import json

import pytest
import torch

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.model import LMFusionModel
from lmfusion_cli.model.checkpoint import META, load, save_trainable

from .helpers import mixed_batch, tiny_base

# `LMFusionConfig.to_dict()` of the code before issue 21 (hand-written: asdict + unet_channels as a list),
# for LMFusionConfig(latent_size=8, unet_channels=(16, 32), patcher="linear", objective="flow", timestep_shift=3.0).
OLD_FILE_CONFIG = {
    "attention_backend": "auto",
    "boi_id": None,
    "dtype": "float32",
    "eoi_id": None,
    "experts": "deep",
    "freeze_text": True,
    "from_scratch": False,
    "image_init": "copy",
    "lambda_image": 5.0,
    "latent_channels": 4,
    "latent_size": 8,
    "noise_schedule": "cosine",
    "num_train_timesteps": 1000,
    "objective": "flow",
    "patch_size": 2,
    "patcher": "linear",
    "timestep_shift": 3.0,
    "understanding_image_loss": "diffusion",
    "understanding_max_timestep_fraction": 0.5,
    "unet_channels": [16, 32],
    "unet_layers_per_block": 1,
}


@pytest.fixture
def saved(tmp_path):
    base = tiny_base("qwen2")
    base.save_pretrained(tmp_path / "base")
    model = LMFusionModel.from_base(
        tmp_path / "base", latent_size=8, unet_channels=(16, 32), patcher="linear", objective="flow", timestep_shift=3.0
    )
    save_trainable(model, tmp_path / "ckpt")
    return model, tmp_path / "ckpt"


def test_a_file_written_by_the_previous_code_loads(saved):
    model, folder = saved
    meta = json.loads((folder / META).read_text())
    # today's writer: the old file's entries, plus the fields added since, each at the value a file without it
    # loads to (`image_position`, issue 23: the old files' learned table)
    added = {k: v for k, v in meta["lmfusion_config"].items() if k not in OLD_FILE_CONFIG}
    assert added == {"image_position": "learned"}
    assert {k: v for k, v in meta["lmfusion_config"].items() if k not in added} == OLD_FILE_CONFIG
    meta["lmfusion_config"] = OLD_FILE_CONFIG
    (folder / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    restored = load(folder)
    assert restored.config == model.config and isinstance(restored.config.unet_channels, tuple)
    batch, latents = mixed_batch(model)
    t = torch.linspace(50, 950, batch.num_images)
    with torch.no_grad():
        a, b = model.forward_segment(batch, latents, t), restored.forward_segment(batch, latents, t)
    assert torch.equal(a.text_logits, b.text_logits) and torch.equal(a.image_prediction, b.image_prediction)


@pytest.mark.parametrize(
    "change,needle",
    [({"objective": "v"}, "objective"), ({"hidden": 3}, "hidden"), ({"patch_size": "2x"}, "patch_size")],
)
def test_a_bad_config_in_the_file_is_one_sentence(saved, change, needle):
    _, folder = saved
    meta = json.loads((folder / META).read_text())
    meta["lmfusion_config"].update(change)
    (folder / META).write_text(json.dumps(meta))
    with pytest.raises(UserError, match=needle) as e:
        load(folder)
    assert str(META) in str(e.value) and "\n" not in str(e.value)


def test_a_model_needs_its_latent_size():
    with pytest.raises(ValueError, match="latent_size"):
        LMFusionModel.from_base(tiny_base(), patcher="linear")
