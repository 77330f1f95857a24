"""Every `prepare` / `encode-latents` command-line option reaches the stage config (stage stubbed out)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from lmfusion_cli.cli import app


@pytest.fixture
def captured(monkeypatch):
    import lmfusion_cli.data.encode as encode
    import lmfusion_cli.data.prepare as prepare

    got = {}
    monkeypatch.setattr(prepare, "run_prepare", lambda cfg: got.setdefault("cfg", cfg))
    monkeypatch.setattr(encode, "run_encode", lambda cfg: got.setdefault("cfg", cfg))
    return got


def invoke(*args):
    return CliRunner().invoke(app, list(args))


def test_prepare_options(captured, tmp_path):
    r = invoke(
        "prepare",
        "--source",
        "coco",
        "--coco-root",
        "/c",
        "--karpathy-split",
        "/k.json",
        "--out",
        "/o",
        "--num-items",
        "7",
        "--seed",
        "3",
        "--resolution",
        "32",
        "--shard-size",
        "5",
        "--workers",
        "4",
        "--overwrite",
        "--set",
        "image_format=jpg",
        "--set",
        "val_fraction=0.2",
    )
    assert r.exit_code == 0, r.output
    c = captured["cfg"]
    assert (c.source, c.input, c.karpathy_split, c.out) == ("coco", "/c", "/k.json", "/o")
    assert (c.num_items, c.seed, c.resolution, c.shard_size, c.workers, c.overwrite) == (7, 3, 32, 5, 4, True)
    assert (c.image_format, c.val_fraction) == ("jpg", 0.2)
    captured.clear()
    (tmp_path / "p.yaml").write_text("source: folder\ninput: /from-yaml\nout: /o\nresolution: 16\n")
    r = invoke("prepare", "--config", str(tmp_path / "p.yaml"), "--input", "/cli")
    assert r.exit_code == 0, r.output
    assert captured["cfg"].input == "/cli" and captured["cfg"].resolution == 16  # CLI > YAML


def test_encode_options(captured):
    r = invoke(
        "encode-latents",
        "--data",
        "/d",
        "--out",
        "/l",
        "--vae",
        "/v",
        "--resolution",
        "128",
        "--batch-size",
        "9",
        "--workers",
        "0",
        "--gpus",
        "3",
        "--dtype",
        "bf16",
        "--store",
        "sample",
        "--flip",
        "--seed",
        "5",
        "--overwrite",
    )
    assert r.exit_code == 0, r.output
    c = captured["cfg"]
    assert (c.data, c.out, c.vae, c.resolution, c.batch_size, c.workers, c.gpus) == ("/d", "/l", "/v", 128, 9, 0, 3)
    assert (c.dtype, c.store, c.flip, c.seed, c.overwrite) == ("bf16", "sample", True, 5, True)


def test_encode_bad_input_exit_2(captured, capsys):
    from lmfusion_cli.cli import main

    for args, needle in [
        (["--data", "/d", "--out", "/l", "--dtype", "fp8"], "dtype"),
        (["--out", "/l"], "--data"),
        (["--data", "/d", "--out", "/l", "--gpus", "0"], "gpus"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(["encode-latents", *args])
        assert e.value.code == 2, args
        assert needle in capsys.readouterr().err, args
    assert "cfg" not in captured  # refused before the stage ran


def test_encode_refuses_a_folder_without_manifest(tmp_path, capsys):
    from lmfusion_cli.cli import main

    with pytest.raises(SystemExit) as e:
        main(["encode-latents", "--data", str(tmp_path), "--out", str(tmp_path / "l"), "--vae", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and str(tmp_path) in err and "Traceback" not in err
