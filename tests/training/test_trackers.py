"""Issue 16: `log.report_to` trackers. W&B offline (WANDB_MODE=offline): the run's own `.wandb` file holds
the hyperparameters, the train/val scalars and the validation grid (its PNG next to it); a tracker
whose package is missing is one `error:` line before anything is written; every run ends with a
one-line summary. Tiny shipped LM and VAE, 2 steps."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny_base import cli


def wandb_records(path: Path):
    """The records of a `.wandb` file (a LevelDB-style log after the 7-byte `:W&B` header), each parsed
    with wandb's own protobuf `Record`."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += room
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # full or last fragment
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


@pytest.fixture(scope="module")
def latents(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("trk")
    assert (
        cli(
            "prepare",
            "--source",
            "shapes",
            "--out",
            tmp / "shapes",
            "--num-items",
            16,
            "--resolution",
            64,
            "--val-fraction",
            0.3,
            "--workers",
            1,
        )
        == 0
    )
    assert cli("encode-latents", "--data", tmp / "shapes", "--out", tmp / "latents", "--workers", 0) == 0
    return tmp / "latents"


def _train(latents: Path, out: Path, *extra) -> int:
    return cli(
        "train",
        "--config",
        "pipelines/configs/tiny.yaml",
        "--latents",
        latents,
        "--out",
        out,
        "--steps",
        2,
        "--batch-size",
        2,
        "--micro-batch-size",
        2,
        "--save-every",
        0,
        "--set",
        "log.val_items=2",
        "--set",
        "log.grid_items=2",
        "--set",
        "log.grid_steps=1",
        "--set",
        "train.threads=1",
        *extra,
    )


def test_wandb_offline_run_holds_params_scalars_and_the_grid(latents, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    assert _train(latents, run, "--set", "log.report_to=[wandb]") == 0
    summary = [line for line in capsys.readouterr().out.splitlines() if line.startswith("run summary:")]
    assert len(summary) == 1 and "step 2/2, train loss" in summary[0] and "val_loss" in summary[0]
    assert "wall" in summary[0]
    assert not (run / "logs" / "tb").exists()  # only what report_to names
    (wandb_file,) = (run / "logs" / "wandb").glob("offline-run-*/run-*.wandb")
    records = list(wandb_records(wandb_file))
    history = [
        {item.key or "/".join(item.nested_key): item.value_json for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    logged = {k: json.loads(v) for h in history for k, v in h.items()}
    jsonl = [json.loads(x) for x in (run / "logs" / "train.jsonl").read_text().splitlines()]
    last_train = [r for r in jsonl if "loss" in r and "event" not in r][-1]
    assert logged["train/loss"] == pytest.approx(last_train["loss"])
    assert logged["val/val_loss"] == pytest.approx([r for r in jsonl if r.get("event") == "val"][-1]["val_loss"])
    config = {
        item.key: item.value_json
        for r in records
        if r.WhichOneof("record_type") == "run"
        for item in r.run.config.update
    }
    assert json.loads(config["optim.lr"]) == pytest.approx(2e-3)  # tiny.yaml's, as a hyperparameter
    grids = sorted((wandb_file.parent / "files" / "media" / "images" / "val").glob("grid_*.png"))
    assert len(grids) == 2  # before the first step and at the end
    with Image.open(grids[-1]) as grid:
        assert grid.size[0] >= 2 * 64  # two 64-px images side by side
    assert logged["val/grid/path"].endswith(".png")


def test_a_missing_tracker_package_is_one_line_before_anything_is_written(latents, tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("mlflow") is not None:
        pytest.skip("mlflow is installed here")
    run = tmp_path / "run"
    assert _train(latents, run, "--set", "log.report_to=[mlflow]") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install mlflow" in err[0] and err[0].startswith("error: "), err
    assert not run.exists()


def test_an_unknown_tracker_is_refused(latents, tmp_path, capsys):
    assert _train(latents, tmp_path / "run", "--set", "log.report_to=[comet]") == 2
    assert "log.report_to" in capsys.readouterr().err
