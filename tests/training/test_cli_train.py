"""`lmfusion train` end to end: the torchrun re-launch (--gpus 2, gloo, FSDP2) on a latent cache on
disk, and a bad input answered with one sentence and exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tiny_base import build_tiny_base, write_fake_cache

from lmfusion_cli.common.checkpoint_layout import list_checkpoints
from lmfusion_cli.training.train_log import read_jsonl


def lmfusion(*args, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LMFUSION_QUIET": "1"}
    return subprocess.run(
        [sys.executable, "-m", "lmfusion_cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.distributed
def test_gpus_2_relaunches_under_torchrun_and_trains(tmp_path):
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
        "1",
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
        "--save-every",
        "1",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "train done: step 2" in proc.stdout
    saved = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [c.step for c in saved] == [1, 2]
    assert json.loads((saved[-1].path / "trainer.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in (saved[-1].path / "rng").iterdir()) == ["rank-00000.pt", "rank-00001.pt"]
    records = read_jsonl(tmp_path / "run" / "logs" / "train.jsonl")
    assert [r["step"] for r in records if "event" not in r] == [1, 2]
    assert any(r.get("event") == "val" for r in records)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["kind"] == "training-run" and manifest["step"] == 2


def test_bad_input_is_one_sentence_and_exit_2(tmp_path):
    proc = lmfusion("train", "--base", "tiny", "--latents", str(tmp_path / "missing"), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing" in lines[0], proc.stderr


def test_readme_resume_examples_change_only_keys_a_resume_may_change():
    """Issue 17: the README's `--resume auto --set optim.lr=3e-4` example was refused by its own rule."""
    from pathlib import Path

    from lmfusion_cli.training.config import RESUME_FIXED_KEYS

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    examples = [line for line in readme.splitlines() if "--resume auto" in line and "--set" in line]
    assert examples
    for line in examples:
        keys = [word.split("=")[0] for word in line.split("--set")[1:] for word in [word.split()[0]]]
        fixed = [k for k in keys if any(k == f or k.startswith(f + ".") for f in RESUME_FIXED_KEYS)]
        assert not fixed, (line, fixed)
