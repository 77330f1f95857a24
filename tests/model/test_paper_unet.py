"""The paper recipe's U-Net patcher has Transfusion's size: 0.27 B parameters ± 10 % (Transfusion,
Zhou et al. 2024, §4: its U-Net down and up blocks add 0.27 B parameters to the 7 B model; LMFusion
uses the same patcher). Counted on the meta device from a written Llama-3-8B config: nothing is
downloaded or allocated."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
import yaml

from lmfusion_cli.common.configs import build_config
from lmfusion_cli.model import LMFusionConfig, LMFusionModel

PAPER = Path(__file__).resolve().parents[2] / "pipelines" / "configs" / "paper-llama3-8b.yaml"
LLAMA3_8B = dict(  # meta-llama/Meta-Llama-3-8B config.json
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    bos_token_id=128000,
    eos_token_id=128001,
    tie_word_embeddings=False,
)


def test_paper_unet_has_transfusions_size():
    section = yaml.safe_load(PAPER.read_text())["model"]
    # 256×256 images through an 8×-down VAE with 8 latent channels (Transfusion's VAE)
    config = build_config(LMFusionConfig, {**section, "latent_size": 32, "latent_channels": 8})
    with torch.device("meta"):
        base = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA3_8B))
        model = LMFusionModel(base, config, "meta-llama/Meta-Llama-3-8B")
    base_params = sum(p.numel() for p in base.parameters())
    unet_params = sum(p.numel() for p in model.patcher.parameters())
    assert 7.9e9 < base_params < 8.1e9  # the written config is Llama-3-8B's
    assert config.patcher == "unet" and abs(unet_params - 0.27e9) <= 0.027e9, unet_params
