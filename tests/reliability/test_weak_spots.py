"""Issue 17 weak spots made clear behaviour: a kill before the first checkpoint leaves no duplicate
step-0 validation record; `--overwrite` writes the new output beside the old one and swaps, so a kill
leaves the old output whole; `encode-latents` checks each shard's SHA-256 from prepare's manifest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "training"))
from reliability_helpers import cli  # noqa: E402
from toy_workload import make_config, toy_factories  # noqa: E402

from lmfusion_cli.common.manifest import verify_files  # noqa: E402
from lmfusion_cli.training.loop import run_training  # noqa: E402
from lmfusion_cli.training.train_log import read_jsonl  # noqa: E402

RUNNER = Path(__file__).with_name("train_toy_run.py")


def test_a_kill_before_the_first_checkpoint_leaves_one_step_0_validation(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    sections = {"data": {"val_split": "val"}, "train": {"save_every": 2, "keep_last": 1}}
    proc = subprocess.Popen(
        [sys.executable, str(RUNNER), str(out), json.dumps(sections), "3.0"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "step-00000002.tmp-write").is_dir():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [r for r in read_jsonl(out / "logs" / "train.jsonl") if r.get("event") == "val"]  # the killed run's
    run_training(make_config(out, **sections, log={"tensorboard": False, "val_items": 4}), *toy_factories())
    records = read_jsonl(out / "logs" / "train.jsonl")
    assert [r["step"] for r in records if r.get("event") == "val"].count(0) == 1
    steps = [r["step"] for r in records if "event" not in r]
    assert steps == sorted(set(steps))  # every training step once


def _prepare(out: Path, num_items: int, *extra) -> list:
    return [
        "prepare",
        "--source",
        "shapes",
        "--num-items",
        num_items,
        "--resolution",
        8,
        "--shard-size",
        4,
        "--out",
        out,
        *extra,
    ]


def test_a_kill_during_overwrite_leaves_the_old_output_whole(tmp_path):
    out = tmp_path / "shards"
    assert cli(*_prepare(out, 12)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    cmd = [sys.executable, "-m", "lmfusion_cli", *map(str, _prepare(out, 400, "--overwrite", "--resolution", 64))]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(".tmp-overwrite" in p.name and any(p.glob("*.tar")) for p in tmp_path.iterdir()):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # untouched
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and verify_files(out, manifest) == []
    assert cli(*_prepare(out, 12, "--overwrite", "--seed", 1)) == 0  # the rerun cleans up and swaps
    assert json.loads((out / "manifest.json").read_text())["seed"] == 1
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_encode_latents_checks_each_shard_against_prepares_manifest(tmp_path):
    shards = tmp_path / "shards"
    assert cli(*_prepare(shards, 8)) == 0
    tar = next(iter(sorted(shards.glob("train-*.tar"))))
    members = []
    with tarfile.open(tar) as t:
        for m in t.getmembers():
            members.append((m, t.extractfile(m).read()))
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as t:  # one caption byte changed, same size
        for m, data in members:
            if m.name.endswith(".txt"):
                data = bytes([data[0] ^ 0x20]) + data[1:]
            import io

            t.addfile(m, io.BytesIO(data))
    assert (
        cli("encode-latents", "--data", shards, "--out", tmp_path / "lat", "--vae", "lmfusion_cli/assets/tiny-vae") == 0
    )
    manifest = json.loads((tmp_path / "lat" / "manifest.json").read_text())
    assert manifest["counts"]["skipped"] == {"damaged-shard": 1}  # skipped whole and counted, never trained on
    assert [i["key"] for i in manifest["skipped_items"]] == [tar.name]


@pytest.mark.parametrize("flag", ["--overwrite"])
def test_overwrite_of_a_finished_encode_swaps_whole(tmp_path, flag):
    shards = tmp_path / "shards"
    assert cli(*_prepare(shards, 8)) == 0
    vae = "lmfusion_cli/assets/tiny-vae"
    assert cli("encode-latents", "--data", shards, "--out", tmp_path / "lat", "--vae", vae) == 0
    assert (
        cli("encode-latents", "--data", shards, "--out", tmp_path / "lat", "--vae", vae, "--dtype", "fp32", flag) == 0
    )
    assert json.loads((tmp_path / "lat" / "manifest.json").read_text())["dtype"] == "fp32"
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_evaluate_overwrite_builds_beside_and_a_failure_keeps_the_old_one(tmp_path, monkeypatch):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "evaluation"))
    from fake_run import build_fake_run

    from lmfusion_cli.evaluation import stage

    run = build_fake_run(tmp_path / "fake")
    items = tmp_path / "mc.jsonl"
    items.write_text(
        '{"id": "q", "context": "a red circle on a", "choices": ["blue background", "left"], "label": 0}\n'
    )
    out = tmp_path / "eval"
    args = ["evaluate", "--suite", "text", "--checkpoint", run, "--text-items", items, "--out", out]
    assert cli(*args) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def killed(*a, **k):
        raise KeyboardInterrupt  # the process dies after the new evaluation started writing

    monkeypatch.setattr(stage, "_write_results", killed)
    assert cli(*args, "--overwrite") == 130
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    monkeypatch.undo()
    assert cli(*args, "--overwrite") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["config"]["out"] == str(out)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
