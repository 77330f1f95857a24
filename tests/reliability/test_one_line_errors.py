"""Issue 17 break 8: where a traceback (or click's 4-line block) was printed, one `error:` line with
exit code 2: unknown options, bad ints, unknown commands, a binary `-c` config, a binary
`--text-items` file, and `sample --checkpoint STEP/model` of a half-written or manifest-less step."""

from __future__ import annotations

import os
import shutil

import pytest
from reliability_helpers import build_tiny_base, cli, error_line, train_args, write_fake_cache


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--stepz", "3"], "No such option: --stepz"),
        (["train", "--steps", "abc"], "Invalid value for '--steps'"),
        (["prepare", "--num-items", "1.5", "--out", "x"], "Invalid value for '--num-items'"),
        (["bogus-command"], "No such command"),
    ],
)
def test_click_usage_errors_are_one_line_exit_2(capsys, args, needle):
    assert cli(*args) == 2
    line = error_line(capsys)
    assert needle in line and "--help" in line


def test_a_binary_config_file_is_one_line(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_bytes(os.urandom(64) + b"\xff\xfe\x00")
    assert cli("prepare", "-c", config, "--out", tmp_path / "o") == 2
    assert "is not UTF-8 text" in error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_a_binary_text_items_file_is_one_line(tmp_path, capsys):
    items = tmp_path / "items.jsonl"
    items.write_bytes(b"\xff\xfe\x00\x81" * 40 + b"\n" + b"\x80\x81" * 10)
    assert (
        cli("evaluate", "--checkpoint", tmp_path, "--suite", "text", "--text-items", items, "--out", tmp_path / "o")
        == 2
    )
    assert "items.jsonl" in error_line(capsys)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("one-line")
    base, cache, out = build_tiny_base(root / "base"), write_fake_cache(root / "lat"), root / "run"
    assert cli(*train_args(base, cache, out, 1)) == 0
    return out


def test_sample_from_a_half_written_step_is_one_line(run, tmp_path, capsys):
    half = tmp_path / "checkpoints" / "step-00000002.tmp-write"
    shutil.copytree(run / "checkpoints" / "step-00000001", half)
    (half / "manifest.json").unlink()
    weights = half / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # cut mid-write
    capsys.readouterr()
    assert cli("sample", "--checkpoint", half / "model", "--prompt", "a red circle", "--out", tmp_path / "s") == 2
    assert "is an unfinished checkpoint" in error_line(capsys)

    no_manifest = tmp_path / "checkpoints" / "step-00000003"
    half.rename(no_manifest)  # under a final name, but no manifest (a copy cut by hand)
    assert (
        cli("sample", "--checkpoint", no_manifest / "model", "--prompt", "a red circle", "--out", tmp_path / "s") == 2
    )
    assert "has no manifest.json" in error_line(capsys)
    assert not (tmp_path / "s").exists()
