"""Issue 12 item 1 (+ issue 7's kill -9 resume): SIGKILL the training process while a checkpoint is
being written — once as soon as its temporary folder appears, once after some of its files are
written. The restart resumes from the last complete step, no partial folder ever carries a final
name, retention never deletes the only complete checkpoint, and the finished run's per-step losses
and weights equal an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "training"))
from toy_workload import make_config, toy_factories  # noqa: E402

from lmfusion_cli.common.checkpoint_layout import is_complete, list_checkpoints  # noqa: E402
from lmfusion_cli.training.loop import run_training  # noqa: E402
from lmfusion_cli.training.train_log import read_jsonl  # noqa: E402

RUNNER = Path(__file__).with_name("train_toy_run.py")
SECTIONS = {
    "schedule": {"steps": 8, "warmup_steps": 2, "min_lr": 1e-4},
    "data": {"generation_fraction": 0.5},
    "train": {"save_every": 2, "keep_last": 1, "deterministic": True},
}


def start(out: Path, save_delay: float) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(RUNNER), str(out), json.dumps(SECTIONS), str(save_delay)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"training ended before the kill point: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def final_named_folders_are_complete(root: Path) -> bool:
    return all(is_complete(p) for p in root.glob("step-*") if ".tmp-" not in p.name)


def test_kill_during_checkpoint_write_then_resume(tmp_path):
    torch.set_num_threads(1)
    run_training(make_config(tmp_path / "straight", **SECTIONS), *toy_factories())
    out, root = tmp_path / "run", tmp_path / "run" / "checkpoints"

    # 1. as soon as the first checkpoint's temporary folder exists: nothing complete yet
    proc = start(out, save_delay=2.0)
    kill_when(proc, lambda: (root / "step-00000002.tmp-write").is_dir())
    assert list_checkpoints(root) == [] and final_named_folders_are_complete(root)

    # 2. the restart removes the debris, redoes steps 1-2, saves step 2; killed once step 4's shards
    #    and inference weights are written but its manifest is not (the workload sleeps there)
    proc = start(out, save_delay=2.0)
    kill_when(proc, lambda: (root / "step-00000004.tmp-write" / "model" / "trainable.safetensors").is_file())
    assert [c.step for c in list_checkpoints(root)] == [2]  # keep_last=1 never removed the only one
    assert (root / "step-00000004.tmp-write" / "dcp" / ".metadata").is_file()
    assert final_named_folders_are_complete(root)

    # 3. the restart resumes from step 2 and finishes
    proc = start(out, save_delay=0.0)
    assert proc.wait(timeout=180) == 0, proc.stderr.read()[-3000:]
    assert [c.step for c in list_checkpoints(root)] == [8]
    assert not [p for p in root.iterdir() if ".tmp-" in p.name]
    resumes = [r for r in read_jsonl(out / "logs" / "train.jsonl") if r.get("event") == "resume"]
    assert [r["step"] for r in resumes] == [2]
    losses = lambda run: [r["loss"] for r in read_jsonl(run / "logs" / "train.jsonl") if "event" not in r]  # noqa: E731
    assert losses(out) == losses(tmp_path / "straight")
    weights = lambda run: load_file(str(run / "checkpoints" / "step-00000008" / "model" / "trainable.safetensors"))  # noqa: E731
    a, b = weights(out), weights(tmp_path / "straight")
    assert all(torch.equal(a[k], b[k]) for k in b)
