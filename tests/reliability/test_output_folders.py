"""Issue 17 breaks 3 and 4 and the `--out` that is a file: one writer per output folder, and no stage
writes over another stage's artifact.

- a second `train` on the same `--out`, started while the first runs, is refused in one line naming
  the holder (PID and host); the first finishes with its full log;
- every stage that writes a folder takes the same lock;
- `train --out` on a latent cache or a shards folder is refused and the folder is left byte-identical;
- an `--out` that is a file is one `error:` line with exit 2 for every stage."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "training"))
from reliability_helpers import cli, error_line, write_fake_cache  # noqa: E402
from toy_workload import make_config, toy_factories  # noqa: E402

from lmfusion_cli.common.errors import UserError  # noqa: E402
from lmfusion_cli.common.output_folder import lock_path, output_lock  # noqa: E402
from lmfusion_cli.training.loop import run_training  # noqa: E402
from lmfusion_cli.training.train_log import read_jsonl  # noqa: E402

RUNNER = Path(__file__).with_name("train_toy_run.py")
SECTIONS = {"schedule": {"steps": 8, "warmup_steps": 2, "min_lr": 1e-4}, "train": {"save_every": 2, "keep_last": 1}}


def test_a_concurrent_second_train_is_refused_and_the_first_finishes_whole(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        [sys.executable, str(RUNNER), str(out), json.dumps(SECTIONS), "0.5"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (out / "logs" / "train.jsonl").is_file():
        assert first.poll() is None, first.stderr.read()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(UserError, match=rf"is being written by pid {first.pid} on {socket.gethostname()}"):
        run_training(
            make_config(out, schedule=SECTIONS["schedule"], train={**SECTIONS["train"], "resume": "auto"}),
            *toy_factories(),
        )
    assert first.wait(timeout=180) == 0, first.stderr.read()[-3000:]
    steps = [r["step"] for r in read_jsonl(out / "logs" / "train.jsonl") if "event" not in r]
    assert steps == list(range(1, 9))  # every record of the first run, nothing from the second
    # the lock went with its holder: a rerun may take it
    with output_lock(out, "train"):
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()


@pytest.mark.parametrize("command", ["prepare", "encode-latents", "sample", "evaluate"])
def test_every_stage_takes_the_lock_of_its_output_folder(tmp_path, capsys, command):
    """While this process holds `out`'s lock, the stage refuses in one line before reading its inputs."""
    out = tmp_path / "out"
    args = {
        "prepare": ["prepare", "--source", "shapes", "--num-items", 4, "--resolution", 8, "--out", out],
        "encode-latents": ["encode-latents", "--data", tmp_path / "shards", "--out", out, "--vae", "tiny"],
        "sample": ["sample", "--checkpoint", tmp_path / "nothing", "--prompt", "a", "--out", out],
        "evaluate": ["evaluate", "--checkpoint", tmp_path / "nothing", "--suite", "text", "--out", out],
    }[command]
    if command == "encode-latents":
        assert (
            cli("prepare", "--source", "shapes", "--num-items", 4, "--resolution", 8, "--out", tmp_path / "shards") == 0
        )
    with output_lock(out, "test-holder"):
        capsys.readouterr()
        assert cli(*args) == 2
        assert f"is being written by pid {os.getpid()}" in error_line(capsys)


@pytest.mark.parametrize("artifact", ["latents", "shards"])
def test_train_out_on_another_stages_artifact_is_refused_untouched(tmp_path, capsys, artifact):
    if artifact == "latents":
        folder = write_fake_cache(tmp_path / "lat")
    else:
        folder = tmp_path / "shards"
        assert cli("prepare", "--source", "shapes", "--num-items", 4, "--resolution", 8, "--out", folder) == 0
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    capsys.readouterr()
    code = cli(
        "train",
        "--base",
        "tiny",
        "--latents",
        write_fake_cache(tmp_path / "cache"),
        "--out",
        folder,
        "--steps",
        1,
        "--strategy",
        "none",
    )
    assert code == 2
    assert "artifact of another stage" in error_line(capsys)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("command", ["train", "prepare", "encode-latents", "sample", "evaluate"])
def test_an_out_that_is_a_file_is_one_line(tmp_path, capsys, command):
    out = tmp_path / "a-file"
    out.write_text("not a folder")
    args = {
        "train": ["train", "--base", "tiny", "--latents", tmp_path, "--out", out, "--steps", 1],
        "prepare": ["prepare", "--source", "shapes", "--num-items", 4, "--out", out],
        "encode-latents": ["encode-latents", "--data", tmp_path / "shards", "--out", out, "--vae", "tiny"],
        "sample": ["sample", "--checkpoint", tmp_path, "--prompt", "a", "--out", out],
        "evaluate": ["evaluate", "--checkpoint", tmp_path, "--suite", "text", "--out", out],
    }[command]
    if command == "encode-latents":
        assert (
            cli("prepare", "--source", "shapes", "--num-items", 4, "--resolution", 8, "--out", tmp_path / "shards") == 0
        )
    capsys.readouterr()
    assert cli(*args) == 2
    assert "is a file" in error_line(capsys)
    assert out.read_text() == "not a folder"
