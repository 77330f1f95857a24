"""metrics.json, report.md, grid and plot PNGs (valid images, referenced by the report)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from lmfusion_cli.data import shapes
from lmfusion_cli.evaluation.report import (
    Section,
    plot_accuracy_vs_chance,
    plot_values,
    save_image_grid,
    write_metrics,
    write_report,
)


def _valid_png(path, size=None):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        if size:
            assert im.size == size
    return True


def test_report_with_grid_and_plots(tmp_path):
    images = [shapes.make_item(i, 0, 16).image for i in range(5)]
    grid = save_image_grid(images, tmp_path / "grid.png", cols=3, pad=2)
    assert _valid_png(grid, size=(3 * 18 + 2, 2 * 18 + 2))
    with Image.open(grid) as im:  # the first tile is the first image
        assert im.convert("RGB").getpixel((2, 2)) == images[0].getpixel((0, 0))
    acc = plot_accuracy_vs_chance(
        {"colour": 0.9, "shape": 0.5, "size": None},
        {"colour": 1 / 7, "shape": 1 / 3},
        tmp_path / "plots" / "acc.png",
        "shapes",
    )
    bars = plot_values({"base": 0.61, "fused": 0.61}, tmp_path / "plots" / "text.png", "text", "accuracy")
    assert _valid_png(acc) and _valid_png(bars)
    metrics = {"shapes": {"accuracy": {"colour": 0.9, "size": None}, "per_image": [1, 2]}, "cider": 1.23456}
    path = write_metrics(tmp_path, metrics)
    assert json.loads(path.read_text()) == metrics
    report = write_report(
        tmp_path,
        "Evaluation",
        [
            Section(
                "shapes", metrics["shapes"], [("plots/acc.png", "accuracy"), ("grid.png", "generations")], "text here"
            ),
            Section("captions", {"cider": 1.23456}),
        ],
    )
    text = report.read_text()
    assert "| accuracy.colour | 0.9 |" in text and "| accuracy.size | – |" in text and "per_image" not in text
    assert "![generations](grid.png)" in text and "| cider | 1.235 |" in text and "text here" in text
    assert not list(tmp_path.glob("*.tmp-*"))


def test_report_refuses_missing_images_and_empty_grid(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        write_report(tmp_path, "x", [Section("s", images=[("nope.png", "n")])])
    with pytest.raises(ValueError):
        save_image_grid([], tmp_path / "g.png")
