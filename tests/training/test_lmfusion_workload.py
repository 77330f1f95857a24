"""The LMFusion workload on a tiny random Llama: layouts, per-sample noise, text preservation after
training, inference weights loadable by the model package, and 2 FSDP2 processes == 1 process."""

from __future__ import annotations

import json

import pytest
import torch
from forked import run_forked
from tiny_base import FakeLatentCache, build_tiny_base

from lmfusion_cli.common.checkpoint_layout import list_checkpoints
from lmfusion_cli.common.configs import build_config
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.training.config import TrainRunConfig
from lmfusion_cli.training.lmfusion_workload import build_lmfusion_workload
from lmfusion_cli.training.loader import SampleStream
from lmfusion_cli.training.loop import run_training
from lmfusion_cli.training.train_log import read_jsonl


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_tiny_base(tmp_path_factory.mktemp("base") / "tiny-llama")


def make(base, out, **sections) -> TrainRunConfig:
    data = {
        "base": {"path": str(base)},
        "model": {"patcher": "linear", "patch_size": 2},
        "data": {"latents": "fake", "val_split": None, "generation_fraction": 0.5},
        "train": {"out": str(out), "batch_size": 4, "micro_batch_size": 2, "save_every": 0},
        "schedule": {"steps": 3, "warmup_steps": 1},
        "optim": {"lr": 1e-3},
        "dist": {"strategy": "none"},
        "log": {"tensorboard": False, "val_items": 4},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return build_config(TrainRunConfig, data)


def source(path, split):
    return FakeLatentCache(seed=0 if split == "train" else 1)


def test_layouts_packing_and_per_sample_noise(base, tmp_path):
    torch.manual_seed(0)
    workload = build_lmfusion_workload(
        make(base, tmp_path, data={"seq_len": 80}), source("", "train"), torch.device("cpu")
    )
    vocab = workload.model.vocab_size  # BOI/EOI: the model's own new rows, not the tokenizer's tokens 4/5
    assert (workload.model.boi_id, workload.model.eoi_id) == (vocab, vocab + 1)
    stream = SampleStream(source("", "train"), seed=0, generation_fraction=0.5, caption_dropout=0.0)
    samples = stream.next_step(4)
    assert {s.task for s in samples} == {"generation", "understanding"}
    micro = workload.make_micro_batch(samples, torch.device("cpu"))
    batch, latents, docs = micro.inputs.batch, micro.inputs.latents, micro.inputs.image_documents
    assert batch.input_ids.shape[0] < 4 and batch.input_ids.shape[1] == 80  # packed: fewer rows than samples
    assert micro.generated_images == 4 and micro.images == 4  # understanding images are diffusion targets too
    seeds = [s.noise_seed for s in samples]
    t_all, noise_all = workload._noise(micro, seeds, None)
    for i, s in enumerate(samples):  # the same sample alone gets the same timestep and noise
        alone = workload.make_micro_batch([s], torch.device("cpu"))
        t_one, noise_one = workload._noise(alone, [s.noise_seed], None)
        image = int((docs == i).nonzero())
        assert torch.equal(t_one[0], t_all[image]) and torch.equal(noise_one[0], noise_all[image])
        assert torch.equal(latents[image], s.latent)


def test_text_logits_unchanged_and_checkpoint_loads_with_the_model_package(base, tmp_path):
    from transformers import AutoModelForCausalLM

    from lmfusion_cli.model import checkpoint

    torch.set_num_threads(1)
    result = run_training(make(base, tmp_path / "run"), source_factory=source)
    assert result.step == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    folder = list_checkpoints(tmp_path / "run" / "checkpoints")[-1].path / "model"
    trained = checkpoint.load(folder)
    reference = AutoModelForCausalLM.from_pretrained(str(base))
    ids = torch.tensor([[1, 6, 7, 10, 12, 2], [1, 8, 9, 11, 13, 14]])
    with torch.no_grad():
        assert torch.equal(trained.text_logits(ids), reference(ids).logits)
        fresh_expert = reference.model.layers[0].mlp.up_proj.weight  # image experts start as copies
        assert not torch.equal(trained.image_experts[0].mlp.up_proj.weight, fresh_expert)


def test_latent_size_comes_from_the_cache(base, tmp_path):
    config = make(base, tmp_path, model={"patcher": "linear", "patch_size": 2, "latent_size": 16})
    with pytest.raises(UserError, match="model.latent_size=16 does not match the latent cache"):
        build_lmfusion_workload(config, source("", "train"), torch.device("cpu"))


def _train_two(base, out) -> None:
    run_training(make(base, out, dist={"strategy": "fsdp"}, train={"micro_batch_size": 1}), source_factory=source)


@pytest.mark.distributed
def test_two_fsdp_processes_match_one(base, tmp_path):
    torch.set_num_threads(1)
    run_training(make(base, tmp_path / "one", train={"micro_batch_size": 1}), source_factory=source)
    errors = run_forked(2, _train_two, base, tmp_path / "two")
    assert not errors, errors
    one = [r["loss"] for r in read_jsonl(tmp_path / "one" / "logs" / "train.jsonl")]
    two = [r["loss"] for r in read_jsonl(tmp_path / "two" / "logs" / "train.jsonl")]
    assert len(one) == len(two) == 3
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-4, json.dumps([one, two])
