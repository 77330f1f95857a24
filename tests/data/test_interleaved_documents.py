"""Interleaved documents in `prepare`: shapes items get "Here is a picture of …: <image> …" documents
that match their attributes; JSONL `parts` become one item per image with the text around it; bad
documents are skipped and counted."""

from __future__ import annotations

import json

import webdataset as wds

from lmfusion_cli.common.configs import build_config
from lmfusion_cli.data.config import PrepareConfig
from lmfusion_cli.data.interleaved import INTRO_TEMPLATES, jsonl_items
from lmfusion_cli.data.prepare import run_prepare

from .helpers import image_bytes


def _samples(folder):
    urls = [str(p) for p in sorted(folder.glob("*.tar"))]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def test_shapes_interleaved_documents_follow_the_item(tmp_path):
    m = run_prepare(build_config(PrepareConfig, {"out": str(tmp_path / "i"), "num_items": 60, "interleaved": True}))
    plain = run_prepare(build_config(PrepareConfig, {"out": str(tmp_path / "p"), "num_items": 60}))
    assert m["counts"]["kept"] == plain["counts"]["kept"] == 60
    intros, follow_ups = set(), set()
    for sample in _samples(tmp_path / "i"):
        meta, caption = json.loads(sample["json"]), sample["txt"].decode()
        doc = meta["document"]
        assert doc["before"].endswith(caption + ":") and doc["before"][0].isupper()
        assert doc["after"].endswith(".")
        attrs = meta["attributes"]
        words = {attrs["background"]} | {o["shape"] for o in attrs["objects"]} | {o["colour"] for o in attrs["objects"]}
        assert any(w in doc["after"] for w in words) or doc["after"] == "There are two shapes."
        intros.add(doc["before"][: doc["before"].index(caption)])
        follow_ups.add(doc["after"].split()[1])
    assert len(intros) >= 3 and len(follow_ups) >= 3  # several templates
    assert all("document" not in json.loads(s["json"]) for s in _samples(tmp_path / "p"))
    assert INTRO_TEMPLATES[0].startswith("Here is a picture of")


def test_jsonl_interleaved_documents(tmp_path):
    (tmp_path / "a.png").write_bytes(image_bytes((200, 0, 0)))
    (tmp_path / "b.png").write_bytes(image_bytes((0, 0, 200)))
    lines = [
        {
            "key": "doc1",
            "parts": [
                {"text": "A red one:"},
                {"image": "a.png"},
                {"text": "Then a blue one:"},
                {"image": "b.png", "caption": "blue"},
                {"text": "The end."},
            ],
        },
        {"key": "doc2", "parts": [{"text": "no image here"}]},  # skipped: no image
        {"key": "doc3", "parts": [{"text": "x"}, {"video": "v.mp4"}]},  # skipped: unknown part
        {"key": "doc4", "parts": "not a list"},
        {"image": "a.png", "caption": "a plain pair still works", "key": "pair"},
    ]
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    m = run_prepare(
        build_config(
            PrepareConfig,
            {
                "source": "jsonl",
                "input": str(tmp_path / "docs.jsonl"),
                "out": str(tmp_path / "out"),
                "resolution": 16,
                "val_fraction": 0.0,
                "test_fraction": 0.0,
            },
        )
    )
    assert m["counts"]["kept"] == 3 and m["counts"]["skipped"] == {"bad-record": 3}
    got = {s["__key__"]: (s["txt"].decode(), json.loads(s["json"])) for s in _samples(tmp_path / "out")}
    assert got["doc1-0"][0] == "A red one:" and got["doc1-0"][1]["document"] == {
        "before": "A red one:",
        "after": "Then a blue one:",
    }
    assert got["doc1-1"][0] == "blue" and got["doc1-1"][1]["document"] == {
        "before": "Then a blue one:",
        "after": "The end.",
    }
    assert "document" not in got["pair"][1]


def test_jsonl_items_splits_text_around_each_image():
    parts = [{"image": "1.png"}, {"text": "one"}, {"text": "two"}, {"image": "2.png"}]
    assert jsonl_items(parts) == [
        ("1.png", {"before": "", "after": "one two"}, None),
        ("2.png", {"before": "one two", "after": ""}, None),
    ]
