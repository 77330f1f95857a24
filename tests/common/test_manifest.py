"""Manifests: provenance, skip counts, completeness checks and per-file hashes."""

from __future__ import annotations

import pytest

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.manifest import SkipLog, file_entry, read_manifest, verify_files, write_manifest


def test_skiplog_counts_and_summary():
    log = SkipLog()
    log.keep(3)
    log.skip("k1", "corrupt-image", "truncated")
    log.skip("k2", "empty-caption")
    log.skip("k3", "corrupt-image")
    other = SkipLog()
    other.keep(2)
    other.skip("k4", "missing-image")
    log.merge(other)
    assert log.counts() == {
        "kept": 5,
        "num_skipped": 4,
        "skipped": {"corrupt-image": 2, "empty-caption": 1, "missing-image": 1},
    }
    assert "skipped 4 (corrupt-image: 2, empty-caption: 1, missing-image: 1)" in log.summary()
    assert [i["key"] for i in log.items] == ["k1", "k2", "k3", "k4"]
    assert SkipLog.from_dict(log.to_dict()).counts() == log.counts()


def test_write_read_and_verify(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"hello")
    write_manifest(tmp_path, "shards", files={"a.bin": file_entry(tmp_path / "a.bin")})
    m = read_manifest(tmp_path, "shards")
    assert m["created_by"]["packages"]["torch"]
    assert verify_files(tmp_path, m) == []
    (tmp_path / "a.bin").write_bytes(b"hellp")  # same size, one byte flipped
    problems = verify_files(tmp_path, m)
    assert len(problems) == 1 and "a.bin" in problems[0] and "SHA-256" in problems[0]
    (tmp_path / "a.bin").unlink()
    assert "missing" in verify_files(tmp_path, m)[0]


def test_read_manifest_refusals(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_manifest(tmp_path / "nope", "shards")
    with pytest.raises(UserError, match="no manifest.json"):
        read_manifest(tmp_path, "shards")
    write_manifest(tmp_path, "latents")
    with pytest.raises(UserError, match="'latents' artifact"):
        read_manifest(tmp_path, "shards")
    write_manifest(tmp_path, "shards", complete=False)
    with pytest.raises(UserError, match="incomplete"):
        read_manifest(tmp_path, "shards")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot be read"):
        read_manifest(tmp_path, "shards")
