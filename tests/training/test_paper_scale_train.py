"""`lmfusion train` with everything the GPU configs turn on (issue 22), on 2 gloo processes: FSDP2 with the
bf16 policy, frozen text stored in bf16, every layer checkpointed, packed rows, the base read into each
process's shards, the detached caption prefix."""

from __future__ import annotations

import math

import pytest
from safetensors.torch import load_file
from test_cli_train import lmfusion
from tiny_base import build_tiny_base, write_fake_cache

from lmfusion_cli.common.checkpoint_layout import list_checkpoints
from lmfusion_cli.training.train_log import read_jsonl


@pytest.mark.distributed
def test_two_processes_train_with_the_gpu_config_features(tmp_path):
    base = build_tiny_base(tmp_path / "base")
    cache = write_fake_cache(tmp_path / "latents")
    proc = lmfusion(
        "train",
        "--base",
        str(base),
        "--latents",
        str(cache),
        "--out",
        str(tmp_path / "run"),
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--micro-batch-size",
        "2",
        "--gpus",
        "2",
        "--set",
        "model.patcher=linear",
        "--set",
        "schedule.warmup_steps=1",
        "--set",
        "log.tensorboard=false",
        "--set",
        "log.val_items=2",
        "--set",
        "train.precision=bf16",
        "--set",
        "train.frozen_bf16=true",
        "--set",
        "train.activation_checkpointing=layers",
        "--set",
        "data.seq_len=64",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    losses = [r["loss"] for r in read_jsonl(tmp_path / "run" / "logs" / "train.jsonl") if "event" not in r]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    saved = list_checkpoints(tmp_path / "run" / "checkpoints")[-1].path
    weights = load_file(str(next(saved.rglob("*.safetensors"))))
    assert weights and all(str(w.dtype) == "torch.float32" for w in weights.values())  # fp32 master weights
