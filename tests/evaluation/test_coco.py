"""COCO layout reading, Karpathy test split, seeded prompt manifest, on a tiny fixture made here."""

from __future__ import annotations

import json

import pytest

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.evaluation.coco import find_layout, karpathy_ids, load_images, prompt_manifest, select_test_images
from stand_ins import make_coco_fixture


def test_layout_images_and_karpathy_split(tmp_path):
    root = make_coco_fixture(tmp_path / "coco")
    layout = find_layout(root)
    assert layout.annotations.name == "captions_val2014.json" and layout.images_dir.name == "val2014"
    images, skips = load_images(layout)
    assert sorted(images) == [100, 101, 102, 103, 104, 105, 106] and len(images[100].captions) == 5
    assert skips.counts()["skipped"] == {"missing-image-file": 1}
    assert karpathy_ids(root / "dataset_coco.json") == [100, 102, 104, 106]
    split = select_test_images(layout, root / "dataset_coco.json")
    assert [im.image_id for im in split.images] == [100, 102, 104, 106]
    everything = select_test_images(layout)
    assert len(everything.images) == 7
    sub = select_test_images(layout, num=3, seed=1)
    assert len(sub.images) == 3 and sub.images == select_test_images(layout, num=3, seed=1).images


def test_2017_layout(tmp_path):
    layout = find_layout(make_coco_fixture(tmp_path / "c17", year="2017", missing=()))
    assert layout.images_dir.name == "val2017" and len(load_images(layout)[0]) == 8


def test_prompt_manifest_is_seeded_saved_and_guarded(tmp_path):
    root = make_coco_fixture(tmp_path / "coco")
    images = select_test_images(find_layout(root)).images
    path = tmp_path / "out" / "prompts.jsonl"
    prompts = prompt_manifest(path, images, num=5, seed=3)
    assert len(prompts) == 5 and len({p["image_id"] for p in prompts}) == 5
    by_id = {im.image_id: im.captions for im in images}
    assert all(p["caption"] in by_id[p["image_id"]] for p in prompts)
    assert prompt_manifest(path, images, num=5, seed=3) == prompts  # reused from disk
    assert prompt_manifest(tmp_path / "other.jsonl", images, num=5, seed=4) != prompts
    with pytest.raises(UserError, match="other settings"):
        prompt_manifest(path, images, num=6, seed=3)
    assert len(prompt_manifest(tmp_path / "many.jsonl", images, num=12, seed=0)) == 12  # more prompts than images


def test_wrong_layouts_name_the_expected_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        find_layout(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"annotations/captions_val2014\.json"):
        find_layout(tmp_path / "empty")
    root = make_coco_fixture(tmp_path / "noimg")
    (root / "val2014").rename(root / "images")
    with pytest.raises(UserError, match="val2014"):
        find_layout(root)
    root = make_coco_fixture(tmp_path / "bad")
    (root / "annotations" / "captions_val2014.json").write_text("{")
    with pytest.raises(UserError, match="cannot be read"):
        load_images(find_layout(root))
    with pytest.raises(UserError, match="Karpathy split file"):
        karpathy_ids(tmp_path / "dataset_coco.json")
    (tmp_path / "k.json").write_text(json.dumps({"images": [{"cocoid": 1, "split": "train"}]}))
    with pytest.raises(UserError, match="'test' split"):
        karpathy_ids(tmp_path / "k.json")
