"""`optim.text_lr` (unfrozen text modules at their own rate) and `log.count_flops` (training FLOPs in the log).

Both exist for the paper's ablations (issue 11): the `unfrozen` variant trains the text modules at a
small rate, and the comparison table reports each run's training FLOPs.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from toy_workload import ToyWorkload, make_config, toy_factories

from lmfusion_cli.common.checkpoint_layout import list_checkpoints
from lmfusion_cli.common.configs import build_config
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.training.config import OptimConfig, ScheduleConfig, TrainRunConfig
from lmfusion_cli.training.loop import run_training
from lmfusion_cli.training.optim import build_lr_scheduler, build_optimizer
from lmfusion_cli.training.train_log import read_jsonl


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


class _TwoPart(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.base = torch.nn.Linear(4, 4)  # "text modules"
        self.expert = torch.nn.Linear(4, 4)  # "image modules"


def test_text_lr_gives_the_text_parameters_their_own_rate_through_the_schedule():
    model = _TwoPart()
    named = list(model.named_parameters())
    optim = OptimConfig(lr=1e-3, text_lr=1e-5)
    opt = build_optimizer(named, optim, text_prefix="base.")
    rate = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert {rate[id(p)] for p in model.base.parameters()} == {1e-5}
    assert {rate[id(p)] for p in model.expert.parameters()} == {1e-3}
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay[id(model.base.weight)] == 0.1 and decay[id(model.base.bias)] == 0.0
    scheduler = build_lr_scheduler(opt, optim, ScheduleConfig(steps=10, warmup_steps=2))
    text_group = next(g for g in opt.param_groups if any(p is model.base.weight for p in g["params"]))
    assert text_group["lr"] == pytest.approx(0.5e-5)  # the warmup scales both rates
    opt.step()  # no gradients: nothing moves; torch wants it before scheduler.step()
    scheduler.step()
    assert text_group["lr"] == pytest.approx(1e-5)
    # without text_lr (or without a prefix) every parameter gets optim.lr, in the usual two groups
    for opt in (build_optimizer(named, OptimConfig(lr=1e-3), "base."), build_optimizer(named, optim, "")):
        assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-3]


def test_text_lr_must_be_positive():
    with pytest.raises(UserError, match="optim.text_lr"):
        build_config(TrainRunConfig, {"data": {"latents": "x"}, "train": {"out": "y"}, "optim": {"text_lr": 0}})


class _UnfrozenToy(ToyWorkload):
    """The toy with its "text" modules trainable; `text_parameter_prefix` names the embedding."""

    text_parameter_prefix = "embed."

    def __init__(self):
        super().__init__()
        self.model.requires_grad_(True)


def _unfrozen_factories():
    _, source_factory = toy_factories()
    return (lambda config, source, device: _UnfrozenToy()), source_factory


def _moved(run_dir, name, initial):
    last = list_checkpoints(run_dir / "checkpoints")[-1]
    return float((load_file(str(last.path / "model" / "trainable.safetensors"))[name] - initial).abs().max())


def test_the_loop_gives_text_lr_to_the_workloads_text_parameters(tmp_path):
    torch.manual_seed(0)  # the loop seeds with train.seed (0) before building the workload
    start = _UnfrozenToy().model
    wf, sf = _unfrozen_factories()
    run_training(make_config(tmp_path / "same", data={"generation_fraction": 0.0}), wf, sf)
    run_training(make_config(tmp_path / "slow", data={"generation_fraction": 0.0}, optim={"text_lr": 1e-9}), wf, sf)
    embed = start.embed.weight.detach()
    assert _moved(tmp_path / "same", "embed.weight", embed) > 1e-3
    assert _moved(tmp_path / "slow", "embed.weight", embed) < 1e-6
    # the other trainable parameters keep optim.lr
    assert _moved(tmp_path / "slow", "head.weight", start.head.weight.detach()) > 1e-3


def _flops(run_dir):
    return {r["step"]: r.get("flops") for r in read_jsonl(run_dir / "logs" / "train.jsonl") if "event" not in r}


def test_count_flops_counts_the_first_step_of_each_interval_times_its_steps(tmp_path, monkeypatch):
    from torch.utils.flop_counter import FlopCounterMode

    wf, sf = toy_factories()
    common = dict(data={"generation_fraction": 0.5}, train={"save_every": 0})
    run_training(make_config(tmp_path / "off", **common), wf, sf)
    assert set(_flops(tmp_path / "off").values()) == {None}
    run_training(make_config(tmp_path / "each", **common, log={"count_flops": True}), wf, sf)
    entered = []
    original = FlopCounterMode.__enter__
    monkeypatch.setattr(FlopCounterMode, "__enter__", lambda self: entered.append(1) or original(self))
    run_training(make_config(tmp_path / "third", **common, log={"count_flops": True, "every": 3}), wf, sf)
    each, third = _flops(tmp_path / "each"), _flops(tmp_path / "third")
    assert list(each) == list(range(1, 7)) and all(f > 0 for f in each.values())
    assert len(entered) == 2  # steps 1 and 4 counted, the others run without the counter's overhead
    assert third == {3: 3 * each[1], 6: 3 * each[4]}


def test_counted_flops_include_the_backward_of_trainable_weights_only(tmp_path):
    """Frozen text weights get no weight-gradient matmuls: the frozen run counts fewer FLOPs."""
    frozen_wf, sf = toy_factories()
    unfrozen_wf, _ = _unfrozen_factories()
    common = dict(data={"generation_fraction": 0.0}, train={"save_every": 0}, log={"count_flops": True})
    run_training(make_config(tmp_path / "frozen", **common), frozen_wf, sf)
    run_training(make_config(tmp_path / "unfrozen", **common), unfrozen_wf, sf)
    frozen, unfrozen = _flops(tmp_path / "frozen"), _flops(tmp_path / "unfrozen")
    assert all(unfrozen[s] > frozen[s] for s in frozen)
