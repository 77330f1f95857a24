"""Issue 12 item 7: inputs that do not fit are refused through the CLI with one sentence and exit 2.

- `lmfusion train --resume auto` after the latent cache was re-encoded in place with another VAE,
  scale, shift, resolution or channel count, or after the base folder was replaced by a base with
  another config (the checkpoint's `trainer.json` records what it was trained on; the comparison runs
  before any tensor is loaded, so a shape change is a sentence, not a DCP traceback);
- the same cache re-encoded with the *same* VAE found at another path still resumes (no over-refusal);
- `lmfusion sample --checkpoint RUN --base OTHER` with a base of another config.
(The latent reader's own checks of VAE/scale/shift/resolution/channels against an expectation are
`tests/data/test_encode.py::test_other_vae_or_settings_refused_naming_both`.)"""

from __future__ import annotations

import shutil

import pytest
import torch
from reliability_helpers import build_tiny_base, cli, error_line, set_vae, train_args, write_fake_cache

from lmfusion_cli.common.checkpoint_layout import list_checkpoints
from lmfusion_cli.training.train_log import read_jsonl


@pytest.fixture
def inputs(tmp_path):
    """A base, a latent cache and a 1-step run on them, at the paths the run records."""
    torch.set_num_threads(1)
    base = build_tiny_base(tmp_path / "base")
    cache = write_fake_cache(tmp_path / "lat")
    run = tmp_path / "run"
    assert cli(*train_args(base, cache, run, 1)) == 0
    assert [c.step for c in list_checkpoints(run / "checkpoints")] == [1]
    return base, cache, run


def _replace_cache(cache, shape):
    shutil.rmtree(cache)
    write_fake_cache(cache, shape=shape)


CHANGES = {
    "another-vae": (
        lambda base, cache: set_vae(cache, id="other-vae", weights_sha256="1" * 64, config_hash="2" * 64),
        ["another VAE", "'fake-vae' then, 'other-vae' now"],
    ),
    "scale": (lambda base, cache: set_vae(cache, scaling_factor=0.5), ["another VAE", "scaling_factor 1.0 → 0.5"]),
    "shift": (lambda base, cache: set_vae(cache, shift_factor=0.1), ["another VAE", "shift_factor 0.0 → 0.1"]),
    "resolution": (
        lambda base, cache: _replace_cache(cache, (4, 4, 4)),
        ["latent size (the cache's resolution) changed from 8 to 4"],
    ),
    "channels": (lambda base, cache: _replace_cache(cache, (8, 8, 8)), ["another VAE", "latent_channels 4 → 8"]),
    "base-config": (
        lambda base, cache: (shutil.rmtree(base), _other_config_base(base)),
        ["the base model's config hash changed"],
    ),
}


def _other_config_base(folder):
    from transformers import LlamaConfig, LlamaForCausalLM

    build_tiny_base(folder)  # the same tokenizer, then weights of another shape
    config = LlamaConfig.from_pretrained(folder)
    config.intermediate_size = 48
    LlamaForCausalLM(config).save_pretrained(folder)


@pytest.mark.parametrize("change", list(CHANGES))
def test_resume_with_changed_inputs_is_one_sentence_exit_2(inputs, capsys, change):
    base, cache, run = inputs
    mutate, expected = CHANGES[change]
    mutate(base, cache)
    capsys.readouterr()
    assert cli(*train_args(base, cache, run, 2, "--resume", "auto")) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: Cannot resume from {run / 'checkpoints' / 'step-00000001'}: "), line
    for words in expected:
        assert words in line, line
    assert [c.step for c in list_checkpoints(run / "checkpoints")] == [1]  # nothing trained or saved


def test_same_vae_at_another_path_still_resumes(inputs):
    base, cache, run = inputs
    set_vae(cache, id="/elsewhere/the-same-vae")  # same weights and config hashes: the same VAE
    assert cli(*train_args(base, cache, run, 2, "--resume", "auto")) == 0
    assert [r["step"] for r in read_jsonl(run / "logs" / "train.jsonl") if r.get("event") == "resume"] == [1]
    assert [c.step for c in list_checkpoints(run / "checkpoints")] == [1, 2]


def test_sample_with_a_base_of_another_config_is_one_sentence_exit_2(inputs, tmp_path, capsys):
    base, _, run = inputs
    other = tmp_path / "other-base"
    _other_config_base(other)
    capsys.readouterr()
    assert (
        cli(
            "sample",
            "--checkpoint",
            run,
            "--base",
            other,
            "--prompt",
            "a red circle",
            "--steps",
            1,
            "--out",
            tmp_path / "samples",
        )
        == 2
    )
    line = error_line(capsys)
    assert "was trained on a base model with a different config" in line and str(base) in line, line
    assert not (tmp_path / "samples").exists()
