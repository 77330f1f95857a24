"""encode-latents: SIGKILL + rerun equals an uninterrupted run; `--gpus 2` (2 CPU processes) equals one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from lmfusion_cli.common.configs import build_config
from lmfusion_cli.data.config import EncodeConfig, PrepareConfig
from lmfusion_cli.data.encode import run_encode
from lmfusion_cli.data.latents import open_latent_cache
from lmfusion_cli.data.prepare import run_prepare

from .latent_helpers import make_vae


def files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "manifest.json"}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Prepared data, a tiny VAE and the uninterrupted single-process cache (1 thread, like the others)."""
    torch.set_num_threads(1)
    tmp_path = tmp_path_factory.mktemp("kill")
    run_prepare(build_config(PrepareConfig, {"out": str(tmp_path / "data"), "num_items": 60, "shard_size": 6}))
    vae = make_vae(tmp_path / "vae")
    common = {"data": str(tmp_path / "data"), "vae": str(vae), "batch_size": 3, "workers": 0}
    manifest = run_encode(build_config(EncodeConfig, {**common, "out": str(tmp_path / "straight")}))
    return tmp_path, vae, common, manifest


@pytest.mark.slow
def test_sigkill_then_rerun_equals_uninterrupted(straight):
    tmp_path, vae, common, _ = straight

    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "lmfusion_cli",
        "-q",
        "encode-latents",
        "--data",
        str(tmp_path / "data"),
        "--vae",
        str(vae),
        "--out",
        str(out),
        "--batch-size",
        "3",
        "--workers",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list(out.glob("*.safetensors"))) >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"encode finished before it could be killed: {proc.stderr.read()!r}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    done_before = {
        p.name: p.stat().st_mtime_ns for p in out.glob("*.safetensors") if (out / ".parts" / f"{p.stem}.json").exists()
    }
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert files(out) == files(tmp_path / "straight")  # no temp leftovers, same bytes
    for name, mtime in done_before.items():  # finished shards were not redone
        assert (out / name).stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_two_processes_equal_one(straight):
    tmp_path, vae, common, straight = straight
    two = run_encode(build_config(EncodeConfig, {**common, "out": str(tmp_path / "two"), "gpus": 2}))
    assert two["shards"] == straight["shards"] and two["counts"] == straight["counts"]
    a, b = open_latent_cache(tmp_path / "straight"), open_latent_cache(tmp_path / "two")
    for i in range(0, len(a), 7):
        assert a[i]["key"] == b[i]["key"]
        torch.testing.assert_close(a[i]["mean"], b[i]["mean"], atol=1e-3, rtol=1e-3)
