"""`train.init_from`: a new run starts from an earlier run's trainable weights (run, step or export folder)
with a fresh optimiser, schedule and data order; a checkpoint of another base or another model shape is
refused in one `error:` line, before the run folder is written, and so is one trained on another VAE's latents.

The check that the weights arrive is the validation loss: the new run's step-0 validation (same items,
same noise seed) equals the earlier run's last one exactly, and differs from a fresh initialisation's.
A tiny random Llama (2 layers, width 32) on a random latent cache; ~20 s on the 2-core machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_base import build_tiny_base, cli, write_fake_cache

from lmfusion_cli.training.train_log import read_jsonl


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("init")
    build_tiny_base(tmp / "base", seed=0)
    build_tiny_base(tmp / "other-base", seed=0, tie_word_embeddings=True)
    write_fake_cache(tmp / "latents", num_items=16, shape=(4, 8, 8))
    assert _train(tmp, "first", steps=4) == 0
    return tmp


def _train(tmp: Path, out: str, *extra, steps: int = 2, base: str = "base") -> int:
    return cli(
        "train",
        "--config",
        "pipelines/configs/tiny.yaml",
        "--base",
        tmp / base,
        "--latents",
        tmp / "latents",
        "--out",
        tmp / out,
        "--steps",
        steps,
        "--batch-size",
        4,
        "--micro-batch-size",
        4,
        "--save-every",
        0,
        "--set",
        "log.val_items=4",
        "--set",
        "log.val_every=100",
        "--set",
        "log.every=1",
        "--set",
        "log.tensorboard=false",
        "--set",
        "train.threads=1",
        *extra,
    )


def _val(run: Path) -> dict[int, float]:
    return {r["step"]: r["val_loss"] for r in read_jsonl(run / "logs" / "train.jsonl") if r.get("event") == "val"}


def _lr(run: Path) -> list[float]:
    return [r["lr"] for r in read_jsonl(run / "logs" / "train.jsonl") if "event" not in r and "lr" in r]


@pytest.mark.parametrize(
    "source", ["first", "first/checkpoints/step-00000004", "first/checkpoints/step-00000004/model"]
)
def test_new_run_starts_from_the_earlier_weights(setup, source):
    tmp = setup
    out = f"cont-{source.replace('/', '-')}"
    assert _train(tmp, out, "--set", f"train.init_from={tmp / source}", "--seed", 1) == 0
    first, cont = _val(tmp / "first"), _val(tmp / out)
    assert cont[0] == first[4]  # the same weights: validation (same items and noise) is bit-identical
    # a fresh schedule: warmup from 0 again, not the first run's end-of-schedule rate
    assert _lr(tmp / out)[0] < _lr(tmp / out)[1]
    stored = load_file(str(tmp / out / "checkpoints" / "step-00000002" / "model" / "model.safetensors"))
    start = load_file(str(tmp / "first" / "checkpoints" / "step-00000004" / "model" / "model.safetensors"))
    assert stored.keys() == start.keys() and any(not torch.equal(stored[k], start[k]) for k in stored)  # it trained


def test_starts_from_the_shipped_export(setup, repo_root):
    """An `lmfusion export` folder (the shipped tiny-lmfusion, on the shipped tiny LM): a run at a learning
    rate too small to move anything saves the exported weights back."""
    tmp = setup
    shipped = Path(repo_root) / "lmfusion_cli/assets/tiny-lmfusion"
    vae_hash = json.loads((shipped / "lmfusion_export.json").read_text())["vae"]["weights_sha256"]
    write_fake_cache(tmp / "latents16", num_items=8, shape=(4, 16, 16), vae_weights_sha256=vae_hash)
    code = cli(
        "train", "--config", "pipelines/configs/tiny.yaml", "--latents", tmp / "latents16", "--out", tmp / "ship",
        "--steps", 1, "--batch-size", 2, "--micro-batch-size", 2, "--save-every", 0, "--lr", 1e-12,
        "--set", "schedule.warmup_steps=0", "--set", "model.image_position=sincos", "--set", "log.val_items=2",
        "--set", "log.tensorboard=false", "--set", "train.threads=1", "--set", f"train.init_from={shipped}",
    )  # fmt: skip
    assert code == 0
    stored = load_file(str(tmp / "ship" / "checkpoints" / "step-00000001" / "model" / "model.safetensors"))
    exported = load_file(str(shipped / "model.safetensors"))
    assert stored.keys() == exported.keys()
    for name in stored:
        torch.testing.assert_close(stored[name], exported[name], rtol=0, atol=1e-9)


def test_without_init_the_start_differs(setup):
    tmp = setup
    assert _train(tmp, "fresh", "--seed", 1) == 0
    assert _val(tmp / "fresh")[0] != _val(tmp / "first")[4]


def test_a_resume_ignores_init_from(setup):
    tmp = setup
    assert _train(tmp, "cut", "--set", "train.stop_at=1", steps=3) == 0
    assert _train(tmp, "cut", "--set", f"train.init_from={tmp / 'first'}", steps=3) == 0
    assert _train(tmp, "straight", steps=3) == 0
    assert _val(tmp / "cut")[3] == _val(tmp / "straight")[3]


def test_refusals_name_the_input_and_write_nothing(setup, capsys):
    tmp = setup
    cases = [
        (("--set", f"train.init_from={tmp / 'nowhere'}"), "base", "nowhere"),
        (("--set", f"train.init_from={tmp / 'first'}"), "other-base", "a base model with a different config"),
        (("--set", f"train.init_from={tmp / 'first'}", "--set", "model.patch_size=1"), "base", "other shapes"),
        (
            ("--set", f"train.init_from={tmp / 'first'}", "--latents", tmp / "latents-other-vae"),
            "base",
            "VAE 'fake-vae'",
        ),
    ]
    write_fake_cache(tmp / "latents-other-vae", num_items=16, shape=(4, 8, 8), vae_weights_sha256="1" * 64)
    for i, (extra, base, message) in enumerate(cases):
        capsys.readouterr()
        assert _train(tmp, f"refused{i}", *extra, base=base) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: train.init_from") and message in err[-1], err
        assert not (tmp / f"refused{i}").exists()


def _copy_on_fsdp(out: str) -> None:
    """One of 2 gloo processes: FSDP-wrap a tiny-LM LMFusion model, copy a full random state into its shards,
    then gather every parameter back."""
    import torch.distributed as dist

    from lmfusion_cli.model import LMFusionConfig, LMFusionModel
    from lmfusion_cli.training.config import DistConfig
    from lmfusion_cli.training.distributed import init_distributed, wrap_model
    from lmfusion_cli.training.lmfusion_workload import resolve_base_path
    from lmfusion_cli.training.sharded_load import copy_into_shards

    ctx = init_distributed(DistConfig(backend="gloo"))
    torch.manual_seed(0)
    model = LMFusionModel.from_base(resolve_base_path("tiny"), LMFusionConfig(latent_size=8, latent_channels=4))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(1)  # the same state on both ranks
    state = {n: torch.randn(p.shape, generator=generator) for n, p in model.named_parameters() if p.requires_grad}
    units = [[layer, model.image_experts[i]] for i, layer in enumerate(model.base.model.layers)]
    wrap_model(model, units, "fsdp", ctx)
    copy_into_shards(model, state)
    params = dict(model.named_parameters())
    assert any(hasattr(params[n], "full_tensor") for n in names)  # really sharded
    wrong = [n for n in names if not torch.equal(getattr(params[n], "full_tensor", lambda n=n: params[n])(), state[n])]
    if ctx.rank == 0:
        Path(out).write_text("\n".join(wrong) + "\n" if wrong else "ok\n")
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.distributed
def test_copy_into_fsdp_shards_gives_the_full_weights(tmp_path):
    from forked import run_forked

    assert not run_forked(2, _copy_on_fsdp, str(tmp_path / "result.txt"))
    assert (tmp_path / "result.txt").read_text() == "ok\n"


def test_model_card_names_the_starting_weights(setup):
    from lmfusion_cli.packaging.model_card import _training

    tmp = setup
    assert _train(tmp, "carded", "--set", f"train.init_from={tmp / 'first'}") == 0
    lines = _training(tmp / "carded", 2)
    assert lines[0] == "- optimizer steps: 2"
    assert any(f"`{tmp / 'first'}` (`train.init_from`)" in line for line in lines), lines
    assert not any("init_from" in line for line in _training(tmp / "first", 4))
