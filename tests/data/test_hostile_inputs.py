"""Issue 17: bad records, hostile paths and hostile images at `prepare` are skipped and counted by
reason (never fatal, never read outside the input's root), 16-bit grayscale keeps its values, an
over-long caption is cut and counted, and an input with no usable item is refused in one line."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from lmfusion_cli.common.configs import build_config
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.data.config import PrepareConfig
from lmfusion_cli.data.images import BadImage, decode_image
from lmfusion_cli.data.prepare import run_prepare

from .helpers import image_bytes, make_coco


def prepare(tmp_path, **kw):
    kw = {"out": str(tmp_path / "out"), "resolution": 16, "val_fraction": 0.0, "test_fraction": 0.0, **kw}
    return run_prepare(build_config(PrepareConfig, kw))


def reasons(manifest) -> dict[str, str]:
    return {s["key"]: s["reason"] for s in manifest["skipped_items"]}


def png16(values: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(values.astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def test_16_bit_grayscale_is_scaled_by_its_bit_depth():
    gradient = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (4, 1))  # (4, 256)
    img = decode_image(png16(gradient))
    red = np.asarray(img)[..., 0].astype(int)
    assert img.mode == "RGB"
    assert np.abs(red - np.rint(gradient / 257)).max() <= 1  # 65535 → 255, 32768 → 128
    assert (red == 255).mean() < 0.01  # was 99.6 % white
    assert decode_image(png16(np.full((2, 2), 32768))).getpixel((0, 0)) == (128, 128, 128)


def test_an_image_over_the_pixel_cap_is_skipped_as_too_large_before_decoding(tmp_path):
    buf = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buf, format="PNG")  # 81 MP, a few KB on disk
    with pytest.raises(BadImage, match="too-large"):
        decode_image(buf.getvalue())
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "big.png").write_bytes(image_bytes(size=(40, 30)))
    (tmp_path / "src" / "big.txt").write_text("big")
    (tmp_path / "src" / "ok.png").write_bytes(image_bytes(size=(20, 20)))
    (tmp_path / "src" / "ok.txt").write_text("ok")
    m = prepare(tmp_path, source="folder", input=str(tmp_path / "src"), max_pixels=400)
    assert reasons(m) == {"big": "too-large"} and m["counts"]["kept"] == 1


def test_bad_jsonl_records_are_skipped_and_counted(tmp_path):
    (tmp_path / "x.png").write_bytes(image_bytes())
    lines = [{"image": 123, "caption": "a number"}, {"image": "x.png", "caption": "fine"}, ["not", "an", "object"]]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    m = prepare(tmp_path, source="jsonl", input=str(tmp_path / "p.jsonl"))
    assert m["counts"]["skipped"] == {"bad-record": 2} and m["counts"]["kept"] == 1


def test_bad_coco_records_are_skipped_and_counted(tmp_path):
    make_coco(tmp_path / "coco")
    ann_file = tmp_path / "coco" / "annotations" / "captions_val2017.json"
    data = json.loads(ann_file.read_text())
    data["annotations"].append({"id": 999, "caption": "no image id"})
    data["images"].append({"id": 50, "width": 1, "height": 1})  # no file_name
    ann_file.write_text(json.dumps(data))
    m = prepare(tmp_path, source="coco", input=str(tmp_path / "coco"))
    assert m["counts"]["skipped"]["bad-record"] == 2 and m["counts"]["kept"] == 2

    karpathy = {
        "images": [
            {"cocoid": 1, "filepath": "val2017", "filename": "a.jpg", "sentences": ["a string"]},
            {"cocoid": 2, "filepath": "val2017", "filename": "b.png", "sentences": [{"raw": "g"}]},
        ]
    }
    (tmp_path / "k.json").write_text(json.dumps(karpathy))
    m = prepare(
        tmp_path,
        source="coco",
        input=str(tmp_path / "coco"),
        karpathy_split=str(tmp_path / "k.json"),
        out=str(tmp_path / "out2"),
    )
    assert m["counts"]["skipped"] == {"bad-record": 1} and m["counts"]["kept"] == 1


def test_bad_imagefolder_rows_are_skipped_and_counted(tmp_path):
    root = tmp_path / "if"
    root.mkdir()
    (root / "p.png").write_bytes(image_bytes())
    (tmp_path / "secret.png").write_bytes(image_bytes())
    rows = [
        {"file_name": "p.png", "text": "pee"},
        {"file_name": str(tmp_path / "secret.png"), "text": "abs"},
        ["a", "list"],
        {"file_name": "../secret.png", "text": "up"},
    ]
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    m = prepare(tmp_path, source="imagefolder", input=str(root))
    assert m["counts"]["skipped"] == {"bad-record": 1, "outside-root": 2} and m["counts"]["kept"] == 1


def test_sources_are_confined_to_their_root_unless_allowed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "s.png").write_bytes(image_bytes())
    src = tmp_path / "src"
    src.mkdir()
    (src / "in.png").write_bytes(image_bytes())
    lines = [
        {"image": "in.png", "caption": "in"},
        {"image": "../outside/s.png", "caption": "dots", "key": "dots"},
        {"image": str(outside / "s.png"), "caption": "absolute", "key": "abs"},
    ]
    (src / "p.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    m = prepare(tmp_path, source="jsonl", input=str(src / "p.jsonl"))
    assert reasons(m) == {"dots": "outside-root", "abs": "outside-root"} and m["counts"]["kept"] == 1
    m = prepare(
        tmp_path, source="jsonl", input=str(src / "p.jsonl"), allow_outside_root=True, out=str(tmp_path / "out2")
    )
    assert m["counts"]["kept"] == 3

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "ok.png").write_bytes(image_bytes())
    (folder / "ok.txt").write_text("ok")
    os.symlink(outside / "s.png", folder / "link.png")
    (folder / "link.txt").write_text("a symlink leaving the root")
    m = prepare(tmp_path, source="folder", input=str(folder), out=str(tmp_path / "out3"))
    assert reasons(m) == {"link": "outside-root"} and m["counts"]["kept"] == 1


def test_a_long_caption_is_cut_and_counted(tmp_path):
    (tmp_path / "x.png").write_bytes(image_bytes())
    (tmp_path / "y.png").write_bytes(image_bytes())
    long = " ".join(["word"] * 10_000)  # 50 KB
    (tmp_path / "p.jsonl").write_text(
        json.dumps({"image": "x.png", "caption": long}) + "\n" + json.dumps({"image": "y.png", "caption": "short"})
    )
    m = prepare(tmp_path, source="jsonl", input=str(tmp_path / "p.jsonl"))
    assert m["captions_truncated"] == 1 and m["counts"]["kept"] == 2
    import webdataset as wds

    texts = [s["txt"].decode() for s in wds.WebDataset(str(tmp_path / "out" / "train-00000.tar"), shardshuffle=False)]
    assert max(map(len, texts)) <= 2000 and "short" in texts


def test_an_input_with_no_usable_item_is_refused_before_writing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no usable image/caption items"):
        prepare(tmp_path, source="folder", input=str(tmp_path / "empty"))
    assert not (tmp_path / "out").exists()
