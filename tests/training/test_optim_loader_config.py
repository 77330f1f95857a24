"""Optimiser and schedule, the sample stream, the run config, and the launch helpers."""

from __future__ import annotations

import math
import sys
from collections import Counter

import pytest
from toy_workload import ToyModel, ToySource

from lmfusion_cli.common.configs import build_config
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.launch import adopt_slurm_env, relaunch_command, under_launcher
from lmfusion_cli.config import resolve_config
from lmfusion_cli.training.config import DistConfig, OptimConfig, ScheduleConfig, TrainRunConfig
from lmfusion_cli.training.loader import GENERATION, SampleStream
from lmfusion_cli.training.optim import build_lr_scheduler, build_optimizer, lr_factor


def test_schedule_warmup_cosine_floor_and_constant():
    optim, schedule = OptimConfig(lr=1e-4), ScheduleConfig(steps=100, warmup_steps=10, min_lr=1.5e-5)
    factors = [lr_factor(s, optim, schedule) for s in range(100)]
    assert factors[:3] == pytest.approx([0.1, 0.2, 0.3]) and factors[9] == 1.0 and factors[10] == 1.0
    assert factors[-1] * 1e-4 == pytest.approx(1.5e-5)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))  # monotone decay
    middle = 10 + (99 - 10) // 2
    assert factors[middle] * 1e-4 == pytest.approx(1.5e-5 + (1e-4 - 1.5e-5) * 0.5 * (1 + math.cos(math.pi * 44 / 89)))
    constant = ScheduleConfig(steps=100, warmup_steps=0, decay="constant")
    assert {lr_factor(s, optim, constant) for s in range(100)} == {1.0}


def test_adamw_gets_trainable_parameters_only_with_paper_defaults():
    model = ToyModel()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    opt = build_optimizer(named, OptimConfig())
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert ids == {id(p) for _, p in named}
    assert not any(id(p) in ids for n, p in model.named_parameters() if not p.requires_grad)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert decay["betas"] == (0.9, 0.95) and decay["eps"] == 1e-8 and decay["lr"] == 1e-4
    with pytest.raises(ValueError, match="frozen parameter"):
        build_optimizer(list(model.named_parameters()), OptimConfig())
    scheduler = build_lr_scheduler(opt, OptimConfig(), ScheduleConfig(steps=10, warmup_steps=2))
    assert scheduler.get_last_lr()[0] == pytest.approx(0.5e-4)


def test_stream_is_exactly_once_per_epoch_and_resumable_across_epochs():
    source = ToySource(num_items=10)
    stream = SampleStream(source, seed=3, generation_fraction=0.8, caption_dropout=0.1)
    first_epoch = [s for _ in range(5) for s in stream.next_step(2)]
    assert sorted(s.key for s in first_epoch) == sorted(item.key for item in source.items)
    stream.next_step(4)  # crosses into epoch 1 mid-step
    state = stream.state_dict()
    after = [(s.key, s.task, s.caption, s.noise_seed) for s in stream.next_step(4)]
    again = SampleStream(source, seed=3, generation_fraction=0.8, caption_dropout=0.1)
    again.load_state_dict(state)
    resumed = again.next_step(4)
    assert [(s.key, s.task, s.caption, s.noise_seed) for s in resumed] == after
    assert again.epoch == 1
    with pytest.raises(ValueError, match="seed"):
        SampleStream(source, seed=4, generation_fraction=0.8, caption_dropout=0.1).load_state_dict(state)


def test_process_shares_make_up_the_same_global_batch():
    source = ToySource(num_items=12)
    whole = SampleStream(source, 0, 0.5, 0.1).next_step(8)
    parts = [SampleStream(source, 0, 0.5, 0.1).next_step(8, rank=r, world_size=2) for r in range(2)]
    key = lambda s: (s.key, s.task, s.caption, s.noise_seed, s.latent.sum().item())  # noqa: E731
    assert [key(s) for s in parts[0] + parts[1]] == [key(s) for s in whole]


def test_task_mix_and_caption_dropout_rates():
    stream = SampleStream(ToySource(num_items=50), 0, generation_fraction=0.8, caption_dropout=0.1)
    samples = [s for _ in range(100) for s in stream.next_step(40)]
    tasks = Counter(s.task for s in samples)
    assert tasks[GENERATION] / len(samples) == pytest.approx(0.8, abs=0.02)
    generation = [s for s in samples if s.task == GENERATION]
    dropped = sum(s.caption == "" for s in generation) / len(generation)
    assert dropped == pytest.approx(0.1, abs=0.015)
    assert all(s.caption for s in samples if s.task != GENERATION)  # understanding keeps its caption


def test_run_config_errors_name_the_key(tmp_path):
    good = {"data": {"latents": "x"}, "train": {"out": str(tmp_path)}}
    assert build_config(TrainRunConfig, good).optim.beta2 == 0.95
    with pytest.raises(UserError, match="data.latents is required"):
        build_config(TrainRunConfig, {"train": {"out": "x"}})
    with pytest.raises(UserError, match="Unknown config key 'optim.betas'"):
        build_config(TrainRunConfig, {**good, "optim": {"betas": 1}})
    with pytest.raises(UserError, match="multiple of train.micro_batch_size"):
        build_config(TrainRunConfig, {**good, "train": {"out": "x", "batch_size": 6, "micro_batch_size": 4}})
    with pytest.raises(UserError, match="caption_dropout must be in"):
        build_config(TrainRunConfig, {"data": {"latents": "x", "caption_dropout": 2}, "train": {"out": "x"}})
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("data: {latents: a}\ntrain: {out: b}\noptim: {lr: 0.1}\n")
    cfg = resolve_config(TrainRunConfig, yaml_file, ["optim.lr=0.2", "schedule.steps=7"], {"optim.lr": 0.3})
    assert cfg.optim.lr == 0.3 and cfg.schedule.steps == 7


def test_relaunch_under_torchrun_and_slurm_detection():
    assert relaunch_command(DistConfig(gpus=1), ["train"], env={}) is None
    cmd = relaunch_command(DistConfig(gpus=4), ["train", "--gpus", "4"], env={})
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"] and "--standalone" in cmd
    assert cmd[cmd.index("--nproc-per-node") + 1] == "4" and cmd[-4:] == ["lmfusion_cli", "train", "--gpus", "4"]
    assert relaunch_command(DistConfig(gpus=4), ["train"], env={"LOCAL_RANK": "0", "WORLD_SIZE": "4"}) is None
    with pytest.raises(UserError, match="rdzv_endpoint"):
        relaunch_command(DistConfig(gpus=2, nodes=2), ["train"], env={})
    multi = relaunch_command(DistConfig(gpus=2, nodes=2, rdzv_endpoint="h:29500"), ["train"], env={})
    assert multi[multi.index("--nnodes") + 1] == "2" and multi[multi.index("--rdzv-endpoint") + 1] == "h:29500"
    slurm = {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "MASTER_ADDR": "n1"}
    assert under_launcher(slurm) and relaunch_command(DistConfig(gpus=8), ["train"], env=slurm) is None
    env = dict(slurm)
    assert adopt_slurm_env(env) == {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"} and env["RANK"] == "3"
    with pytest.raises(UserError, match="MASTER_ADDR"):
        adopt_slurm_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})


@pytest.mark.parametrize("name", ["tiny", "small-real", "coco-llama3-1b", "paper-llama3-8b"])
def test_pipeline_configs_are_valid(repo_root, name):
    from lmfusion_cli.common.configs import load_config
    from lmfusion_cli.training.config import with_latent_geometry

    config = load_config(TrainRunConfig, f"{repo_root}/pipelines/configs/{name}.yaml")
    assert config.model.latent_size is None  # the size comes from the cache
    assert with_latent_geometry(config.model, 4, 32).num_image_tokens > 0
    assert config.optim.beta2 == 0.95 and config.data.caption_dropout == 0.1
    if name == "tiny":  # the measured small-image recipe (docs/training.md "Small images")
        assert config.data.generation_fraction == 0.3 and config.model.lambda_image == 0.3  # issue 23 sweep
        assert (config.data.interleaved_fraction, config.data.text_only_fraction) == (0.2, 0.1)  # issue 18
        assert config.model.patcher == "linear" and config.model.timestep_shift == 6.0
    else:  # the paper's
        assert config.data.generation_fraction == 0.8 and config.model.lambda_image == 5.0
    if name == "paper-llama3-8b":
        assert (config.optim.lr, config.schedule.warmup_steps, config.schedule.min_lr) == (1e-4, 4000, 1.5e-5)
