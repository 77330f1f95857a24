"""The CLI surface: five subcommands, working --help everywhere, one-sentence errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lmfusion_cli import __version__

COMMANDS = ["prepare", "encode-latents", "train", "sample", "evaluate"]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lmfusion_cli", *args], capture_output=True, text=True, timeout=120, env=env
    )


@pytest.fixture(scope="module")
def top_help() -> str:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_help_lists_the_five_subcommands(top_help):
    for cmd in COMMANDS:
        assert cmd in top_help


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"lmfusion {__version__}"


def test_every_subcommand_help_works_and_has_examples():
    from typer.testing import CliRunner

    from lmfusion_cli.cli import app

    runner = CliRunner()
    for cmd in COMMANDS:
        result = runner.invoke(app, [cmd, "--help"])
        assert result.exit_code == 0, (cmd, result.output)
        assert "--config" in result.output and "--set" in result.output, cmd


def _assert_one_sentence_exit_2(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_unknown_config_key_exit_2(tmp_path):
    result = run_cli("prepare", "--source", "shapes", "--out", str(tmp_path / "o"), "--set", "num_itemz=3")
    _assert_one_sentence_exit_2(result, "num_itemz")


def test_wrong_type_exit_2(tmp_path):
    result = run_cli("prepare", "--source", "shapes", "--out", str(tmp_path / "o"), "--set", "num_items=many")
    _assert_one_sentence_exit_2(result, "num_items", "integer")


def test_unknown_key_in_yaml_exit_2(tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("source: shapes\nseeed: 3\n")
    result = run_cli("prepare", "--config", str(cfg), "--out", str(tmp_path / "o"))
    _assert_one_sentence_exit_2(result, "seeed")


def test_verbose_shows_traceback_for_user_error(tmp_path):
    result = run_cli("--verbose", "prepare", "--source", "shapes", "--out", str(tmp_path / "o"), "--set", "x=1")
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_missing_source_folder_exit_2(tmp_path):
    result = run_cli(
        "prepare", "--source", "folder", "--input", str(tmp_path / "missing"), "--out", str(tmp_path / "o")
    )
    _assert_one_sentence_exit_2(result, "missing")
