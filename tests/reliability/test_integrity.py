"""Issue 12 item 8: checkpoints and latent shards carry the SHA-256 of every file in their manifest, and
a flipped byte is caught when the file is loaded — naming the file — through the CLI (exit 2):

- latent side: `lmfusion train` on a cache whose tensor shard lost a byte (the reader checks each
  shard when it first reads it; `encode-latents --verify` is `tests/data/test_encode.py`), and the
  reader refusing a damaged records file at open;
- checkpoint side: `lmfusion train --resume auto` on a step whose DCP shard lost a byte, and
  `lmfusion sample` on a step whose inference weights lost one."""

from __future__ import annotations

import json

import pytest
import torch
from reliability_helpers import build_tiny_base, cli, error_line, flip_byte, train_args, write_fake_cache

from lmfusion_cli.common.checkpoint_layout import list_checkpoints
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.hashing import sha256_file
from lmfusion_cli.data.latents import open_latent_cache


@pytest.fixture
def run(tmp_path):
    torch.set_num_threads(1)
    base = build_tiny_base(tmp_path / "base")
    cache = write_fake_cache(tmp_path / "lat")
    assert cli(*train_args(base, cache, tmp_path / "run", 1)) == 0
    return base, cache, tmp_path / "run"


def test_every_file_carries_its_sha256(run):
    _, cache, run_dir = run
    for folder in (cache, list_checkpoints(run_dir / "checkpoints")[-1].path):
        manifest = json.loads((folder / "manifest.json").read_text())
        on_disk = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"}
        assert set(manifest["files"]) == on_disk
        for name, entry in manifest["files"].items():
            assert entry["sha256"] == sha256_file(folder / name) and entry["bytes"] == (folder / name).stat().st_size


def test_latent_shard_with_a_flipped_byte_stops_train_naming_it(run, tmp_path, capsys):
    base, cache, _ = run
    flip_byte(cache / "train-00000.safetensors")  # in the tensor data: safetensors itself would not notice
    capsys.readouterr()
    assert cli(*train_args(base, cache, tmp_path / "run2", 1)) == 2
    line = error_line(capsys)
    assert str(cache / "train-00000.safetensors") in line and "SHA-256" in line, line
    assert not list_checkpoints(tmp_path / "run2" / "checkpoints")


def test_latent_records_with_a_flipped_byte_are_refused_at_open(run):
    _, cache, _ = run
    flip_byte(cache / "val-00000.jsonl", offset=10)
    assert len(open_latent_cache(cache, splits="train")) == 12  # the undamaged split still opens
    with pytest.raises(UserError, match="val-00000.jsonl does not match its SHA-256"):
        open_latent_cache(cache, splits="val")


def test_checkpoint_shard_with_a_flipped_byte_stops_the_resume_naming_it(run, capsys):
    base, cache, run_dir = run
    shard = next((run_dir / "checkpoints" / "step-00000001" / "dcp").glob("*.distcp"))
    flip_byte(shard)
    capsys.readouterr()
    assert cli(*train_args(base, cache, run_dir, 2, "--resume", "auto")) == 2
    line = error_line(capsys)
    assert str(shard) in line and "SHA-256" in line, line
    assert [c.step for c in list_checkpoints(run_dir / "checkpoints")] == [1]


def test_checkpoint_weights_with_a_flipped_byte_stop_sample_naming_them(run, tmp_path, capsys):
    _, _, run_dir = run
    weights = run_dir / "checkpoints" / "step-00000001" / "model" / "model.safetensors"
    flip_byte(weights)
    capsys.readouterr()
    assert cli("sample", "--checkpoint", run_dir, "--prompt", "a red circle", "--out", tmp_path / "samples") == 2
    line = error_line(capsys)
    assert str(weights) in line and "SHA-256" in line, line
