"""Image decoding/cropping and the webdataset shard writer/reader (truncation, bad members)."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
from PIL import Image

from lmfusion_cli.data.images import BadImage, decode_image, encode_image, resize_center_crop
from lmfusion_cli.data.shards import Sample, iter_samples, safe_key, scan_shard, write_shard

from .helpers import image_bytes, truncated_jpeg


def test_decode_reasons():
    assert decode_image(image_bytes()).mode == "RGB"
    rgba = io.BytesIO()
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(rgba, format="PNG")
    assert decode_image(rgba.getvalue()).getpixel((0, 0)) == (255, 255, 255)  # transparent → white
    for data, reason in [(b"", "empty-image"), (b"garbage", "corrupt-image"), (truncated_jpeg(), "truncated-image")]:
        with pytest.raises(BadImage) as e:
            decode_image(data)
        assert e.value.reason == reason


def test_resize_center_crop_takes_the_middle():
    img = Image.new("RGB", (120, 60), (0, 0, 255))
    img.paste((255, 0, 0), (30, 0, 90, 60))  # red middle square
    out = resize_center_crop(img, 32)
    assert out.size == (32, 32)
    assert out.getpixel((16, 16)) == (255, 0, 0) and out.getpixel((1, 16))[0] > 200
    same = Image.new("RGB", (32, 32), (1, 2, 3))
    assert resize_center_crop(same, 32) is same


def _samples(n=4):
    return [
        Sample(f"k{i}", encode_image(Image.new("RGB", (8, 8), (i, 0, 0)), "png"), "png", f"caption {i}", {"i": i})
        for i in range(n)
    ]


def test_write_is_deterministic_and_readable(tmp_path):
    write_shard(tmp_path / "a.tar", _samples())
    write_shard(tmp_path / "b.tar", _samples())
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tar:
        assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in tar)
    got = list(iter_samples(tmp_path / "a.tar"))
    assert [s["key"] for s in got] == ["k0", "k1", "k2", "k3"]
    assert got[2]["caption"] == "caption 2" and got[2]["meta"] == {"i": 2}
    assert Image.open(io.BytesIO(got[3]["image"])).getpixel((0, 0)) == (3, 0, 0)
    assert safe_key("a/b.c d") == "a_b_c_d"


@pytest.mark.parametrize("cut", ["mid-member", "between-samples"])
def test_truncated_shard_keeps_members_before_the_cut(tmp_path, cut):
    write_shard(tmp_path / "s.tar", _samples(6))
    data = (tmp_path / "s.tar").read_bytes()
    with tarfile.open(tmp_path / "s.tar") as tar:
        members = tar.getmembers()
    # members come as (png, txt, json) per key; cut inside key k3's image, or right after k2's json
    end_k2 = members[8].offset_data + 512
    cut_at = members[9].offset_data + 10 if cut == "mid-member" else end_k2
    (tmp_path / "t.tar").write_bytes(data[:cut_at])
    scan = scan_shard(tmp_path / "t.tar")
    assert [s.key for s in scan.samples] == ["k0", "k1", "k2"]
    assert scan.truncated and scan.log.skipped["truncated-shard"] == 1
    assert scan.log.items[0]["key"] == "t.tar"
    if cut == "mid-member":
        assert scan.log.skipped["cut-by-truncation"] == 1


def test_bad_members_are_counted_by_reason_and_key(tmp_path):
    path = tmp_path / "bad.tar"
    members = [
        ("a.png", image_bytes()),
        ("a.txt", b"ok"),
        ("b.png", image_bytes()),
        ("b.txt", b"\xff\xfe not utf-8"),
        ("c.png", image_bytes()),
        ("d.txt", b"caption only"),
        ("e.gif", b"GIF89a"),
        ("e.txt", b"gif"),
        ("f.png", image_bytes()),
        ("f.txt", b"x"),
        ("f.json", b"{not json"),
        ("g.png", image_bytes()),
        ("g.txt", b"   "),
    ]
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    scan = scan_shard(path)
    assert [s.key for s in scan.samples] == ["a"]
    reasons = {item["key"]: item["reason"] for item in scan.log.items}
    assert reasons == {
        "b": "bad-caption-encoding",
        "c": "missing-caption",
        "d": "missing-image",
        "e": "unsupported-extension",
        "f": "bad-json",
        "g": "empty-caption",
    }
    assert json.dumps(scan.log.counts())  # JSON-able for the manifest
