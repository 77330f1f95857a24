"""COCO layout reading, Karpathy test split, seeded prompt manifest, on a tiny fixture made here."""

from __future__ import annotations

import json

import pytest
from stand_ins import make_coco_fixture

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.evaluation.coco import (
    find_layout,
    generation_images,
    karpathy_ids,
    load_images,
    make_prompts,
    prompt_manifest,
    select_test_images,
)


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
    with pytest.raises(UserError, match="distinct validation images"):  # never an image twice (COCO-30K)
        prompt_manifest(tmp_path / "many.jsonl", images, num=len(images) + 1, seed=0)
    assert not (tmp_path / "many.jsonl").exists()


def test_coco30k_prompts_are_distinct_seeded_and_from_every_validation_image(tmp_path):
    """A few dozen validation images, five captions each: prompts = distinct images drawn from all of them."""
    layout = find_layout(make_coco_fixture(tmp_path / "coco", num_images=40, missing=(3, 17)))
    pool, skips = generation_images(layout)
    assert len(pool) == 38 and skips.counts()["skipped"] == {"missing-image-file": 2}
    prompts = make_prompts(pool, 30, seed=7)
    ids = [p["image_id"] for p in prompts]
    assert len(set(ids)) == 30 and {103, 117}.isdisjoint(ids)
    by_id = {im.image_id: im.captions for im in pool}
    assert all(p["caption"] in by_id[p["image_id"]] for p in prompts) and [p["index"] for p in prompts] == list(
        range(30)
    )
    assert make_prompts(pool, 30, seed=7) == prompts and make_prompts(pool, 30, seed=8) != prompts
    assert len({p["image_id"] for p in make_prompts(pool, 38, seed=0)}) == 38  # every image, once


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
