"""Suites end to end with plain callables: shapes (with resume), text (base vs fused), COCO on a fixture."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from lmfusion_cli.data import shapes
from lmfusion_cli.evaluation.clip_score import load_clip
from lmfusion_cli.evaluation.coco_suite import run_coco_suite
from lmfusion_cli.evaluation.fid import load_inception
from lmfusion_cli.evaluation.suites import generation_path, run_shapes_suite, write_outputs
from stand_ins import make_coco_fixture, save_tiny_clip, save_tiny_inception

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

    metrics, section = run_shapes_suite(tmp_path, N, SEED, RES, generate_fn=_truth_generator(calls),
                                        caption_fn=caption, batch_size=5, tokenizer="python")
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
    rescored, _ = run_shapes_suite(tmp_path / "again", N, SEED, RES, generations_dir=tmp_path / "shapes" / "generations")
    assert rescored["generation"]["skipped"]["skipped"] == {"not-generated": 1}
    paths = write_outputs(tmp_path, "shapes evaluation", {"shapes": (metrics, section)}, {"checkpoint": "none"})
    saved = json.loads(paths["metrics"].read_text())
    assert saved["checkpoint"] == "none" and saved["shapes"]["generation"]["accuracy"]["shape"] >= 0.95
    text = paths["report"].read_text()
    for rel, _ in section.images:
        assert f"]({rel})" in text and _valid_png(tmp_path / rel)


def test_coco_suite_end_to_end_with_stand_in_weights(tmp_path):
    root = make_coco_fixture(tmp_path / "coco")
    extractor = load_inception(save_tiny_inception(tmp_path / "inception.pt"))
    config, weights = save_tiny_clip(tmp_path)
    scorer = load_clip("tiny-test-clip", weights, model_config=config)

    def generate(prompts, seeds):
        return [shapes.make_item(s, 9, 32).image for s in seeds]

    def caption(images):
        return ["a red circle on a blue background"] * len(images)

    metrics, section = run_coco_suite(tmp_path / "out", root, root / "dataset_coco.json", num_prompts=6, seed=0,
                                      resolution=32, generate_fn=generate, caption_fn=caption, extractor=extractor,
                                      extractor_id="tiny", clip_scorer=scorer, stats_cache_dir=tmp_path / "stats",
                                      batch_size=4, tokenizer="python")
    assert metrics["num_test_images"] == 4 and 0 <= metrics["captioning"]["CIDEr"] < 10
    gen = metrics["generation"]
    assert gen["num_generated"] == 6 and gen["fid"] > 0 and 0 <= gen["clip_score"] <= 100
    assert not gen["fid_reference_cached"]
    again, _ = run_coco_suite(tmp_path / "out", root, root / "dataset_coco.json", num_prompts=6, seed=0, resolution=32,
                              extractor=extractor, extractor_id="tiny", stats_cache_dir=tmp_path / "stats")
    assert again["generation"]["fid_reference_cached"] and again["generation"]["fid"] == pytest.approx(gen["fid"])
    paths = write_outputs(tmp_path / "out", "coco", {"coco": (metrics, section)})
    for rel, _ in section.images:
        assert _valid_png(tmp_path / "out" / rel) and rel in paths["report"].read_text()
