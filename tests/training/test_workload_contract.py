"""Both workloads (LMFusion's and the toy one the loop tests use) satisfy the `Workload` Protocol: the
members exist (`runtime_checkable`), the methods take the Protocol's parameters, micro-batch inputs are
a typed NamedTuple and validation returns `ValidationSums`."""

from __future__ import annotations

import inspect

import pytest
import torch
from tiny_base import FakeLatentCache, build_tiny_base
from toy_workload import ToySource, ToyWorkload

from lmfusion_cli.common.configs import build_config
from lmfusion_cli.training.config import TrainRunConfig
from lmfusion_cli.training.lmfusion_workload import LMFusionInputs, build_lmfusion_workload
from lmfusion_cli.training.loader import SampleStream
from lmfusion_cli.training.workload import LossSums, MicroBatch, ValidationSums, Workload

METHODS = ("shard_units", "make_micro_batch", "loss_sums", "validation_sums", "save_inference", "describe")


@pytest.fixture(scope="module")
def lmfusion(tmp_path_factory):
    base = build_tiny_base(tmp_path_factory.mktemp("base") / "tiny-llama")
    config = build_config(
        TrainRunConfig,
        {
            "base": {"path": str(base)},
            "model": {"patcher": "linear", "patch_size": 2},
            "data": {"latents": "fake", "val_split": None},
            "train": {"out": str(tmp_path_factory.mktemp("run")), "batch_size": 2, "micro_batch_size": 2},
            "dist": {"strategy": "none"},
        },
    )
    source = FakeLatentCache(seed=0)
    return build_lmfusion_workload(config, source, torch.device("cpu")), source


def _parameters(function) -> list[str]:
    return [p for p in inspect.signature(function).parameters if p != "self"]


def _check(workload, source, inputs_type):
    assert isinstance(workload, Workload)
    for name in METHODS:
        assert _parameters(getattr(workload, name)) == _parameters(getattr(Workload, name)), name
    samples = SampleStream(source, seed=0, generation_fraction=0.5, caption_dropout=0.0).next_step(2)
    micro = workload.make_micro_batch(samples, torch.device("cpu"))
    assert isinstance(micro, MicroBatch) and isinstance(micro.inputs, inputs_type)
    seeds = [s.noise_seed for s in samples]
    assert isinstance(workload.loss_sums(workload.model, micro, seeds), LossSums)
    with torch.no_grad():
        sums = workload.validation_sums(workload.model, micro, seeds, 0.5)
    assert isinstance(sums, ValidationSums)
    assert sums.text_targets == micro.text_targets and sums.images == micro.generated_images


def test_lmfusion_workload_satisfies_the_protocol(lmfusion):
    workload, source = lmfusion
    _check(workload, source, LMFusionInputs)


def test_toy_workload_satisfies_the_protocol():
    from toy_workload import ToyInputs

    _check(ToyWorkload(), ToySource(), ToyInputs)


def test_a_workload_missing_a_method_is_refused():
    class NoValidation:
        model = torch.nn.Linear(1, 1)
        lambda_image = 1.0

        def shard_units(self): ...
        def make_micro_batch(self, samples, device): ...
        def loss_sums(self, model, micro, noise_seeds): ...
        def save_inference(self, trainable_state, folder): ...
        def describe(self): ...

    assert not isinstance(NoValidation(), Workload)
