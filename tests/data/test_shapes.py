"""The synthetic shapes generator: deterministic, varied, captions consistent with attributes."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_fixed_captions_keep_every_attribute_in_its_word_slot():
    """`captions="fixed"` (the default): one template per layout, so each attribute sits at the same word
    position in every caption of that layout; image and attributes are those of the varied style."""
    phrase = shapes.POSITION_PHRASES
    for i in range(300):
        fixed, varied = shapes.make_item(i, seed=2, resolution=16), shapes.make_item(i, 2, 16, captions="varied")
        assert fixed.image.tobytes() == varied.image.tobytes() and fixed.attributes == varied.attributes
        attrs, words = fixed.attributes, fixed.caption.split()
        objs = attrs["objects"]
        assert words[:5] == ["a", attrs["background"], "background", "with", "a"]
        if attrs["layout"] == "single":
            o = objs[0]
            assert words[5:] == [o["size"], o["colour"], o["shape"], *phrase[o["position"]].split()]
        else:
            first, second = ("left", "right") if attrs["relation"] == "left of" else ("top", "bottom")
            assert words[5:] == [
                objs[0]["colour"], objs[0]["shape"], *phrase[first].split(), "and", "a",
                objs[1]["colour"], objs[1]["shape"], *phrase[second].split(),
            ]  # fmt: skip


def test_varied_captions_use_several_templates_and_bad_style_is_refused():
    singles = [
        it for it in (shapes.make_item(i, captions="varied") for i in range(200)) if it.attributes["layout"] == "single"
    ]
    lengths = {len(it.caption.split()) for it in singles}
    assert len(lengths) >= 3
    with pytest.raises(ValueError, match="captions must be one of"):
        shapes.make_item(0, captions="free")
