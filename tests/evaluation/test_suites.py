"""Suites end to end with plain callables: shapes (with resume), text (base vs fused), COCO on a fixture."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from stand_ins import make_coco_fixture, save_tiny_clip, save_tiny_inception

from lmfusion_cli.data import shapes
from lmfusion_cli.evaluation import report
from lmfusion_cli.evaluation.clip_score import load_clip
from lmfusion_cli.evaluation.coco_suite import run_coco_suite
from lmfusion_cli.evaluation.fid import load_inception
from lmfusion_cli.evaluation.generations import generation_path
from lmfusion_cli.evaluation.shapes_suite import run_shapes_suite

N, SEED, RES = 24, 1000, 32


def _truth_generator(calls):
    """A perfect 'sampler' for shapes prompts: renders the item whose caption is the prompt."""
    by_caption = {shapes.make_item(i, SEED, RES).caption: shapes.make_item(i, SEED, RES).image for i in range(N)}

    def generate(prompts, seeds):
        calls.extend(seeds)
        return [by_caption[p] for p in prompts]

    return generate


def _valid_png(path):
    with Image.open(path) as im:
        im.verify()
    return True


def test_shapes_suite_scores_resumes_and_reports(tmp_path):
    calls = []
    truth = {shapes.make_item(i, SEED, RES).key: shapes.make_item(i, SEED, RES).caption for i in range(N)}
    images_to_caption = []

    def caption(images):
        images_to_caption.extend(images)
        return [truth[shapes.make_item(i, SEED, RES).key] for i in range(len(images))]

    metrics, section = run_shapes_suite(
        tmp_path,
        N,
        SEED,
        RES,
        generate_fn=_truth_generator(calls),
        caption_fn=caption,
        batch_size=5,
        tokenizer="python",
    )
    assert sorted(calls) == list(range(SEED, SEED + N)) and len(images_to_caption) == N
    assert all(acc >= 0.95 for acc in metrics["generation"]["accuracy"].values())
    assert metrics["generation"]["chance"]["colour"] == pytest.approx(1 / 7)
    assert metrics["captioning"]["cider"] > 1.0 and metrics["captioning"]["accuracy"]["colour"] == 1.0
    # resume: existing generations are not redone; a removed one is the only one made again
    generation_path(tmp_path / "shapes" / "generations", 3).unlink()
    calls.clear()
    run_shapes_suite(tmp_path, N, SEED, RES, generate_fn=_truth_generator(calls), tokenizer="python")
    assert calls == [SEED + 3]
    # scoring an existing folder of generations needs no generator; a missing image is counted
    generation_path(tmp_path / "shapes" / "generations", 5).unlink()
    rescored, _ = run_shapes_suite(
        tmp_path / "again", N, SEED, RES, generations_dir=tmp_path / "shapes" / "generations"
    )
    assert rescored["generation"]["skipped"]["skipped"] == {"not-generated": 1}
    saved = json.loads(report.write_metrics(tmp_path, {"checkpoint": "none", "shapes": metrics}).read_text())
    assert saved["checkpoint"] == "none" and saved["shapes"]["generation"]["accuracy"]["shape"] >= 0.95
    text = report.write_report(tmp_path, "shapes evaluation", [section]).read_text()
    for rel, _ in section.images:
        assert f"]({rel})" in text and _valid_png(tmp_path / rel)


def test_coco_suite_end_to_end_with_stand_in_weights(tmp_path):
    """COCO-30K protocol on a fixture of 36 validation images (5 captions each, one missing on disk): distinct
    prompt images, the reference set is exactly those images at the generation resolution, two guidance
    scales give two sets of figures over the same prompts and seeds, the cache is keyed by the image list."""
    from PIL import ImageOps

    from lmfusion_cli.evaluation.fid import fid_from_folders

    root = make_coco_fixture(tmp_path / "coco", num_images=36, size=(48, 32))
    extractor = load_inception(save_tiny_inception(tmp_path / "inception.pt"))
    config, weights = save_tiny_clip(tmp_path)
    scorer = load_clip("tiny-test-clip", weights, model_config=config)
    calls = []

    def generator(scale):
        def generate(prompts, seeds):
            calls.append((scale, list(prompts), list(seeds)))
            return [shapes.make_item(s, 9 + int(scale * 10), 24).image for s in seeds]

        return generate

    def caption(images):
        return ["a red circle on a blue background"] * len(images)

    metrics, section = run_coco_suite(
        tmp_path / "out",
        root,
        root / "dataset_coco.json",
        num_prompts=20,
        seed=0,
        resolution=24,
        generate_fns={1.0: generator(1.0), 1.55: generator(1.55)},
        caption_fn=caption,
        extractor=extractor,
        extractor_id="tiny",
        clip_scorer=scorer,
        clip_id="tiny-test-clip (test)",
        stats_cache_dir=tmp_path / "stats",
        batch_size=8,
        tokenizer="python",
        sampling={"sampler": "euler", "steps": 2},
    )
    assert metrics["num_test_images"] == 18 and 0 <= metrics["captioning"]["CIDEr"] < 10  # Karpathy test: even ids
    gen = metrics["generation"]
    prompts = [json.loads(line) for line in (tmp_path / "out" / "coco" / "prompts.jsonl").read_text().splitlines()[1:]]
    ids = [p["image_id"] for p in prompts]
    assert len(ids) == len(set(ids)) == 20 and 107 not in ids  # distinct images; the missing file is never drawn
    assert any(i % 2 for i in ids)  # drawn from all validation images, not the captioning (Karpathy test) split
    protocol = gen["protocol"]
    assert (protocol["num_prompts"], protocol["num_distinct_images"], protocol["num_reference_images"]) == (20, 20, 20)
    assert (protocol["resolution"], protocol["extractor"], protocol["cfg_scales"], protocol["seed"]) == (
        24,
        "tiny",
        [1.0, 1.55],
        0,
    )
    assert (protocol["sampler"], protocol["steps"], protocol["clip_model"]) == ("euler", 2, "tiny-test-clip (test)")
    assert set(gen["by_cfg_scale"]) == {"cfg=1", "cfg=1.55"}
    for key in ("cfg=1", "cfg=1.55"):
        figures = gen["by_cfg_scale"][key]
        assert figures["num_generated"] == 20 and figures["fid"] > 0 and 0 <= figures["clip_score"] <= 100
    assert gen["by_cfg_scale"]["cfg=1"]["fid"] != gen["by_cfg_scale"]["cfg=1.55"]["fid"]
    by_scale = {
        scale: (sum((c[1] for c in calls if c[0] == scale), []), sum((c[2] for c in calls if c[0] == scale), []))
        for scale in (1.0, 1.55)
    }
    assert by_scale[1.0] == by_scale[1.55] and by_scale[1.0][1] == list(range(20))  # same prompts, same seeds
    # the reference statistics are those of exactly the prompts' images, centre-cropped and resized to 24 px
    by_id = {int(p.stem[-12:]): p for p in (root / "val2014").iterdir()}
    crops = tmp_path / "crops"
    crops.mkdir()
    for i in ids:
        with Image.open(by_id[i]) as im:
            ImageOps.fit(im.convert("RGB"), (24, 24), Image.Resampling.BICUBIC).save(crops / f"{i}.png")
    direct = fid_from_folders(tmp_path / "out" / "coco" / "generations" / "cfg-1.55", crops, extractor, "tiny-direct")
    assert direct["fid"] == pytest.approx(gen["by_cfg_scale"]["cfg=1.55"]["fid"], rel=1e-6)
    assert not protocol["reference_stats_cached"] and len(list((tmp_path / "stats").glob("*.npz"))) == 1
    # a rerun scores the saved generations against the cached statistics; another draw is another cache entry
    again, _ = run_coco_suite(
        tmp_path / "out",
        root,
        root / "dataset_coco.json",
        num_prompts=20,
        seed=0,
        resolution=24,
        extractor=extractor,
        extractor_id="tiny",
        stats_cache_dir=tmp_path / "stats",
        cfg_scales=(1.0, 1.55),
    )
    assert again["generation"]["protocol"]["reference_stats_cached"]
    assert again["generation"]["by_cfg_scale"]["cfg=1"]["fid"] == pytest.approx(gen["by_cfg_scale"]["cfg=1"]["fid"])
    other, _ = run_coco_suite(
        tmp_path / "other",
        root,
        num_prompts=20,
        seed=5,
        resolution=24,
        extractor=extractor,
        extractor_id="tiny",
        stats_cache_dir=tmp_path / "stats",
        generate_fns={1.0: generator(1.0)},
    )
    assert (
        not other["generation"]["protocol"]["reference_stats_cached"]
        and len(list((tmp_path / "stats").glob("*.npz"))) == 2
    )
    text = report.write_report(tmp_path / "out", "coco", [section]).read_text()
    for rel, _ in section.images:
        assert _valid_png(tmp_path / "out" / rel) and rel in text
