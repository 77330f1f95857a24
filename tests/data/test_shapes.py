"""The synthetic shapes generator: deterministic, varied, captions consistent with attributes."""

from __future__ import annotations

import numpy as np

from lmfusion_cli.data import shapes


def test_same_seed_same_bytes_and_independent_of_order():
    a = [shapes.make_item(i, seed=3).image.tobytes() for i in range(5)]
    b = [shapes.make_item(i, seed=3).image.tobytes() for i in reversed(range(5))][::-1]
    assert a == b
    assert shapes.make_item(0, seed=4).image.tobytes() != a[0]


def test_captions_mention_attributes_and_pixels_show_background():
    for i in range(200):
        item = shapes.make_item(i, seed=0, resolution=32)
        attrs = item.attributes
        assert item.image.size == (32, 32) and item.image.mode == "RGB"
        assert attrs["background"] in item.caption
        for obj in attrs["objects"]:
            assert obj["colour"] in item.caption and obj["shape"] in item.caption
        colours = {attrs["background"], *(o["colour"] for o in attrs["objects"])}
        assert len(colours) == 1 + len(attrs["objects"])
        corner = np.asarray(item.image)[0, 0]
        assert tuple(corner) == shapes.COLOURS[attrs["background"]]


def test_variety():
    items = [shapes.make_item(i) for i in range(300)]
    assert len({it.caption for it in items}) > 250
    assert {it.attributes["layout"] for it in items} == {"single", "pair"}
    assert {o["shape"] for it in items for o in it.attributes["objects"]} == set(shapes.SHAPES)
    assert {it.attributes["background"] for it in items} == set(shapes.COLOURS)
