"""The training loop on a toy workload, one process: resume exactness, non-finite steps, signals, logs."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from toy_workload import ToyModel, ToyWorkload, make_config, toy_factories

from lmfusion_cli.common.checkpoint_layout import list_checkpoints
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.training.loop import TrainingStopped, run_training
from lmfusion_cli.training.train_log import read_jsonl

STEPS = dict(steps=9, warmup_steps=2, min_lr=1e-4)


def step_losses(run_dir):
    return {r["step"]: r["loss"] for r in read_jsonl(run_dir / "logs" / "train.jsonl") if "event" not in r}


def final_weights(run_dir):
    last = list_checkpoints(run_dir / "checkpoints")[-1]
    return last.step, load_file(str(last.path / "model" / "trainable.safetensors"))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.set_num_threads(1)
    yield
    torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("stop_at", [3, 6], ids=["mid-epoch", "epoch-boundary"])
def test_resume_equals_uninterrupted(tmp_path, stop_at):
    """2k steps straight == k steps, resume, k more (batch 4 = 2 micro-batches of 2: the resume
    point is a gradient-accumulation boundary); 24 items = 6 steps per epoch."""
    wf, sf = toy_factories()
    common = dict(schedule=STEPS, data={"generation_fraction": 0.5}, train={"deterministic": True, "save_every": 0})
    run_training(make_config(tmp_path / "straight", **common), wf, sf)
    cut = make_config(tmp_path / "cut", **{**common, "train": {**common["train"], "stop_at": stop_at}})
    first = run_training(cut, wf, sf)
    assert first.step == stop_at and [c.step for c in list_checkpoints(tmp_path / "cut" / "checkpoints")] == [stop_at]
    second = run_training(make_config(tmp_path / "cut", **common), wf, sf)
    assert second.step == 9 and len(second.losses) == 9 - stop_at
    straight, resumed = step_losses(tmp_path / "straight"), step_losses(tmp_path / "cut")
    assert list(resumed) == list(range(1, 10))
    assert resumed == straight
    (s_step, s_w), (r_step, r_w) = final_weights(tmp_path / "straight"), final_weights(tmp_path / "cut")
    assert s_step == r_step == 9 and s_w.keys() == r_w.keys()
    assert all(torch.equal(s_w[k], r_w[k]) for k in s_w)


def test_only_trainable_weights_are_saved_and_frozen_ones_never_move(tmp_path):
    wf, sf = toy_factories()
    run_training(make_config(tmp_path / "run", data={"generation_fraction": 0.5}), wf, sf)
    _, weights = final_weights(tmp_path / "run")
    torch.manual_seed(0)  # the loop seeds with train.seed before building the workload
    fresh = ToyModel()
    trainable = {n for n, p in fresh.named_parameters() if p.requires_grad}
    assert set(weights) == trainable
    assert any(not torch.equal(weights[n], dict(fresh.named_parameters())[n]) for n in trainable)


def test_nan_sample_is_skipped_counted_and_named(tmp_path):
    wf, sf = toy_factories(nan_keys=("item-0005",))
    result = run_training(make_config(tmp_path / "run", schedule={"steps": 6}), wf, sf)
    records = read_jsonl(tmp_path / "run" / "logs" / "train.jsonl")
    bad = [r for r in records if r.get("event") == "nonfinite"]
    assert len(bad) == 1 and bad[0]["keys"] == ["item-0005"]
    assert result.skipped_steps == 1 and result.step == 6
    steps = [r for r in records if "event" not in r]
    assert [r["skipped"] for r in steps].count(True) == 1 and steps[-1]["skipped_total"] == 1
    _, weights = final_weights(tmp_path / "run")
    assert all(torch.isfinite(w).all() for w in weights.values())


class PoisonFrom(ToyWorkload):
    """The loss turns NaN from the 7th micro-batch on (step 4, 2 micro-batches per step)."""

    calls = 0

    def loss_sums(self, model, micro, noise_seeds):
        PoisonFrom.calls += 1
        out = super().loss_sums(model, micro, noise_seeds)
        if PoisonFrom.calls >= 7:
            out.image = out.image * float("nan")
            out.per_sample = out.per_sample * float("nan")
        return out


def test_nonfinite_steps_in_a_row_stop_the_run_without_a_poisoned_checkpoint(tmp_path):
    _, sf = toy_factories()
    PoisonFrom.calls = 0
    config = make_config(tmp_path / "run", schedule={"steps": 30}, train={"save_every": 1, "max_bad_steps": 2})
    with pytest.raises(TrainingStopped) as err:
        run_training(config, lambda c, s, d: PoisonFrom(), sf)
    message = str(err.value)
    assert message.startswith("Stopped at step 5: the loss or gradient was not finite for 2 steps in a row")
    assert "item-00" in message and "the last good checkpoint is step-00000003" in message
    assert [c.step for c in list_checkpoints(tmp_path / "run" / "checkpoints")] == [2, 3]
    bad = [r for r in read_jsonl(tmp_path / "run" / "logs" / "train.jsonl") if r.get("event") == "nonfinite"]
    assert [r["step"] for r in bad] == [4, 5] and all(len(r["keys"]) == 4 for r in bad)


class SignalOnce(ToyWorkload):
    calls = 0

    def loss_sums(self, model, micro, noise_seeds):
        SignalOnce.calls += 1
        if SignalOnce.calls == 5:  # in step 3 (2 micro-batches per step)
            os.kill(os.getpid(), signal.SIGTERM)
        return super().loss_sums(model, micro, noise_seeds)


def test_sigterm_saves_a_checkpoint_and_returns(tmp_path):
    _, sf = toy_factories()
    SignalOnce.calls = 0
    config = make_config(tmp_path / "run", train={"save_every": 0})
    result = run_training(config, lambda c, s, d: SignalOnce(), sf)
    assert result.stopped_by_signal and result.step == 3
    assert [c.step for c in list_checkpoints(tmp_path / "run" / "checkpoints")] == [3]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))
    again = run_training(config, *toy_factories())
    assert again.step == 6 and len(again.losses) == 3


def test_resume_refuses_a_changed_config(tmp_path):
    wf, sf = toy_factories()
    run_training(make_config(tmp_path / "run", train={"stop_at": 2}), wf, sf)
    with pytest.raises(UserError, match="config key 'optim' changed"):
        run_training(make_config(tmp_path / "run", optim={"lr": 1e-2}), wf, sf)
    with pytest.raises(UserError, match="already holds checkpoints"):
        run_training(make_config(tmp_path / "run", train={"resume": "never"}), wf, sf)


def test_logs_jsonl_tensorboard_and_validation(tmp_path):
    wf, sf = toy_factories()
    config = make_config(tmp_path / "run", data={"val_split": "val"}, log={"tensorboard": True, "val_every": 3})
    run_training(config, wf, sf)
    records = read_jsonl(tmp_path / "run" / "logs" / "train.jsonl")
    steps = [r for r in records if "event" not in r]
    assert [r["step"] for r in steps] == list(range(1, 7))
    for key in (
        "loss",
        "text_loss",
        "image_loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "images_per_s",
        "memory_mb",
        "cpu_s",
    ):
        assert all(isinstance(r[key], float) for r in steps), key
    assert steps[0]["lr"] == pytest.approx(3e-3 / 2)  # warmup 2 steps
    vals = [r for r in records if r.get("event") == "val"]
    assert [v["step"] for v in vals] == [0, 3, 6] and all(v["val_loss"] > 0 and "val_caption_loss" in v for v in vals)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "logs" / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "train/loss" in tags and "val/val_loss" in tags
    assert [e.step for e in events.Scalars("train/image_loss")] == list(range(1, 7))


def test_compile_option_compiles_every_unit(tmp_path, monkeypatch):
    """train.compile wraps each FSDP unit's modules (inductor itself takes ~150 s on this CPU: measured
    once, same losses as eager; here only the wiring is checked)."""
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    result = run_training(
        make_config(tmp_path / "run", train={"compile": True}, schedule={"steps": 1}), *toy_factories()
    )
    assert result.step == 1
    assert len(compiled) == 2 and all(type(m).__name__ == "ToyLayer" for m in compiled)


PREVIOUS_LAYOUT = Path(__file__).parent / "data" / "step-00000003-v1"
"""Step 3 of the `cut` run of `test_resume_equals_uninterrupted` (mid-epoch), written by the loop before
the Stateful checkpointer (commit 97a5a3c: the counters at the top level of trainer.json)."""


def test_a_checkpoint_of_the_previous_layout_resumes_exactly(tmp_path):
    wf, sf = toy_factories()
    common = dict(schedule=STEPS, data={"generation_fraction": 0.5}, train={"deterministic": True, "save_every": 0})
    run_training(make_config(tmp_path / "straight", **common), wf, sf)
    old = tmp_path / "old" / "checkpoints" / PREVIOUS_LAYOUT.name.removesuffix("-v1")
    shutil.copytree(PREVIOUS_LAYOUT, old)
    train = {**common["train"], "resume": str(old)}
    resumed = run_training(make_config(tmp_path / "resumed", **{**common, "train": train}), wf, sf)
    straight = step_losses(tmp_path / "straight")
    assert resumed.step == 9 and resumed.losses == [straight[s] for s in range(4, 10)]
    (s_step, s_w), (r_step, r_w) = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert s_step == r_step == 9 and all(torch.equal(s_w[k], r_w[k]) for k in s_w)


@pytest.mark.parametrize("refused", ["resume-changed-config", "frozen-bf16-on-fp32"])
def test_a_run_refused_while_building_leaves_no_run_folder(tmp_path, refused):
    """Bad input is refused before anything is written: a resume from another run's checkpoint with a
    changed fixed key, or an option the compute cannot honour, leaves no `--out` folder behind."""
    wf, sf = toy_factories()
    out = tmp_path / "new"
    if refused == "resume-changed-config":
        run_training(make_config(tmp_path / "old", train={"stop_at": 2}), wf, sf)
        step = tmp_path / "old" / "checkpoints" / "step-00000002"
        config, match = make_config(out, optim={"lr": 1e-2}, train={"resume": str(step)}), "config key 'optim'"
    else:
        config, match = make_config(out, train={"frozen_bf16": True, "precision": "fp32"}), "needs bf16 compute"
    with pytest.raises(UserError, match=match):
        run_training(config, wf, sf)
    assert not out.exists()
