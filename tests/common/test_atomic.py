"""Atomic writes never leave a half-written file or folder under its final name."""

from __future__ import annotations

import json
import os

import pytest

from lmfusion_cli.common.atomic import atomic_dir, atomic_file, atomic_write_json, remove_stale_temps


def test_atomic_write_json_roundtrip(tmp_path):
    path = tmp_path / "sub" / "x.json"
    atomic_write_json(path, {"b": 1, "a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_atomic_file_failure_leaves_nothing(tmp_path):
    path = tmp_path / "y.bin"
    with pytest.raises(RuntimeError):
        with atomic_file(path) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_atomic_file_keeps_old_content_on_failure(tmp_path):
    path = tmp_path / "y.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_file(path) as tmp:
            tmp.write_bytes(b"new")
            raise RuntimeError
    assert path.read_bytes() == b"old"


def test_atomic_dir_rename_and_overwrite(tmp_path):
    final = tmp_path / "ckpt"
    with atomic_dir(final) as tmp:
        (tmp / "a").write_text("1")
        assert not final.exists()
    assert (final / "a").read_text() == "1"
    with pytest.raises(FileExistsError):
        with atomic_dir(final) as tmp:
            (tmp / "a").write_text("2")
    with atomic_dir(final, overwrite=True) as tmp:
        (tmp / "a").write_text("3")
    assert (final / "a").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_atomic_dir_failure_and_stale_cleanup(tmp_path):
    with pytest.raises(ValueError):
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("x")
            raise ValueError
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "e.tmp-abc").mkdir()
    (tmp_path / "f.json.tmp-xyz").write_text("")
    (tmp_path / "keep").write_text("")
    removed = remove_stale_temps(tmp_path)
    assert len(removed) == 2 and [p.name for p in tmp_path.iterdir()] == ["keep"]


def test_final_names_get_normal_permissions(tmp_path):
    from lmfusion_cli.common.atomic import DIR_MODE, FILE_MODE, atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "x")
    with atomic_file(tmp_path / "b.bin") as tmp:
        tmp.unlink()  # a writer that recreates the file, as safetensors' save_file does
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"y")
        os.close(fd)
    with atomic_dir(tmp_path / "d"):
        pass
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == FILE_MODE != 0o600
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == FILE_MODE
    assert (tmp_path / "d").stat().st_mode & 0o777 == DIR_MODE != 0o700
