"""Issue 17 break 2: one long caption cannot exhaust memory. Training cuts every caption to what
fits the base's positions (or `data.max_caption_tokens`), so a 50 KB caption makes a row no longer
than the model's positions; `sample` refuses a prompt that cannot fit beside an image, in one line.
(`prepare` cuts and counts captions too: tests/data/test_hostile_inputs.py.)"""

from __future__ import annotations

import json

import torch
from reliability_helpers import build_tiny_base, cli, error_line, set_vae, train_args, write_fake_cache

from lmfusion_cli.common.configs import build_config
from lmfusion_cli.common.manifest import file_entry
from lmfusion_cli.training.config import TrainRunConfig
from lmfusion_cli.training.loader import Sample

LONG = " ".join(["red"] * 12_800)  # 51 KB, 12,800 tokens of the tiny word-level tokenizer


def with_long_caption(cache):
    rows = (cache / "train-00000.jsonl").read_text().splitlines()
    first = json.loads(rows[0])
    first["caption"] = LONG
    (cache / "train-00000.jsonl").write_text("\n".join([json.dumps(first), *rows[1:]]) + "\n")
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["files"]["train-00000.jsonl"] = file_entry(cache / "train-00000.jsonl")
    (cache / "manifest.json").write_text(json.dumps(manifest))
    return cache


def test_a_50kb_caption_makes_a_row_no_longer_than_the_positions(tmp_path):
    from lmfusion_cli.data.latents import open_latent_cache
    from lmfusion_cli.training.lmfusion_workload import build_lmfusion_workload

    base, cache = build_tiny_base(tmp_path / "base"), with_long_caption(write_fake_cache(tmp_path / "lat"))
    config = build_config(
        TrainRunConfig,
        {
            "base": {"path": str(base)},
            "data": {"latents": str(cache)},
            "train": {"out": str(tmp_path / "run")},
            "model": {"patcher": "linear"},
        },
    )
    workload = build_lmfusion_workload(config, open_latent_cache(str(cache), splits="train"), torch.device("cpu"))
    latent = torch.zeros(4, 8, 8)
    for task in ("generation", "understanding"):
        micro = workload.make_micro_batch([Sample("k", task, LONG, latent, 0, 0)], torch.device("cpu"))
        batch = micro.inputs.batch
        assert batch.input_ids.shape[-1] <= 256  # the tiny base's max_position_embeddings (was 12,820)
    assert workload.captions_cut == 2

    small = build_config(
        TrainRunConfig,
        {
            "base": {"path": str(base)},
            "train": {"out": str(tmp_path / "r2")},
            "data": {"latents": str(cache), "max_caption_tokens": 10},
            "model": {"patcher": "linear"},
        },
    )
    workload = build_lmfusion_workload(small, open_latent_cache(str(cache), splits="train"), torch.device("cpu"))
    assert workload.caption_budget == 10


def test_training_on_a_cache_with_a_50kb_caption_runs(tmp_path):
    base, cache = build_tiny_base(tmp_path / "base"), with_long_caption(write_fake_cache(tmp_path / "lat"))
    assert cli(*train_args(base, cache, tmp_path / "run", 2)) == 0


def test_sample_refuses_a_prompt_longer_than_the_positions_in_one_line(tmp_path, capsys):
    from lmfusion_cli.assets import TINY_VAE
    from lmfusion_cli.common.vae import load_vae, weights_sha256

    base, cache = build_tiny_base(tmp_path / "base"), write_fake_cache(tmp_path / "lat")
    set_vae(cache, id=str(TINY_VAE), weights_sha256=weights_sha256(load_vae(str(TINY_VAE))))  # a VAE that loads
    assert cli(*train_args(base, cache, tmp_path / "run", 1)) == 0
    capsys.readouterr()
    assert cli("sample", "--checkpoint", tmp_path / "run", "--prompt", LONG, "--out", tmp_path / "s", "--steps", 2) == 2
    assert "Prompt 1 is 12800 tokens" in error_line(capsys)
    assert not (tmp_path / "s").exists()
