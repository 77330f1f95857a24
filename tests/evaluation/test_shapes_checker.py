"""The shapes image checker: ≥ 95% per attribute on ground-truth images, near chance on noise."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lmfusion_cli.data import shapes
from lmfusion_cli.evaluation.shapes_checker import analyze_image, predict_attributes, score_image, score_images


@pytest.mark.parametrize("resolution,seeds", [(64, (0, 1)), (32, (2, 3, 4))])
def test_ground_truth_images_score_at_least_95_percent(resolution, seeds):
    items = [shapes.make_item(i, seed, resolution) for seed in seeds for i in range(150)]
    out = score_images([it.image for it in items], [it.attributes for it in items])
    assert set(out["accuracy"]) == {"background", "colour", "shape", "position", "size", "relation"}
    for name, acc in out["accuracy"].items():
        assert acc >= 0.95, (name, acc)
    assert out["counts"]["relation"] > 50 and out["counts"]["position"] > 100  # both layouts were exercised


def test_noise_images_score_near_chance():
    rng = np.random.default_rng(0)
    items = [shapes.make_item(i, 7, 64) for i in range(200)]
    noise = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in items]
    out = score_images(noise, [it.attributes for it in items])
    for name, acc in out["accuracy"].items():
        assert acc <= out["chance"][name] + 0.12, (name, acc, out["chance"][name])
    assert abs(out["accuracy"]["background"] - out["chance"]["background"]) < 0.08


def test_wrong_prompt_is_caught():
    """Scoring an image against another item's attributes fails where they differ."""
    a = shapes.make_item(0, 0, 64)
    attrs = {**a.attributes, "background": next(c for c in shapes.COLOURS if c != a.attributes["background"])}
    assert score_image(a.image, attrs)["background"] == [False]
    assert all(all(v) for v in score_image(a.image, a.attributes).values())


def test_predict_attributes_reads_a_drawn_pair_in_relation_order():
    attrs = {
        "background": "white",
        "layout": "pair",
        "relation": "above",
        "objects": [
            {"shape": "square", "colour": "red", "size": "small", "position": "top"},
            {"shape": "triangle", "colour": "blue", "size": "small", "position": "bottom"},
        ],
    }
    image = shapes.render(attrs, 64, np.random.default_rng(0))
    pred = predict_attributes(image, layout="pair")
    assert pred["background"] == "white" and pred["relation"] == "above"
    assert [(o["colour"], o["shape"]) for o in pred["objects"]] == [("red", "square"), ("blue", "triangle")]
    flipped = {**attrs, "objects": attrs["objects"][::-1]}
    assert score_image(image, flipped)["relation"] == [False]


def test_blank_image_has_no_object_and_inputs_are_checked():
    blank = Image.new("RGB", (32, 32), shapes.COLOURS["green"])
    analysis = analyze_image(blank)
    assert analysis.background == "green" and analysis.objects == ()
    attrs = shapes.make_item(1, 0, 32).attributes
    checks = score_image(blank, attrs)
    assert checks["colour"] == [False] * len(attrs["objects"])
    with pytest.raises(ValueError, match="RGB"):
        analyze_image(np.zeros((8, 8)))
    float_img = np.asarray(shapes.make_item(1, 0, 32).image, dtype=np.float32) / 255  # floats in [0, 1] work too
    assert score_image(float_img, attrs) == score_image(shapes.make_item(1, 0, 32).image, attrs)
