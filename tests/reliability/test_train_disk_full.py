"""Issue 12 item 9 (training side): an injected OSError(ENOSPC) while a checkpoint is saved — in the
inference weights, in the DCP shards, in the manifest — leaves the previous checkpoint intact and
verified, removes the partial folder, stops with one sentence, and a rerun with space completes to
the same losses as an uninterrupted run."""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "training"))
from toy_workload import ToyWorkload, make_config, toy_factories  # noqa: E402

from lmfusion_cli.common.checkpoint_layout import list_checkpoints  # noqa: E402
from lmfusion_cli.common.errors import UserError  # noqa: E402
from lmfusion_cli.training import checkpointing  # noqa: E402
from lmfusion_cli.training.checkpointing import verify_checkpoint  # noqa: E402
from lmfusion_cli.training.loop import run_training  # noqa: E402
from lmfusion_cli.training.train_log import read_jsonl  # noqa: E402

SECTIONS = {"schedule": {"steps": 6}, "train": {"save_every": 2, "keep_last": 2}}


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


class FullWhenSaving(ToyWorkload):
    def save_inference(self, trainable_state, folder):
        if folder.parent.name.startswith("step-00000004"):
            disk_full()
        super().save_inference(trainable_state, folder)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("straight") / "run"
    run_training(make_config(out, **SECTIONS), *toy_factories())
    return [r["loss"] for r in read_jsonl(out / "logs" / "train.jsonl") if "event" not in r]


@pytest.mark.parametrize("where", ["inference-weights", "dcp-shards", "manifest"])
def test_enospc_during_checkpoint_save(tmp_path, monkeypatch, straight, where):
    _, source = toy_factories()
    out = tmp_path / "run"
    calls = {"n": 0}
    if where == "inference-weights":
        factory = lambda c, s, d: FullWhenSaving()  # noqa: E731
    else:
        factory = lambda c, s, d: ToyWorkload()  # noqa: E731
        name = "dcp" if where == "dcp-shards" else "write_manifest"
        original = checkpointing.dcp.save if where == "dcp-shards" else checkpointing.write_manifest

        def second_call_fails(*args, **kwargs):  # the step-2 save works, the step-4 one fails
            calls["n"] += 1
            if calls["n"] == 2:
                disk_full()
            return original(*args, **kwargs)

        if name == "dcp":
            monkeypatch.setattr(checkpointing.dcp, "save", second_call_fails)
        else:
            monkeypatch.setattr(checkpointing, "write_manifest", second_call_fails)
    with pytest.raises(UserError) as err:
        run_training(make_config(out, **SECTIONS), factory, source)
    message = str(err.value)
    assert message.startswith("Saving checkpoint step-00000004 in ")
    assert "failed (no space left on device); the previous checkpoint step-00000002 is intact" in message
    assert message.count(". ") == 0 and message.endswith("rerun with --resume auto.")
    root = out / "checkpoints"
    assert [c.step for c in list_checkpoints(root)] == [2]
    verify_checkpoint(root / "step-00000002")  # every file still matches its SHA-256
    assert sorted(p.name for p in root.iterdir()) == ["step-00000002"]  # no partial folder left

    monkeypatch.undo()
    result = run_training(make_config(out, **SECTIONS), *toy_factories())
    assert result.step == 6 and len(result.losses) == 4
    assert [r["loss"] for r in read_jsonl(out / "logs" / "train.jsonl") if "event" not in r] == straight
