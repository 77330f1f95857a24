"""From `--checkpoint` to a ready model + tokenizer + VAE codec, reading only what training saved.

`--checkpoint` may name
- a run folder (`RUN/`, with `checkpoints/`): its newest *complete* checkpoint is used;
- a step folder (`RUN/checkpoints/step-00000100/`): used only when its manifest says complete;
- a model folder (holding `lmfusion_model.json`: a step's `model/`, a merged folder, or an `lmfusion
  export` folder, whose own tokenizer and VAE record are used).

The model comes from `model.checkpoint.load` (trainable weights + the base they point at, whose
config hash must match). The tokenizer is `--tokenizer`, else the run's `base.tokenizer`, else the
base folder; its BOI/EOI ids must be the model's. The VAE is `--vae`, else the one the run's latent
cache recorded (`manifest.json` → `trains.latent_vae`); when the run recorded its weights hash, a VAE
with other weights is refused, and scale/shift come from that record (else from the VAE config).
Every problem is one sentence (`UserError`). This file does not sample.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lmfusion_cli.common import checkpoint_layout as layout
from lmfusion_cli.common.checkpoint_layout import MODEL_META, step_of
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.manifest import MANIFEST_NAME, read_manifest, verify_files
from lmfusion_cli.common.vae import LatentCodec

log = logging.getLogger(__name__)


@dataclass
class ResolvedCheckpoint:
    model_dir: Path
    """Folder with `lmfusion_model.json` + `model.safetensors`."""
    step: int | None
    """Training step of the checkpoint (None for a bare model folder)."""
    run_dir: Path | None
    """The training run folder, when the checkpoint lives in one."""


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    codec: LatentCodec
    checkpoint: ResolvedCheckpoint

    def describe(self) -> dict[str, Any]:
        """What made the samples, for `samples.jsonl` and the output manifest."""
        return {
            "checkpoint": str(self.checkpoint.model_dir),
            "step": self.checkpoint.step,
            "run": str(self.checkpoint.run_dir) if self.checkpoint.run_dir else None,
            "base": self.model.base_id,
        }


def _check_step(step_dir: Path) -> None:
    """Refuse an incomplete step folder or one whose model files fail their hashes."""
    manifest = read_manifest(step_dir, layout.KIND, what="checkpoint")
    model_files = {k: v for k, v in manifest.get("files", {}).items() if k.startswith(layout.MODEL_DIR + "/")}
    problems = verify_files(step_dir, {"files": model_files})
    if problems:
        raise UserError(f"{problems[0][:-1]}; use another checkpoint or re-run training from an earlier one.")


def resolve_checkpoint(path: str | Path) -> ResolvedCheckpoint:
    """Run folder / step folder / model folder → the model folder to load (see module docstring)."""
    p = Path(path)
    if not p.exists():
        raise UserError(
            f"Checkpoint {p} does not exist; pass a run folder, one of its checkpoints/step-N folders "
            f"or a model folder."
        )
    if (p / MODEL_META).is_file():
        if layout.is_unfinished(p.parent):  # issue 17: a step still being written, or cut by a kill
            raise UserError(
                f"{p.parent} is an unfinished checkpoint (its save was interrupted or is still running); "
                "pass a complete checkpoint or the run folder"
            )
        step_dir = p.parent if step_of(p.parent) is not None else None
        if step_dir is None:
            return ResolvedCheckpoint(p, None, None)
        _check_step(step_dir)  # a step folder without its complete manifest is refused, not read
        return ResolvedCheckpoint(p, step_of(step_dir), layout.run_of(step_dir))
    if (layout.model_dir(p) / MODEL_META).is_file() or step_of(p) is not None:
        _check_step(p)
        if not (layout.model_dir(p) / MODEL_META).is_file():
            raise UserError(
                f"Checkpoint {p} has no {layout.MODEL_DIR}/{MODEL_META}; it was not written by `lmfusion train`."
            )
        return ResolvedCheckpoint(layout.model_dir(p), step_of(p), layout.run_of(p))
    root = layout.checkpoints_root(p)
    if root.is_dir():
        latest = layout.latest_complete(root)
        if latest is None:
            raise UserError(f"Run {p} has no complete checkpoint yet; train longer or pass a model folder.")
        _check_step(latest.path)
        return ResolvedCheckpoint(layout.model_dir(latest.path), latest.step, p)
    raise UserError(
        f"{p} is not a run folder, a checkpoint folder or a model folder; pass what `lmfusion train` wrote."
    )


def _run_record(run_dir: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run manifest, run config) of a training run; empty when absent (a bare model folder)."""
    if run_dir is None:
        return {}, {}
    manifest, config = {}, {}
    try:
        manifest = json.loads((run_dir / MANIFEST_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        log.warning("%s has no readable manifest.json; the VAE must be given with --vae", run_dir)
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        pass
    return manifest, config


def recorded_vae(resolved: ResolvedCheckpoint, manifest: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The VAE record (id, weights hash, latent scale/shift) checkpoint `resolved` was trained with: its run
    manifest's `trains.latent_vae` (`manifest` when already read), else an export folder's `vae`; None for a
    bare model folder, which names none."""
    from lmfusion_cli.packaging.export import read_export

    if manifest is None:
        manifest, _ = _run_record(resolved.run_dir)
    return (manifest.get("trains") or {}).get("latent_vae") or (read_export(resolved.model_dir) or {}).get("vae")


def load_codec(
    vae: str | None, record: dict[str, Any] | None, latent_size: int, latent_channels: int, device: str = "cpu"
) -> LatentCodec:
    """The VAE codec: `vae` (a folder/hub id) or the recorded one, checked against the record and model."""
    from lmfusion_cli.common.vae import load_vae, weights_sha256

    record = record or {}
    spec = vae or record.get("id")
    if not spec:
        raise UserError("The checkpoint does not record which VAE its latents came from; pass --vae PATH.")
    module = load_vae(spec, device)
    recorded_hash = record.get("weights_sha256")
    if recorded_hash and weights_sha256(module) != recorded_hash:
        raise UserError(
            f"The VAE {spec} has other weights than the VAE the checkpoint was trained with "
            f"({record.get('id')}); pass that VAE with --vae."
        )
    if int(module.config.latent_channels) != latent_channels:
        raise UserError(
            f"The VAE {spec} makes {module.config.latent_channels}-channel latents but the checkpoint "
            f"expects {latent_channels}; pass the VAE the model was trained with."
        )
    scale = record.get("scaling_factor", module.config.scaling_factor)
    shift = record.get("shift_factor", getattr(module.config, "shift_factor", None) or 0.0)
    factor = 2 ** (len(module.config.block_out_channels) - 1)
    return LatentCodec(module, float(scale), float(shift or 0.0), image_size=latent_size * factor)


def load_for_sampling(
    checkpoint: str | Path,
    *,
    base: str | None = None,
    tokenizer: str | None = None,
    vae: str | None = None,
    device: str = "cpu",
) -> Loaded:
    """Everything `lmfusion sample` needs from `--checkpoint` (and the optional overrides)."""
    from transformers import AutoTokenizer

    from lmfusion_cli.model import checkpoint as model_checkpoint
    from lmfusion_cli.model import resolve_boi_eoi

    resolved = resolve_checkpoint(checkpoint)
    manifest, config = _run_record(resolved.run_dir)
    from safetensors import SafetensorError

    try:
        model = model_checkpoint.load(resolved.model_dir, base=base)
    except SafetensorError as e:  # a truncated or damaged weights file in a bare model folder
        raise UserError(
            f"The weights in {resolved.model_dir} cannot be read ({' '.join(str(e).split())}); pass a "
            "complete checkpoint (a step folder's hashes are checked first)"
        ) from None
    except OSError as e:
        meta = model_checkpoint.read_meta(resolved.model_dir)
        raise UserError(
            f"The base model {base or meta['base']} of checkpoint {resolved.model_dir} cannot be loaded "
            f"({type(e).__name__}); pass its folder with --base."
        ) from e
    model = model.to(device).eval()
    from lmfusion_cli.packaging.export import read_export

    export = read_export(resolved.model_dir)  # `lmfusion export` folders carry tokenizer and VAE (issue 16)
    tok_spec = (
        tokenizer
        or (config.get("base") or {}).get("tokenizer")
        or (str(resolved.model_dir) if export else model.base_id)
    )
    try:
        tok = AutoTokenizer.from_pretrained(tok_spec)
    except (OSError, ValueError) as e:
        raise UserError(f"Cannot load the tokenizer {tok_spec} ({type(e).__name__}); pass it with --tokenizer.") from e
    if not model.new_special_rows and resolve_boi_eoi(tok) != (model.boi_id, model.eoi_id):  # legacy ids
        raise UserError(
            f"The tokenizer {tok_spec} has other image-token ids than checkpoint {resolved.model_dir}; "
            f"pass the tokenizer it was trained with (--tokenizer)."
        )
    if tok.eos_token_id is None:
        raise UserError(f"The tokenizer {tok_spec} has no EOS token; pass a tokenizer with one (--tokenizer).")
    record = recorded_vae(resolved, manifest)
    codec = load_codec(vae, record, model.config.latent_size, model.config.latent_channels, device)
    return Loaded(model=model, tokenizer=tok, codec=codec, checkpoint=resolved)
