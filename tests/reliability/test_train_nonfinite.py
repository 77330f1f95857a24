"""Issue 12 item 6 on two processes: a NaN in one latent reaches one process only; both processes
skip the step (the finite check is agreed over all of them), the sample key is logged, and the
sharded weights stay finite. (One
process: `tests/training/test_loop.py` covers skip-and-count, N-in-a-row stop and no checkpoint
from a poisoned state.)"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "training"))
from forked import run_forked  # noqa: E402
from toy_workload import make_config, toy_factories  # noqa: E402

from lmfusion_cli.common.checkpoint_layout import list_checkpoints  # noqa: E402
from lmfusion_cli.training.train_log import read_jsonl  # noqa: E402

SECTIONS = {
    "schedule": {"steps": 4, "warmup_steps": 1},
    "dist": {"strategy": "fsdp"},
    "train": {"save_every": 0, "micro_batch_size": 1},
}


def _poisoned_key() -> str:
    """The key at stream position 5: step 2, process 0's share (positions 4-5 of 4-7)."""
    from toy_workload import ToySource

    from lmfusion_cli.training.loader import SampleStream

    return SampleStream(ToySource(), seed=0, generation_fraction=0.8, caption_dropout=0.1).sample_at(5).key


def _train(out: str) -> None:
    from lmfusion_cli.training.loop import run_training

    run_training(make_config(out, **SECTIONS), *toy_factories(nan_keys=(_poisoned_key(),)))


def test_nan_on_one_process_is_skipped_on_every_process(tmp_path):
    errors = run_forked(2, _train, str(tmp_path / "run"))
    assert not errors, errors
    records = read_jsonl(tmp_path / "run" / "logs" / "train.jsonl")
    bad = [r for r in records if r.get("event") == "nonfinite"]
    assert len(bad) == 1 and bad[0]["keys"] == [_poisoned_key()] and bad[0]["step"] == 2
    steps = [r for r in records if "event" not in r]
    assert len(steps) == 4 and steps[-1]["skipped_total"] == 1
    weights = load_file(
        str(list_checkpoints(tmp_path / "run" / "checkpoints")[-1].path / "model" / "trainable.safetensors")
    )
    assert all(torch.isfinite(w).all() for w in weights.values())
