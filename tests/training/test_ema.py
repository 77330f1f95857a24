"""`train.ema`: checkpoints' `model/` holds an exponential moving average of the trainable weights,
training itself is unchanged, and a resume restores the average exactly (state.WeightAverage)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from toy_workload import ToyModel, make_config, toy_factories

from lmfusion_cli.common.checkpoint_layout import list_checkpoints
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.training.loop import run_training
from lmfusion_cli.training.train_log import read_jsonl

COMMON = dict(
    schedule={"steps": 6, "warmup_steps": 2, "min_lr": 1e-4},
    data={"generation_fraction": 0.5},
)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.set_num_threads(1)
    yield
    torch.use_deterministic_algorithms(False)


def _weights(run_dir) -> dict[int, dict[str, torch.Tensor]]:
    return {
        c.step: load_file(str(c.path / "model" / "trainable.safetensors"))
        for c in list_checkpoints(run_dir / "checkpoints")
    }


def _losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(run_dir / "logs" / "train.jsonl") if "event" not in r}


def test_model_folder_holds_the_average_of_the_raw_weights(tmp_path):
    wf, sf = toy_factories()
    train = {"deterministic": True, "save_every": 1, "keep_last": 10}
    run_training(make_config(tmp_path / "raw", **COMMON, train=train), wf, sf)
    run_training(make_config(tmp_path / "ema", **COMMON, train={**train, "ema": 0.5}), wf, sf)
    assert _losses(tmp_path / "raw") == _losses(tmp_path / "ema")  # the average never feeds back
    raw, averaged = _weights(tmp_path / "raw"), _weights(tmp_path / "ema")
    assert sorted(raw) == sorted(averaged) == list(range(1, 7))
    torch.manual_seed(0)  # the loop seeds with train.seed before building the workload
    expected = {n: p.detach().clone() for n, p in ToyModel().named_parameters() if p.requires_grad}
    for step in range(1, 7):
        decay = min(0.5, (1 + step) / (10 + step))
        for name in expected:
            expected[name] = decay * expected[name] + (1 - decay) * raw[step][name]
            torch.testing.assert_close(averaged[step][name], expected[name], rtol=1e-6, atol=1e-7)
        assert any(not torch.equal(averaged[step][n], raw[step][n]) for n in expected)


def test_resume_with_ema_equals_uninterrupted(tmp_path):
    wf, sf = toy_factories()
    train = {"deterministic": True, "save_every": 0, "ema": 0.9}
    run_training(make_config(tmp_path / "straight", **COMMON, train=train), wf, sf)
    run_training(make_config(tmp_path / "cut", **COMMON, train={**train, "stop_at": 3}), wf, sf)
    run_training(make_config(tmp_path / "cut", **COMMON, train=train), wf, sf)
    straight, resumed = _weights(tmp_path / "straight")[6], _weights(tmp_path / "cut")[6]
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_ema_is_fixed_on_resume_and_checked(tmp_path):
    wf, sf = toy_factories()
    run_training(make_config(tmp_path / "run", **COMMON, train={"stop_at": 3}), wf, sf)
    with pytest.raises(UserError, match="train.ema"):
        run_training(make_config(tmp_path / "run", **COMMON, train={"ema": 0.99}), wf, sf)
    for bad in (1.0, -0.1):
        with pytest.raises(UserError, match=r"train.ema must be in \[0, 1\)"):
            make_config(tmp_path / "bad", train={"ema": bad})
