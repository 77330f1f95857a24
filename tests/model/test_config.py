"""LMFusionConfig validation and from_base option handling."""

from __future__ import annotations

import pytest

from lmfusion_cli.common.configs import build_config, config_to_dict
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.model import LMFusionConfig, LMFusionModel

from .helpers import tiny_base


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"latent_size": 7}, "latent_size"),
        ({"patch_size": 3}, "patch_size"),
        ({"unet_channels": (16, 32, 64)}, "unet_channels"),
        ({"objective": "v"}, "objective"),
        ({"experts": "moe"}, "experts"),
        ({"attention_backend": "flash"}, "attention_backend"),
        ({"lambda_image": -1.0}, "lambda_image"),
        ({"understanding_max_timestep_fraction": 1.5}, "understanding_max_timestep_fraction"),
        ({"boi_id": 3}, "boi_id"),
    ],
)
def test_invalid_values_name_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        LMFusionConfig(**{"latent_size": 8, **changes})


def test_defaults_follow_the_paper():
    c = LMFusionConfig(latent_size=32)
    assert (c.image_init, c.patcher, c.patch_size, c.objective, c.noise_schedule) == (
        "copy",
        "unet",
        2,
        "ddpm-eps",
        "cosine",
    )
    assert (c.num_train_timesteps, c.lambda_image, c.experts, c.freeze_text) == (1000, 5.0, "deep", True)
    assert c.num_image_tokens == 256
    assert LMFusionConfig(latent_size=32, patch_size=4, unet_channels=(8, 16, 32)).num_image_tokens == 64
    assert build_config(LMFusionConfig, config_to_dict(c)) == c
    with pytest.raises(UserError, match="Unknown config key 'hidden'"):
        build_config(LMFusionConfig, {**config_to_dict(c), "hidden": 3})


def test_from_base_takes_a_config_or_overrides():
    config = LMFusionConfig(latent_size=8, unet_channels=(16, 32), patcher="linear")
    a = LMFusionModel.from_base(tiny_base(), config)
    b = LMFusionModel.from_base(tiny_base(), config, objective="flow")
    c = LMFusionModel.from_base(tiny_base(), latent_size=8, patcher="linear")
    assert a.config is config and b.config.objective == "flow" and c.config.patcher == "linear"
    assert a.base_config.hidden_size == 32 and a.num_image_tokens == 16


def test_non_llama_layout_is_refused_in_one_sentence():
    from transformers import GPT2Config, GPT2LMHeadModel

    from lmfusion_cli.common.errors import UserError

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(UserError, match="not a Llama-layout"):
        LMFusionModel.from_base(gpt2, latent_size=8)


def test_sequences_longer_than_a_sliding_window_are_refused():
    import torch

    model = LMFusionModel.from_base(tiny_base("mistral", sliding_window=8), latent_size=8, patcher="linear")
    assert model.sliding_window == 8
    model.text_logits(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]]))
    with pytest.raises(ValueError, match="sliding window"):
        model.text_logits(torch.tensor([list(range(1, 10))]))
