"""Issue 17 break 6: a really full disk (a small tmpfs mounted by the test) during train, encode-latents,
sample and evaluate gives one `error:` line naming the folder and the space, exit 2; no temp folder
or file is left behind, and the previous state is intact. Needs root (to mount); skipped otherwise.

The injected-ENOSPC tests (tests/reliability/test_train_disk_full.py, tests/data/test_prepare.py)
cover the same paths without root; these catch what injection cannot: torch's zip writer and
safetensors report a full disk as their own error types, not as OSError."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from reliability_helpers import build_tiny_base, cli, error_line, train_args, write_fake_cache

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "evaluation"))

from lmfusion_cli.common.checkpoint_layout import list_checkpoints  # noqa: E402
from lmfusion_cli.training.checkpointing import verify_checkpoint  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@contextlib.contextmanager
def tmpfs(kib: int):
    where = Path(f"/tmp/lmfusion-tmpfs-{uuid.uuid4().hex[:8]}")
    where.mkdir()
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)], capture_output=True
        ).returncode
        != 0
    ):
        where.rmdir()
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)  # a handle still open: detach it
        with contextlib.suppress(OSError):
            where.rmdir()


def fill(folder: Path, leave_kib: int) -> None:
    """Take all but `leave_kib` KiB of `folder`'s file system."""
    free = shutil.disk_usage(folder).free
    (folder / "ballast").write_bytes(b"\0" * max(free - leave_kib * 1024, 0))


def leftovers(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if ".tmp-" in p.name]


def test_train_on_a_full_disk(tmp_path, capsys):
    base, cache = build_tiny_base(tmp_path / "base"), write_fake_cache(tmp_path / "lat")
    assert cli(*train_args(base, cache, tmp_path / "probe", 1)) == 0  # measure one checkpoint
    size = sum(p.stat().st_size for p in (tmp_path / "probe").rglob("*") if p.is_file())
    with tmpfs(int(size * 1.6 / 1024)) as disk:
        out = disk / "run"
        capsys.readouterr()
        assert cli(*train_args(base, cache, out, 3)) == 2
        line = error_line(capsys)
        assert "no space left on device" in line and str(out / "checkpoints") in line and "MiB" in line
        assert leftovers(disk) == []
        assert [c.step for c in list_checkpoints(out / "checkpoints")] == [1]
        verify_checkpoint(out / "checkpoints" / "step-00000001")  # intact


def test_encode_latents_on_a_full_disk(tmp_path, capsys):
    from lmfusion_cli.assets import TINY_VAE

    assert (
        cli("prepare", "--source", "shapes", "--num-items", 200, "--resolution", 32, "--out", tmp_path / "shards") == 0
    )
    with tmpfs(150) as disk:
        capsys.readouterr()
        assert cli("encode-latents", "--data", tmp_path / "shards", "--out", disk / "lat", "--vae", TINY_VAE) == 2
        line = error_line(capsys)
        assert "No space left" in line and str(disk / "lat") in line and "MiB" in line
        assert leftovers(disk) == []


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    from fake_run import build_fake_run

    return build_fake_run(tmp_path_factory.mktemp("fake-run"))


def test_sample_on_a_full_disk_keeps_the_previous_output(fake_run, capsys):
    with tmpfs(2048) as disk:
        out = disk / "samples"
        args = ["sample", "--checkpoint", fake_run, "--prompt", "a red circle", "--steps", 1, "--out", out]
        assert cli(*args) == 0
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        fill(disk, 4)
        capsys.readouterr()
        assert cli(*args, "--overwrite", "--num-per-prompt", 4) == 2
        line = error_line(capsys)
        assert "No space left" in line and str(out) in line and "MiB" in line
        assert leftovers(disk) == []
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_evaluate_on_a_full_disk(fake_run, tmp_path, capsys):
    items = tmp_path / "mc.jsonl"
    items.write_text(
        '{"id": "q", "context": "a red circle on a", "choices": ["blue background", "left"], "label": 0}\n'
    )
    with tmpfs(1024) as disk:
        fill(disk, 2)
        capsys.readouterr()
        assert (
            cli("evaluate", "--suite", "text", "--checkpoint", fake_run, "--text-items", items, "--out", disk / "eval")
            == 2
        )
        line = error_line(capsys)
        assert "No space left" in line and str(disk / "eval") in line
        assert leftovers(disk) == []
