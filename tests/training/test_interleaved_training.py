"""Interleaved and text-only examples in training: the stream's mix, their layouts (`[bos] before BOI
image EOI after [eos]` with BOI a learnable target; `[bos] text [eos]` with no image), and a training
step over a mix of all four tasks."""

from __future__ import annotations

import pytest
import torch
from tiny_base import FakeLatentCache, build_tiny_base

from lmfusion_cli.common.configs import build_config
from lmfusion_cli.model.sequence import IGNORE, IMAGE
from lmfusion_cli.training.config import TrainRunConfig
from lmfusion_cli.training.lmfusion_workload import build_lmfusion_workload
from lmfusion_cli.training.loader import INTERLEAVED, TEXT_ONLY, SampleStream


class DocumentCache(FakeLatentCache):
    """Fake cache whose even items carry an interleaved document."""

    def __getitem__(self, i: int) -> dict:
        record = dict(self.records[i])
        if i % 2 == 0:
            record["meta"] = {"document": {"before": "a " + record["caption"], "after": "the circle on the left"}}
        return record


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    base = build_tiny_base(tmp_path_factory.mktemp("base") / "tiny-llama")
    config = build_config(
        TrainRunConfig,
        {
            "base": {"path": str(base)},
            "model": {"patcher": "linear", "patch_size": 2},
            "data": {"latents": "fake", "val_split": None},
            "train": {"out": "unused"},
            "dist": {"strategy": "none"},
        },
    )
    return build_lmfusion_workload(config, DocumentCache(), torch.device("cpu"))


def test_stream_mix_and_unchanged_default():
    cache = DocumentCache(num_items=16)
    mixed = SampleStream(
        cache, seed=0, generation_fraction=0.5, caption_dropout=0.0, interleaved_fraction=0.4, text_only_fraction=0.2
    )
    tasks = [mixed.sample_at(p).task for p in range(400)]
    assert 0.12 < tasks.count(TEXT_ONLY) / 400 < 0.28
    assert 0.12 < tasks.count(INTERLEAVED) / 400 < 0.28  # 0.4 of draws, half the items have a document
    assert {"generation", "understanding"} <= set(tasks)
    text = next(mixed.sample_at(p) for p in range(400) if mixed.sample_at(p).task == TEXT_ONLY)
    assert text.latent is None and len(text.caption.split()) > 3
    plain = SampleStream(cache, seed=0, generation_fraction=0.5, caption_dropout=0.0)
    zero = SampleStream(
        cache, seed=0, generation_fraction=0.5, caption_dropout=0.0, interleaved_fraction=0.0, text_only_fraction=0.0
    )
    for p in range(50):
        a, b = plain.sample_at(p), zero.sample_at(p)
        assert (a.task, a.caption, a.noise_seed) == (b.task, b.caption, b.noise_seed)


def test_layouts_and_a_training_step(workload):
    stream = SampleStream(
        DocumentCache(),
        seed=1,
        generation_fraction=0.5,
        caption_dropout=0.0,
        interleaved_fraction=0.5,
        text_only_fraction=0.25,
    )
    samples = [stream.sample_at(p) for p in range(40)]
    chosen = [
        next(s for s in samples if s.task == task) for task in ("interleaved", "text", "generation", "understanding")
    ]
    micro = workload.make_micro_batch(chosen, torch.device("cpu"))
    batch, latents = micro.inputs.batch, micro.inputs.latents
    model = workload.model
    assert batch.num_images == 3 and latents.shape[0] == 3
    # interleaved row: BOI follows the before-text and is a target; text after EOI has targets
    row = batch.input_ids[0].tolist()
    boi = row.index(model.boi_id)
    assert batch.labels[0, boi - 1] == model.boi_id and batch.modality[0, boi + 1] == IMAGE
    eoi = row.index(model.eoi_id)
    assert (batch.labels[0, eoi:] != IGNORE).sum() >= 5  # "the circle on the left" + eos
    # text-only row: no image, every next token a target
    assert model.boi_id not in batch.input_ids[1].tolist() and (batch.modality[1] != IMAGE).all()
    assert micro.generated_images == 3  # interleaved + generation + understanding (diffusion target)
    learnable, _ = model.target_masks(batch)
    assert micro.text_targets == int(learnable.sum()) == int((batch.labels != IGNORE).sum())
    out = workload.loss_sums(model, micro, [s.noise_seed for s in chosen])
    (out.text + out.image).backward()
    assert torch.isfinite(out.text) and model.special_head.grad.abs().sum() > 0
