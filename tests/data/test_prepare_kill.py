"""A `prepare` killed with SIGKILL part-way and rerun gives the same shards as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from lmfusion_cli.common.configs import build_config
from lmfusion_cli.data.config import PrepareConfig
from lmfusion_cli.data.prepare import run_prepare
from lmfusion_cli.data.shards import scan_shard

ARGS = ["--num-items", "2500", "--shard-size", "50", "--seed", "5", "--resolution", "64"]


def test_sigkill_then_rerun_equals_uninterrupted(tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "lmfusion_cli", "-q", "prepare", "--out", str(out), *ARGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if len(list(out.glob("*.tar"))) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"prepare finished before it could be killed: {proc.stderr.read()!r}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    for tar in out.glob("*.tar"):  # whatever is under a final name is a whole shard
        assert not scan_shard(tar).truncated

    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    run_prepare(
        build_config(PrepareConfig, {"out": str(tmp_path / "straight"), "num_items": 2500, "shard_size": 50, "seed": 5})
    )
    killed = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    straight = {p.name: p.read_bytes() for p in sorted((tmp_path / "straight").iterdir())}
    assert set(killed) == set(straight)  # no temp leftovers, no .parts, same shard names
    for name in straight:
        if name != "manifest.json":
            assert killed[name] == straight[name], name
