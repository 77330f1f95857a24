"""Shared helpers of the reliability tests that run the real LMFusion workload through the CLI.

A tiny random Llama base and a fake latent cache on disk (from `tests/training/tiny_base.py`), a
training run made by `lmfusion train` in this process, and the CLI's exit code and error line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "training"))
from tiny_base import build_tiny_base, cli, write_fake_cache  # noqa: E402

__all__ = ["build_tiny_base", "write_fake_cache", "cli", "error_line", "train_args", "flip_byte", "set_vae"]


def error_line(capsys: pytest.CaptureFixture) -> str:
    """The one `error: ...` line the CLI printed (asserting it is one sentence and the last line)."""
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and err[-1] == errors[0], err[-5:]
    assert errors[0].count(". ") == 0 and "Traceback" not in "\n".join(err), errors[0]
    return errors[0]


def train_args(base: Path, latents: Path, out: Path, steps: int, *extra, save_every: int = 1) -> list:
    """`lmfusion train` arguments for a tiny single-process run saving every `save_every` steps."""
    return [
        "train",
        "--base",
        base,
        "--latents",
        latents,
        "--out",
        out,
        "--steps",
        steps,
        "--batch-size",
        2,
        "--micro-batch-size",
        2,
        "--save-every",
        save_every,
        "--strategy",
        "none",
        "--set",
        "model.patcher=linear",
        "--set",
        "schedule.warmup_steps=1",
        "--set",
        "log.tensorboard=false",
        "--set",
        "data.val_split=null",
        "--set",
        "train.threads=1",
        *extra,
    ]


def flip_byte(path: Path, offset: int = -5) -> None:
    """Flip every bit of one byte of `path` in place (its size stays the same)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def set_vae(cache: Path, **fields) -> None:
    """Rewrite the VAE record of a latent cache's manifest (as if re-encoded with another VAE)."""
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["vae"].update(fields)
    (cache / "manifest.json").write_text(json.dumps(manifest))
