"""Shapes caption scoring: template references, caption parsing, attribute accuracy and CIDEr."""

from __future__ import annotations

import pytest

from lmfusion_cli.data import shapes
from lmfusion_cli.evaluation.metrics import cider
from lmfusion_cli.evaluation.shapes_captions import parse_caption, score_caption, score_captions, shapes_references

ITEMS = [shapes.make_item(i, 0, 16) for i in range(120)]
ATTRS = {it.key: it.attributes for it in ITEMS}


@pytest.mark.parametrize("template", range(6))
def test_every_template_caption_is_read_correctly(template):
    caps = {it.key: shapes.caption_for(it.attributes, template) for it in ITEMS}
    out = score_captions(caps, ATTRS, tokenizer="python")
    for name, acc in out["accuracy"].items():
        assert acc is None or acc == 1.0, (template, name, acc)
    assert out["accuracy"]["background"] == out["accuracy"]["colour"] == out["accuracy"]["shape"] == 1.0
    assert out["cider"] > 3.0


def test_wrong_captions_score_low_and_cider_matches_metrics():
    caps = {ITEMS[i].key: ITEMS[(i + 1) % len(ITEMS)].caption for i in range(len(ITEMS))}
    out = score_captions(caps, ATTRS, tokenizer="python")
    assert out["accuracy"]["background"] < 0.4 and out["accuracy"]["colour"] < 0.5
    refs = {k: shapes_references(ATTRS[k]) for k in caps}
    assert out["cider"] == pytest.approx(cider(refs, caps, tokenizer="python"), abs=1e-12)
    good = score_captions({it.key: it.caption for it in ITEMS}, ATTRS, tokenizer="python")
    assert good["cider"] > 3 * out["cider"]


def test_references_cover_all_templates():
    single = next(it.attributes for it in ITEMS if it.attributes["layout"] == "single")
    pair = next(it.attributes for it in ITEMS if it.attributes["layout"] == "pair")
    assert len(set(shapes_references(single))) == len(shapes.SINGLE_TEMPLATES)
    assert len(set(shapes_references(pair))) == len(shapes.PAIR_TEMPLATES[pair["relation"]])


def test_parse_and_score_details():
    attrs = {
        "background": "blue",
        "layout": "single",
        "relation": None,
        "objects": [{"shape": "circle", "colour": "red", "size": "large", "position": "left"}],
    }
    parsed = parse_caption("A large red circle on the left, on a blue background.")
    assert parsed["background"] == "blue" and parsed["positions"] == ["left"]
    assert parsed["objects"] == [{"colour": "red", "shape": "circle", "size": "large"}]
    assert score_caption("a small red square at the top on a blue background", attrs) == {
        "background": [True],
        "colour": [True],
        "shape": [False],
        "position": [False],
        "size": [False],
    }
    assert score_caption("a red circle on a blue background", attrs) == {  # position, size not stated
        "background": [True],
        "colour": [True],
        "shape": [True],
    }
    pair = {
        "background": "white",
        "layout": "pair",
        "relation": "left of",
        "objects": [
            {"shape": "square", "colour": "red", "size": "small", "position": "left"},
            {"shape": "circle", "colour": "green", "size": "small", "position": "right"},
        ],
    }
    assert score_caption("a green circle to the right of a red square on a white background", pair)["relation"] == [
        True
    ]
    assert score_caption("a green circle to the left of a red square on a white background", pair)["relation"] == [
        False
    ]
    out = score_captions({"a": "nothing useful"}, {"a": pair}, tokenizer="python")
    assert out["accuracy"]["relation"] is None and out["stated"]["relation"] == 0.0
    with pytest.raises(ValueError, match="no attributes"):
        score_captions({"zz": "a"}, {"a": pair})
