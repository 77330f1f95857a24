"""Sampling files: prompt lists, image lists, deterministic PNG bytes, grids, JSONL."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.sampling.io import (
    GRID_GAP,
    list_images,
    make_grid,
    png_bytes,
    read_prompts,
    to_uint8,
    write_jsonl,
)


def test_read_prompts_txt_and_jsonl(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("a red circle\n\n  a blue square on green  \n")
    assert read_prompts(txt) == ["a red circle", "a blue square on green"]
    jl = tmp_path / "p.jsonl"
    jl.write_text(json.dumps({"prompt": "x"}) + "\n\n" + json.dumps({"prompt": "", "id": 3}) + "\n")
    assert read_prompts(jl) == ["x", ""]  # an empty prompt in JSONL is the unconditional one, on purpose


def test_read_prompts_errors_are_one_sentence(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(UserError, match="holds no prompts"):
        read_prompts(empty)
    with pytest.raises(UserError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt key"}\n')
    with pytest.raises(UserError, match="Line 2 of"):
        read_prompts(bad)


def test_list_images_expands_folders_sorted_and_keeps_missing_files(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("b.png", "a.JPG", "notes.txt"):
        (folder / name).write_bytes(b"x")
    got = list_images([folder, tmp_path / "missing.png"])
    assert [p.name for p in got] == ["a.JPG", "b.png", "missing.png"]
    (tmp_path / "none").mkdir()
    with pytest.raises(UserError, match="holds no images"):
        list_images([tmp_path / "none"])


def test_to_uint8_maps_range_and_clamps():
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    out = to_uint8(x)
    assert out.shape == (1, 1, 5, 3) and out.dtype == np.uint8
    assert out[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]  # 127.5 rounds half to even → 128


def test_png_bytes_are_deterministic_lossless_and_metadata_free(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    a, b = png_bytes(array), png_bytes(array.copy())
    assert a == b
    img = Image.open(io.BytesIO(a))
    assert np.array_equal(np.asarray(img), array)
    assert not {k for k in img.info if k not in ("dpi",)}  # no text/time chunks
    other = array.copy()
    other[0, 0, 0] ^= 1
    assert png_bytes(other) != a


def test_make_grid_layout():
    tiles = [np.full((4, 5, 3), k * 40, np.uint8) for k in range(5)]
    grid = make_grid(tiles, columns=3)
    assert grid.shape == (2 * 4 + GRID_GAP, 3 * 5 + 2 * GRID_GAP, 3)
    assert (grid[0:4, 0:5] == 0).all() and (grid[4 + GRID_GAP :, 5 + GRID_GAP : 10 + GRID_GAP] == 160).all()
    assert (grid[4 + GRID_GAP :, 2 * (5 + GRID_GAP) :] == 255).all()  # empty sixth cell stays white
    assert make_grid(tiles).shape[1] == 3 * 5 + 2 * GRID_GAP  # auto: ceil(sqrt(5)) = 3 columns


def test_write_jsonl_sorted_keys_one_object_per_line(tmp_path):
    write_jsonl(tmp_path / "s.jsonl", [{"b": 1, "a": "é"}, {"c": None}])
    lines = (tmp_path / "s.jsonl").read_text(encoding="utf-8").splitlines()
    assert lines == ['{"a": "é", "b": 1}', '{"c": null}']
