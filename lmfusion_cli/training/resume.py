"""Which checkpoint a run resumes from, and whether it may: the one compatibility check.

`find_resume_point` picks the step folder (`--resume auto|never|PATH`; another run's checkpoint only
into a folder without checkpoints of its own); `resume_change` is the only comparison of a checkpoint
with the run now — the resume-fixed config keys (`config.RESUME_FIXED_KEYS`) and the workload's inputs
(`describe()`: base config hash, latent size and channels, the latent cache's VAE) — walked by one
flattener. `schedule_to_follow` keeps the saved LR schedule when only `schedule.steps` changed. This
file loads no tensor (`checkpointing.Checkpointer` does).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from lmfusion_cli.common.checkpoint_layout import (
    TRAINER_FILE,
    checkpoints_root,
    is_complete,
    latest_complete,
    list_checkpoints,
    step_of,
)
from lmfusion_cli.common.configs import config_fields
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.manifest import MANIFEST_NAME
from lmfusion_cli.model.config import LMFusionConfig
from lmfusion_cli.training.config import RESUME_FIXED_KEYS, ScheduleConfig, TrainRunConfig

log = logging.getLogger(__name__)


def find_resume_point(run_dir: Path, resume: str) -> Path | None:
    """The checkpoint to resume from: `auto` → newest complete in the run (or None), `never` → None
    (refusing a run folder that already has checkpoints), else the given step or run folder."""
    root = checkpoints_root(run_dir)
    if resume == "auto":
        skipped = [c.path.name for c in list_checkpoints(root, complete_only=False) if not is_complete(c.path)]
        if skipped:
            log.warning("ignoring incomplete checkpoint folder(s): %s", ", ".join(skipped))
        latest = latest_complete(root)
        return latest.path if latest else None
    if resume == "never":
        if list_checkpoints(root):
            raise UserError(
                f"{run_dir} already holds checkpoints; pass --resume auto to continue it or choose another --out."
            )
        return None
    path = Path(resume)
    if checkpoints_root(path).is_dir():
        latest = latest_complete(checkpoints_root(path))
        if latest is None:
            raise UserError(f"{path} has no complete checkpoint to resume from; pass --resume never to start anew.")
        found = latest.path
    elif not is_complete(path):
        raise UserError(
            f"{path} is not a complete training checkpoint (no complete {MANIFEST_NAME}); "
            "pass a step folder under RUN/checkpoints or --resume auto."
        )
    else:
        found = path
    own = list_checkpoints(root)
    if own and is_foreign(root, found):  # two histories in one folder: `auto` would later pick the newer
        raise UserError(
            f"--resume {path} is another run's checkpoint, but --out {run_dir} already holds checkpoints of its "
            f"own (newest {own[-1].path.name}); pass a new --out to continue {path} there, or --resume auto to "
            f"continue {run_dir}."
        )
    return found


def is_foreign(root: Path, checkpoint: Path) -> bool:
    """Whether `checkpoint` is not one of the step folders under `root` (this run's checkpoints folder)."""
    return Path(checkpoint).resolve().parent != Path(root).resolve()


def refuse_newer_checkpoints(run_dir: Path, resume_from: Path) -> None:
    """Resuming an older step of this run would mix two histories (and `--resume auto` would later
    pick the abandoned newer one): refuse until the newer checkpoints are moved away."""
    step = step_of(resume_from)
    newer = [
        c.path.name
        for c in list_checkpoints(checkpoints_root(run_dir))
        if c.path.resolve().parent == resume_from.resolve().parent and step is not None and c.step > step
    ]
    if newer:
        raise UserError(
            f"{run_dir} has checkpoints newer than {resume_from.name} ({', '.join(newer)}); move them "
            "out of checkpoints/ to restart from that step, or train into another --out."
        )


# Where an input lives, not what it is (the config's base.path is a resume-fixed key already; a VAE
# counts as the same by its weights and config hashes, as in `data.latents.check_expectation`).
_LOCATION_KEYS = {"base", "latent_vae.id"}
_NAMES = {
    "lmfusion_config.latent_size": "the latent size (the cache's resolution)",
    "lmfusion_config.latent_channels": "the latent channel count",
    "base_config_sha256": "the base model's config hash",
}


def _flatten(data: Any) -> dict[str, Any]:
    """`{"a": {"b": 1}}` → `{"a.b": 1}`, after a JSON round trip (tuples compare as the lists saved)."""
    flat: dict[str, Any] = {}

    def walk(value: Any, prefix: str) -> None:
        if not isinstance(value, dict):
            flat[prefix] = value
            return
        for key, inner in value.items():
            walk(inner, f"{prefix}.{key}" if prefix else str(key))

    walk(json.loads(json.dumps(data)), "")
    return flat


def _defaults(cls: type, prefix: str = "") -> dict[str, Any]:
    """The flattened field defaults of a config dataclass (`configs.config_fields`; some sections cannot be
    built without values): what a checkpoint that predates an option ran with."""
    return _flatten({f.key: f.default for f in config_fields(cls, prefix)})


def _with_defaults(old: dict[str, Any], new: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """`old` plus the default of every key `new` has and `old` lacks: an option added since the checkpoint
    was written, which it ran with the default of."""
    return {**{k: v for k, v in defaults.items() if k in new and k not in old}, **old}


def _input_change(old: dict[str, Any], new: dict[str, Any], foreign: bool) -> str | None:
    old = _with_defaults(old, new, _defaults(LMFusionConfig, "lmfusion_config."))  # the model's, as described
    for key in sorted(set(old) | set(new)):
        if key in _LOCATION_KEYS or old.get(key) == new.get(key):
            continue
        if key.startswith("latent_vae."):
            clause = (
                f"the latent cache was made with another VAE ({key.split('.', 1)[1]} {old.get(key)!r} → "
                f"{new.get(key)!r}; VAE '{old.get('latent_vae.id')}' then, '{new.get('latent_vae.id')}' now)"
            )
        else:
            clause = f"{_NAMES.get(key, key)} changed from {old.get(key)!r} to {new.get(key)!r}"
        fix = (
            "resume with the latent cache and base model that checkpoint was trained on, or train from scratch "
            "without --resume."
            if foreign
            else "resume with the latent cache and base model the run was trained on, or start a new --out."
        )
        return f"{clause}; {fix}"
    return None


def _config_change(old: dict[str, Any], new: dict[str, Any], foreign: bool) -> str | None:
    old = _with_defaults(old, new, _defaults(TrainRunConfig))
    for fixed in RESUME_FIXED_KEYS:
        keys = sorted(k for k in set(old) | set(new) if k == fixed or k.startswith(fixed + "."))
        changed = [f"{k} {old.get(k)!r} → {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
        if changed:
            fix = "set it back to the checkpoint's value, or train from scratch without --resume" if foreign else None
            return (
                f"config key '{fixed}' changed ({', '.join(changed)}); {fix or 'restore it or start a new --out'} "
                "(a resume may change only schedule.steps, log.* and the checkpoint cadence)."
            )
    return None


def resume_change(saved: dict[str, Any], now: dict[str, Any], foreign: bool = False) -> str | None:
    """The first difference between a checkpoint's record (trainer.json: `trains`, `config`) and the run
    now that would make the resumed run differ, as a clause with its fix; None when it may resume.
    Inputs are compared by content, not location; a config option the checkpoint does not record (added
    since) counts as its default; a section missing on either side is not compared. The config comes
    first: a model option is in both (`config.model`, `trains.lmfusion_config`), and its fix is the key's.
    `foreign`: the checkpoint is another run's (`--resume PATH`), so a new --out is no fix."""
    if "config" in saved and "config" in now:
        change = _config_change(_flatten(saved["config"]), _flatten(now["config"]), foreign)
        if change:
            return change
    if "trains" in saved and "trains" in now:
        return _input_change(_flatten(saved["trains"]), _flatten(now["trains"]), foreign)
    return None


def schedule_to_follow(config: TrainRunConfig, resume_from: Path | None) -> ScheduleConfig:
    """The LR schedule of this invocation: on resume, the saved run's, so a changed `schedule.steps`
    cannot make the learning rate jump (issue 16: 1.5e-5 → 1.3e-4 mid-run). Training still runs to the
    new `schedule.steps`; past the saved end the rate stays at `schedule.min_lr`."""
    if not resume_from:
        return config.schedule
    try:
        saved = json.loads((Path(resume_from) / TRAINER_FILE).read_text()).get("config", {}).get("schedule")
    except (OSError, ValueError):  # missing or damaged: the checkpointer's verification names the file
        return config.schedule
    if not isinstance(saved, dict) or saved.get("steps", config.schedule.steps) == config.schedule.steps:
        return config.schedule
    log.warning(
        "schedule.steps changed from %d to %d on resume: the learning rate keeps the saved %d-step "
        "schedule (min_lr %g after step %d); start a new --out for a schedule over %d steps",
        saved["steps"],
        config.schedule.steps,
        saved["steps"],
        config.schedule.min_lr,
        saved["steps"],
        config.schedule.steps,
    )
    return dataclasses.replace(config.schedule, steps=int(saved["steps"]))
