"""Issue 16's training rough edges: a base that cannot be loaded is one `error:` line (exit 2) and
leaves no run folder; a resume with another `schedule.steps` keeps the saved LR schedule and says so."""

from __future__ import annotations

import logging

import pytest
import torch
from tiny_base import cli, write_fake_cache
from toy_workload import make_config, toy_factories

from lmfusion_cli.training.loop import run_training
from lmfusion_cli.training.optim import lr_factor
from lmfusion_cli.training.train_log import read_jsonl


@pytest.mark.parametrize("base", ["someone/no-such-model", "folder-that-is-not-there/x"])
def test_unloadable_base_is_one_line_exit_2_and_writes_nothing(base, tmp_path, capsys):
    cache = write_fake_cache(tmp_path / "lat")
    run = tmp_path / "run"
    assert cli("train", "--base", base, "--latents", cache, "--out", run, "--steps", 1) == 2  # offline: no hub
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: The base model {base} cannot be loaded ("), err
    assert "--base" in err[0]
    assert not run.exists()


def test_resume_with_more_steps_keeps_the_saved_schedule(tmp_path, caplog):
    torch.set_num_threads(1)
    wf, sf = toy_factories()
    schedule = {"steps": 4, "warmup_steps": 1, "min_lr": 1e-4}
    run_training(make_config(tmp_path / "run", schedule=schedule, train={"save_every": 0}), wf, sf)
    longer = make_config(tmp_path / "run", schedule={**schedule, "steps": 8}, train={"save_every": 0})
    with caplog.at_level(logging.WARNING, logger="lmfusion_cli.training.resume"):
        result = run_training(longer, wf, sf)
    assert result.step == 8  # training goes on to the new end
    assert "schedule.steps changed from 4 to 8 on resume" in caplog.text
    lrs = {r["step"]: r["lr"] for r in read_jsonl(tmp_path / "run" / "logs" / "train.jsonl") if "lr" in r}
    first = make_config(tmp_path / "x", schedule=schedule)
    expected = [first.optim.lr * lr_factor(s - 1, first.optim, first.schedule) for s in range(1, 9)]
    assert [lrs[s] for s in range(1, 9)] == pytest.approx(expected)  # no jump: the 4-step curve, then min_lr
    assert lrs[5] == pytest.approx(1e-4) and lrs[8] == pytest.approx(1e-4)
