"""Checkpoint folders: completeness marker, --resume auto choices, retention, checksums on load."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from toy_workload import ToyWorkload, make_config, toy_factories

from lmfusion_cli.common.checkpoint_layout import is_complete, list_checkpoints
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.training.checkpointing import Checkpointer
from lmfusion_cli.training.distributed import DistContext
from lmfusion_cli.training.loop import run_training
from lmfusion_cli.training.optim import build_optimizer
from lmfusion_cli.training.resume import find_resume_point
from lmfusion_cli.training.state import ModelState, OptimizerState, RNGState, TrainProgress


def checkpointer(root, model, optimizer, workload=None, **more):
    states = {"model": ModelState(model), "optim": OptimizerState(model, optimizer), "rng": RNGState(), **more}
    return Checkpointer(root, states, DistContext(), workload)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ckpt") / "run"
    run_training(make_config(out, train={"save_every": 2, "keep_last": 2}), *toy_factories())
    return out


def test_retention_keeps_the_last_complete_ones(run):
    assert [c.step for c in list_checkpoints(run / "checkpoints")] == [4, 6]
    manifest = json.loads((run / "checkpoints" / "step-00000006" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["step"] == 6
    assert {"trainer.json", "rng/rank-00000.pt", "model/trainable.safetensors", "dcp/.metadata"} <= set(
        manifest["files"]
    )
    assert all(len(e["sha256"]) == 64 for e in manifest["files"].values())


def test_resume_auto_skips_a_truncated_folder(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    newest = copy / "checkpoints" / "step-00000008"
    shutil.copytree(copy / "checkpoints" / "step-00000006", newest)
    (newest / "manifest.json").unlink()  # cut mid-write: files but no marker
    (newest / "dcp" / "__0_0.distcp").write_bytes(b"\0" * 10)
    assert not is_complete(newest)
    assert find_resume_point(copy, "auto").name == "step-00000006"
    assert find_resume_point(copy, str(copy)).name == "step-00000006"
    with pytest.raises(UserError, match="is not a complete training checkpoint"):
        find_resume_point(copy, str(newest))


def test_a_flipped_byte_is_caught_on_load_naming_the_file(run, tmp_path):
    folder = tmp_path / "step"
    shutil.copytree(run / "checkpoints" / "step-00000006", folder)
    target = folder / "dcp" / "__0_0.distcp"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    workload = ToyWorkload()
    optimizer = build_optimizer(
        [(n, p) for n, p in workload.model.named_parameters() if p.requires_grad], make_config(tmp_path).optim
    )
    with pytest.raises(UserError, match=r"__0_0\.distcp does not match its SHA-256"):
        checkpointer(tmp_path, workload.model, optimizer).load(folder)


def test_save_then_load_restores_weights_optimizer_rng_and_counters(tmp_path):
    workload = ToyWorkload()
    params = [(n, p) for n, p in workload.model.named_parameters() if p.requires_grad]
    optimizer = build_optimizer(params, make_config(tmp_path).optim)
    for _, p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    torch.manual_seed(123)
    progress = TrainProgress(step=1, bad_in_row=0, skipped_steps=2)
    saver = checkpointer(tmp_path / "checkpoints", workload.model, optimizer, workload, progress=progress)
    folder = saver.save(1)
    expected_draw = torch.rand(3)
    other = ToyWorkload()
    other_opt = build_optimizer(
        [(n, p) for n, p in other.model.named_parameters() if p.requires_grad], make_config(tmp_path).optim
    )
    restored = TrainProgress()
    state = checkpointer(tmp_path / "checkpoints", other.model, other_opt, other, progress=restored).load(folder)
    assert state["step"] == 1 and state["world_size"] == 1
    assert restored == progress
    assert torch.equal(torch.rand(3), expected_draw)  # RNG restored to the save point
    for (name, p), q in zip(params, [p for p in other.model.parameters() if p.requires_grad]):
        assert torch.equal(p, q), name
    assert other_opt.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]
    frozen = dict(other.model.named_parameters())["embed.weight"]
    assert not torch.equal(frozen, workload.model.embed.weight)  # frozen weights are not in the checkpoint


def test_resuming_an_older_step_with_newer_ones_present_is_refused(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = make_config(
        copy, train={"save_every": 2, "keep_last": 2, "resume": str(copy / "checkpoints" / "step-00000004")}
    )
    with pytest.raises(UserError, match=r"newer than step-00000004 \(step-00000006\)"):
        run_training(config, *toy_factories())
    shutil.rmtree(copy / "checkpoints" / "step-00000006")
    result = run_training(config, *toy_factories())
    assert result.step == 6 and len(result.losses) == 2


def test_the_layout_names_steps_and_finds_the_latest_complete_one(run, tmp_path):
    from lmfusion_cli.common import checkpoint_layout as layout

    assert layout.step_dir_name(100) == "step-00000100" and layout.step_of(tmp_path / "step-00000100") == 100
    assert (
        layout.step_of(tmp_path / "step-100") is None and layout.step_of(tmp_path / "step-00000100.tmp-write") is None
    )
    assert layout.is_unfinished(tmp_path / layout.temp_dir_name(7)) and not layout.is_unfinished(run)
    latest = layout.latest_complete(layout.checkpoints_root(run))
    assert latest.step == 6 and layout.run_of(latest.path) == run
    assert (
        layout.recorded_sha256(layout.model_dir(latest.path), "trainable.safetensors")
        == (json.loads(layout.manifest_path(latest.path).read_text())["files"]["model/trainable.safetensors"]["sha256"])
    )
    assert layout.latest_complete(tmp_path / "nothing") is None


def test_one_compatibility_check_compares_fixed_keys_and_inputs(tmp_path):
    from lmfusion_cli.common.configs import config_to_dict
    from lmfusion_cli.training.resume import resume_change

    config = config_to_dict(make_config(tmp_path))
    trains = {"base": "/a", "base_config_sha256": "1", "latent_vae": {"id": "/v", "weights_sha256": "2"}}
    saved = {"config": config, "trains": trains}
    moved = {**trains, "base": "/b", "latent_vae": {"id": "/w", "weights_sha256": "2"}}  # same contents elsewhere
    assert resume_change(saved, {"config": config, "trains": moved}) is None
    other = {**trains, "base_config_sha256": "3"}
    assert resume_change(saved, {"config": config, "trains": other}).startswith(
        "the base model's config hash changed from '1' to '3'"
    )
    lr = {**config, "optim": {**config["optim"], "lr": 1.0}}
    assert "config key 'optim' changed (optim.lr 0.003 → 1.0)" in resume_change(saved, {"config": lr})
    assert resume_change(saved, {"config": {**config, "log": {}}}) is None  # log.* may change
    model = {**config, "model": {**config["model"], "lambda_image": 2.0}}  # an override added on resume
    assert "config key 'model' changed (model.lambda_image 5.0 → 2.0)" in resume_change(saved, {"config": model})
    older = {"config": {**config, "optim": {k: v for k, v in config["optim"].items() if k != "text_lr"}}}
    assert resume_change(older, {"config": config}) is None  # an option added since: the default then
    text_lr = {**config, "optim": {**config["optim"], "text_lr": 1e-5}}
    assert "optim.text_lr None → 1e-05" in resume_change(older, {"config": text_lr})


@pytest.mark.parametrize("damage", ["missing", "garbled"])
def test_a_checkpoint_without_a_readable_trainer_json_is_one_sentence_naming_it(run, tmp_path, damage):
    """The LR schedule to follow is read from trainer.json before the checkpointer verifies the folder:
    a missing or garbled trainer.json must still end in the verification's sentence, not a traceback."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    trainer = copy / "checkpoints" / "step-00000006" / "trainer.json"
    if damage == "missing":
        trainer.unlink()
    else:
        trainer.write_text("{not json" + trainer.read_text()[9:])
    config = make_config(copy, train={"save_every": 2, "keep_last": 2}, schedule={"steps": 8})
    with pytest.raises(
        UserError, match=r"step-00000006/trainer\.json (is listed in the manifest but missing|does not)"
    ):
        run_training(config, *toy_factories())


def _lmfusion_record(config: dict, **model) -> dict:
    """trainer.json's `config` and `trains` as the LMFusion workload writes them: the model section twice,
    as configured and (geometry filled in) as the workload's `lmfusion_config`."""
    config = {**config, "model": {**config["model"], **model}}
    lmfusion_config = {**config["model"], "latent_channels": 4, "latent_size": 8}
    trains = {"base": "/a", "base_config_sha256": "1", "lmfusion_config": lmfusion_config, "latent_vae": None}
    return {"config": config, "trains": trains}


def test_a_changed_model_option_is_named_as_the_config_key_not_as_another_cache_or_base(tmp_path):
    from lmfusion_cli.common.configs import config_to_dict
    from lmfusion_cli.training.resume import resume_change

    config = config_to_dict(make_config(tmp_path))
    change = resume_change(_lmfusion_record(config), _lmfusion_record(config, lambda_image=2.0))
    assert change.startswith("config key 'model' changed (model.lambda_image 5.0 → 2.0); restore it"), change


def test_a_model_option_added_since_the_checkpoint_counts_as_its_default(tmp_path):
    """A checkpoint written before a model option existed ran with its default, in `config.model` and in
    the workload's `lmfusion_config` alike; setting it to another value is refused."""
    from lmfusion_cli.common.configs import config_to_dict
    from lmfusion_cli.training.resume import resume_change

    config = config_to_dict(make_config(tmp_path))
    older = _lmfusion_record(config)
    for section in (older["config"]["model"], older["trains"]["lmfusion_config"]):
        del section["timestep_shift"]
    assert resume_change(older, _lmfusion_record(config)) is None
    assert "model.timestep_shift 1.0 → 3.0" in resume_change(older, _lmfusion_record(config, timestep_shift=3.0))


@pytest.mark.parametrize(
    "key, value", [("interleaved_fraction", 0.5), ("text_only_fraction", 0.2), ("max_caption_tokens", 8)]
)
def test_a_changed_task_mix_or_caption_cut_is_refused_on_resume(tmp_path, key, value):
    """Every `data.*` key but the validation split changes what is trained on (docs/training.md): the
    task mix and the caption cut too, not only generation_fraction and caption_dropout."""
    from lmfusion_cli.common.configs import config_to_dict
    from lmfusion_cli.training.resume import resume_change

    config = config_to_dict(make_config(tmp_path))
    changed = {**config, "data": {**config["data"], key: value}}
    assert f"config key 'data.{key}' changed" in (resume_change({"config": config}, {"config": changed}) or "")
    val = {**config, "data": {**config["data"], "val_split": "other"}}
    assert resume_change({"config": config}, {"config": val}) is None


def test_resuming_another_runs_checkpoint_into_a_folder_with_its_own_is_refused(run, tmp_path):
    """Two histories in one folder: `--resume auto` would later continue whichever is newest."""
    mine = tmp_path / "mine"
    run_training(make_config(mine, schedule={"steps": 2}, train={"save_every": 2}), *toy_factories())
    before = sorted(p.name for p in (mine / "checkpoints").iterdir())
    for other in (run, run / "checkpoints" / "step-00000006"):
        with pytest.raises(UserError) as e:
            run_training(make_config(mine, train={"resume": str(other)}), *toy_factories())
        message = str(e.value)
        assert str(mine) in message and str(run) in message and "new --out" in message, message
    assert sorted(p.name for p in (mine / "checkpoints").iterdir()) == before


def test_a_mismatch_with_another_runs_checkpoint_does_not_advise_a_new_out(run, tmp_path):
    """--resume PATH into a fresh --out: a new --out would hit the same mismatch; the fix is the key (or no resume)."""
    config = make_config(tmp_path / "fresh", optim={"lr": 1e-2}, train={"resume": str(run)})
    with pytest.raises(UserError, match="config key 'optim' changed") as e:
        run_training(config, *toy_factories())
    assert "new --out" not in str(e.value) and "without --resume" in str(e.value), str(e.value)
