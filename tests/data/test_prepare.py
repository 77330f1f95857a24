"""`prepare`: determinism, manifest counts, webdataset decoding, every source, bad items, restart rules."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from PIL import Image

from lmfusion_cli.common.configs import build_config
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.manifest import verify_files
from lmfusion_cli.data.config import PrepareConfig
from lmfusion_cli.data.prepare import assign_split, run_prepare

from .helpers import image_bytes, make_coco, truncated_jpeg


def cfg(**kw) -> PrepareConfig:
    return build_config(PrepareConfig, kw)


def shard_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


def test_shapes_twice_identical_and_workers_do_not_matter(tmp_path):
    m1 = run_prepare(cfg(out=str(tmp_path / "a"), num_items=300, shard_size=40, seed=3))
    run_prepare(cfg(out=str(tmp_path / "b"), num_items=300, shard_size=40, seed=3))
    run_prepare(cfg(out=str(tmp_path / "c"), num_items=300, shard_size=40, seed=3, workers=2))
    a = shard_bytes(tmp_path / "a")
    assert a and a == shard_bytes(tmp_path / "b") == shard_bytes(tmp_path / "c")
    run_prepare(cfg(out=str(tmp_path / "d"), num_items=300, shard_size=40, seed=4))
    assert shard_bytes(tmp_path / "d") != a
    # counts add up: per split, per shard, and against the listing
    assert m1["counts"]["kept"] == 300 and m1["counts"]["num_skipped"] == 0
    assert sum(s["items"] for s in m1["splits"].values()) == 300
    assert sum(s["count"] for s in m1["shards"]) == 300
    assert all(s["count"] <= 40 for s in m1["shards"])
    assert set(m1["files"]) == set(a) and verify_files(tmp_path / "a", m1) == []
    assert m1["splits"]["val"]["items"] > 0 and m1["splits"]["test"]["items"] > 0
    assert not (tmp_path / "a" / ".parts").exists()


def test_webdataset_decodes_shards_and_captions_match_attributes(tmp_path):
    import webdataset as wds

    run_prepare(cfg(out=str(tmp_path), num_items=120, shard_size=50, resolution=48))
    urls = [str(p) for p in sorted(tmp_path.glob("*.tar"))]
    n = 0
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        img = Image.open(io.BytesIO(sample["png"]))
        assert img.size == (48, 48) and img.mode == "RGB"
        caption = sample["txt"].decode()
        meta = json.loads(sample["json"])
        attrs = meta["attributes"]
        assert attrs["background"] in caption
        for obj in attrs["objects"]:
            assert obj["colour"] in caption and obj["shape"] in caption
        assert meta["key"] == sample["__key__"] and meta["split"] in sample["__url__"]
        n += 1
    assert n == 120


def test_captions_option_writes_the_style_asked_for_with_the_same_images(tmp_path):
    """`--captions varied` changes the captions only: the PNGs are the fixed style's, byte for byte."""
    import webdataset as wds

    from lmfusion_cli.data import shapes

    def read(folder):
        urls = [str(p) for p in sorted(folder.glob("*.tar"))]
        return {s["__key__"]: (s["png"], s["txt"].decode(), json.loads(s["json"])) for s in wds.WebDataset(urls)}

    for style in ("fixed", "varied"):
        run_prepare(cfg(out=str(tmp_path / style), num_items=60, captions=style))
    fixed, varied = read(tmp_path / "fixed"), read(tmp_path / "varied")
    assert fixed.keys() == varied.keys() and len(fixed) == 60
    assert all(fixed[k][0] == varied[k][0] for k in fixed)
    for (_, caption, meta), style in [(fixed[k], "fixed") for k in fixed] + [(varied[k], "varied") for k in varied]:
        index = int(meta["key"].rsplit("-", 1)[1])
        assert caption == shapes.make_item(index, 0, 8, captions=style).caption
    assert sum(fixed[k][1] != varied[k][1] for k in fixed) > 30


def test_split_is_a_function_of_seed_and_key():
    splits = [assign_split(f"k{i}", 0, 0.1, 0.2) for i in range(4000)]
    assert splits == [assign_split(f"k{i}", 0, 0.1, 0.2) for i in range(4000)]
    assert 0.17 < splits.count("test") / 4000 < 0.23 and 0.07 < splits.count("val") / 4000 < 0.13
    assert splits != [assign_split(f"k{i}", 1, 0.1, 0.2) for i in range(4000)]


def _reasons(manifest):
    return {item["key"]: item["reason"] for item in manifest["skipped_items"]}


def test_coco_bad_items_skipped_and_counted(tmp_path):
    expected = make_coco(tmp_path / "coco")
    m = run_prepare(
        cfg(
            source="coco",
            input=str(tmp_path / "coco"),
            out=str(tmp_path / "out"),
            resolution=16,
            val_fraction=0.0,
            test_fraction=0.0,
        )
    )
    bad = {k: r for k, r in expected.items() if r != "kept"}
    assert _reasons(m) == bad
    assert m["counts"]["kept"] == 2 and m["counts"]["num_skipped"] == len(bad)
    assert m["counts"]["skipped"] == {r: 1 for r in bad.values()}
    import webdataset as wds

    got = {s["__key__"]: s for s in wds.WebDataset(str(tmp_path / "out" / "train-00000.tar"), shardshuffle=False)}
    assert set(got) == {"coco-1", "coco-2"}
    assert got["coco-1"]["txt"] == b"a red thing"
    assert json.loads(got["coco-1"]["json"])["captions"] == ["a red thing", "red again"]
    assert Image.open(io.BytesIO(got["coco-1"]["png"])).size == (16, 16)


def test_coco_karpathy_split(tmp_path):
    make_coco(tmp_path / "coco")
    karpathy = {
        "images": [
            {"cocoid": 1, "filepath": "val2017", "filename": "a.jpg", "split": "test", "sentences": [{"raw": "red"}]},
            {"cocoid": 2, "filepath": "val2017", "filename": "b.png", "split": "restval", "sentences": [{"raw": "gr"}]},
        ]
    }
    (tmp_path / "k.json").write_text(json.dumps(karpathy))
    m = run_prepare(
        cfg(
            source="coco",
            input=str(tmp_path / "coco"),
            karpathy_split=str(tmp_path / "k.json"),
            out=str(tmp_path / "out"),
            resolution=16,
        )
    )
    assert {s: v["items"] for s, v in m["splits"].items()} == {"train": 1, "val": 0, "test": 1}


def test_folder_bad_items_by_reason_and_key(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "good.png").write_bytes(image_bytes())
    (src / "good.txt").write_text("a good one")
    (src / "sub" / "also.jpg").write_bytes(image_bytes(fmt="JPEG"))
    (src / "sub" / "also.txt").write_text("another")
    (src / "sub" / "also.json").write_text('{"colour": "red"}')
    (src / "trunc.jpg").write_bytes(truncated_jpeg())
    (src / "trunc.txt").write_text("cut")
    (src / "zero.png").write_bytes(b"")
    (src / "zero.txt").write_text("zero")
    (src / "wrong.gif2").write_bytes(image_bytes())
    (src / "latin.png").write_bytes(image_bytes())
    (src / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    (src / "dup.png").write_bytes(image_bytes())
    (src / "dup.jpg").write_bytes(image_bytes(fmt="JPEG"))
    (src / "dup.txt").write_text("duplicate")
    (src / "nocap.png").write_bytes(image_bytes())
    m = run_prepare(
        cfg(
            source="folder",
            input=str(src),
            out=str(tmp_path / "out"),
            resolution=16,
            val_fraction=0.0,
            test_fraction=0.0,
        )
    )
    assert _reasons(m) == {
        "trunc": "truncated-image",
        "zero": "empty-image",
        "wrong_gif2": "unsupported-extension",
        "latin": "bad-caption-encoding",
        "dup": "duplicate-key",
        "nocap": "missing-caption",
    }
    assert m["counts"]["kept"] == 3  # good, sub/also, and the first dup file
    import webdataset as wds

    got = {s["__key__"]: s for s in wds.WebDataset(str(tmp_path / "out" / "train-00000.tar"), shardshuffle=False)}
    assert set(got) == {"good", "sub_also", "dup"}
    assert json.loads(got["sub_also"]["json"])["attributes"] == {"colour": "red"}


def test_jsonl_source(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "x.png").write_bytes(image_bytes((1, 2, 3), (100, 50)))
    (tmp_path / "img" / "y.png").write_bytes(image_bytes())
    lines = [
        json.dumps({"image": "img/x.png", "caption": "ex", "split": "test", "attributes": {"a": 1}}),
        json.dumps({"image": "img/y.png", "caption": ["why", "y"], "key": "yy"}),
        json.dumps({"image": "img/x.png", "caption": "again", "key": "img_x"}),  # same key as line 1
        "{broken",
        json.dumps({"caption": "no image"}),
        json.dumps({"image": "img/missing.png", "caption": "gone"}),
    ]
    (tmp_path / "pairs.jsonl").write_bytes(("\n".join(lines) + "\n").encode() + b'{"image": "\xff"}\n')
    m = run_prepare(
        cfg(
            source="jsonl",
            input=str(tmp_path / "pairs.jsonl"),
            out=str(tmp_path / "out"),
            resolution=16,
            val_fraction=0.0,
            test_fraction=0.0,
        )
    )
    assert m["counts"]["skipped"] == {"bad-record": 3, "duplicate-key": 1, "missing-image": 1}
    assert m["splits"]["test"]["items"] == 1 and m["splits"]["train"]["items"] == 1


def test_hf_disk_and_imagefolder_sources(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict(
        {"image": [Image.new("RGB", (20, 20), (i * 50, 0, 0)) for i in range(4)], "text": ["zero", "one", "", "three"]}
    )
    ds = ds.cast_column("image", datasets.Image())
    datasets.DatasetDict({"train": ds, "validation": ds.select([0])}).save_to_disk(str(tmp_path / "hf"))
    m = run_prepare(cfg(source="hf-disk", input=str(tmp_path / "hf"), out=str(tmp_path / "o1"), resolution=16))
    assert m["splits"]["train"]["items"] == 3 and m["splits"]["val"]["items"] == 1
    assert m["counts"]["skipped"] == {"empty-caption": 1}

    root = tmp_path / "if"
    (root / "train").mkdir(parents=True)
    for name in ("p.png", "q.png", "r.png"):
        (root / "train" / name).write_bytes(image_bytes())
    (root / "train" / "metadata.jsonl").write_text(
        json.dumps({"file_name": "p.png", "text": "pee"}) + "\n" + json.dumps({"file_name": "q.png", "caption": "q"})
    )
    m = run_prepare(cfg(source="imagefolder", input=str(root), out=str(tmp_path / "o2"), resolution=16))
    assert m["splits"]["train"]["items"] == 2
    assert _reasons(m) == {"train_r": "missing-caption"}


def test_finished_output_is_not_rewritten_unless_overwrite(tmp_path):
    c = cfg(out=str(tmp_path), num_items=30, shard_size=10)
    run_prepare(c)
    shard = next(tmp_path.glob("train-*.tar"))
    before = shard.stat().st_mtime_ns
    run_prepare(c)
    assert shard.stat().st_mtime_ns == before
    with pytest.raises(UserError, match="--overwrite"):
        run_prepare(cfg(out=str(tmp_path), num_items=31, shard_size=10))
    m = run_prepare(cfg(out=str(tmp_path), num_items=31, shard_size=10, overwrite=True))
    assert m["counts"]["kept"] == 31 and shard.stat().st_mtime_ns != before


def test_unfinished_output_with_other_config_is_refused(tmp_path):
    run_prepare(cfg(out=str(tmp_path), num_items=30, shard_size=10))
    (tmp_path / "manifest.json").unlink()
    (tmp_path / ".parts").mkdir()
    (tmp_path / ".parts" / "config.json").write_text('{"output_config_hash": "other"}')
    with pytest.raises(UserError, match="unfinished"):
        run_prepare(cfg(out=str(tmp_path), num_items=30, shard_size=10))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "lmfusion_cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_bad_input_is_one_sentence_exit_2(tmp_path):
    r = _cli("prepare", "--source", "folder", "--input", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert str(tmp_path / "nope") in r.stderr and "--input" in r.stderr and r.stderr.count("\n") == 1
    r = _cli("prepare", "--out", str(tmp_path / "o"), "--set", "shard_sise=3")
    assert r.returncode == 2 and "shard_sise" in r.stderr and "Traceback" not in r.stderr
    r = _cli("prepare", "--source", "coco", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "--input" in r.stderr
    r = _cli(
        "-q",
        "prepare",
        "--out",
        str(tmp_path / "o"),
        "--num-items",
        "12",
        "--shard-size",
        "5",
        "--resolution",
        "16",
        "--seed",
        "2",
    )
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["counts"]["kept"] == 12 and m["resolution"] == 16 and m["seed"] == 2
    assert all(s["count"] <= 5 for s in m["shards"])


def test_disk_full_is_one_sentence_and_rerun_completes(tmp_path, monkeypatch):
    import errno

    import lmfusion_cli.data.shards as shards

    real, calls = shards.atomic_file, []

    def full_disk(path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path)

    monkeypatch.setattr(shards, "atomic_file", full_disk)
    c = cfg(out=str(tmp_path / "a"), num_items=30, shard_size=10, val_fraction=0.0, test_fraction=0.0)
    with pytest.raises(UserError, match="No space left"):
        run_prepare(c)
    first = tmp_path / "a" / "train-00000.tar"
    mtime = first.stat().st_mtime_ns
    monkeypatch.setattr(shards, "atomic_file", real)
    run_prepare(c)
    assert first.stat().st_mtime_ns == mtime  # kept, not redone
    run_prepare(cfg(out=str(tmp_path / "b"), num_items=30, shard_size=10, val_fraction=0.0, test_fraction=0.0))
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")
