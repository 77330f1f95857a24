"""Save and load LMFusion weights: trainable-only checkpoints that point at their base, or merged.

A checkpoint directory holds
- `model.safetensors`: the trainable parameters only (image experts, patcher, image norm, BOI/EOI
  rows; text modules too when they were unfrozen), by their `named_parameters` names;
- `lmfusion_model.json`: the base model's path/id, the SHA-256 of its config, the `LMFusionConfig`.
`load` rebuilds the model from the base and refuses a base whose config hash differs. `merge` writes
one self-contained directory (the base in `base/` plus every non-base weight) that loads without the
original base. Directories are written atomically (temp folder, fsync, rename).

Training checkpoints (optimizer, data position, RNG) are the training stage's; this is the model's.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lmfusion_cli.common.atomic import atomic_dir
from lmfusion_cli.common.checkpoint_layout import MODEL_META as META
from lmfusion_cli.common.checkpoint_layout import MODEL_WEIGHTS as WEIGHTS
from lmfusion_cli.common.configs import build_config, config_to_dict
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.hashing import sha256_json
from lmfusion_cli.model.config import LMFusionConfig
from lmfusion_cli.model.fusion import LMFusionModel

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# config keys that describe how a base was loaded or saved, not what it is
_VOLATILE_KEYS = {
    "_name_or_path",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "_attn_implementation",
    "_attn_implementation_autoset",
    "use_cache",
    "quantization_config",
    "_commit_hash",
}


def base_config_hash(base_config) -> str:
    """SHA-256 of the base model's config (architecture and sizes; not dtype, paths or versions)."""
    data = {k: v for k, v in base_config.to_dict().items() if k not in _VOLATILE_KEYS}
    return sha256_json(data)


def _write(folder: Path, model: LMFusionModel, tensors: dict[str, torch.Tensor], base: str) -> None:
    """Weights + metadata into `folder` (a temp folder of `atomic_dir`)."""
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(folder / WEIGHTS))
    meta = {
        "format_version": FORMAT_VERSION,
        "base": base,
        "base_config_sha256": base_config_hash(model.base_config),
        "lmfusion_config": config_to_dict(model.config),
    }
    (folder / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def save_trainable(model: LMFusionModel, path: str | os.PathLike) -> None:
    """Write the trainable parameters and the base pointer to directory `path` (replaced if present)."""
    with atomic_dir(path, overwrite=True) as tmp:
        _write(tmp, model, {n: p for n, p in model.named_parameters() if p.requires_grad}, model.base_id)


def read_meta(path: str | os.PathLike) -> dict:
    meta_file = Path(path) / META
    if not meta_file.is_file():
        raise UserError(
            f"{path} is not an LMFusion checkpoint (no {META}); pass a directory written by save_trainable or merge."
        )
    return json.loads(meta_file.read_text())


def load(path: str | os.PathLike, base=None) -> LMFusionModel:
    """Rebuild the model from its base (`base` overrides the recorded one) and load the weights."""
    path = Path(path)
    meta = read_meta(path)
    if base is None:
        base = meta["base"]
        if not os.path.isabs(base) and (path / base).is_dir():  # merged (`base/` inside) or beside (`../tiny-lm`)
            base = os.path.normpath(path / base)
    try:
        config = build_config(LMFusionConfig, meta["lmfusion_config"])
    except UserError as e:
        raise UserError(f"{path / META} holds an LMFusion config this version cannot read: {e}") from None
    model = LMFusionModel.from_base(base, config)
    check_base(meta, model, path)
    state = trainable_state(path, model)
    params = dict(model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)
    return model


def check_base(meta: dict, model: LMFusionModel, path: str | os.PathLike) -> None:
    """Refuse checkpoint `path` (its metadata `meta`) when it was trained on a base with another config than
    `model`'s (by config hash): its weights would load into the wrong shapes or meanings."""
    if base_config_hash(model.base_config) != meta.get("base_config_sha256"):
        raise UserError(
            f"Checkpoint {path} was trained on a base model with a different config ({meta.get('base')}) than "
            f"{model.base_id}; pass the base it was made from (--base {meta.get('base')}) or a checkpoint of this base."
        )


def trainable_state(path: str | os.PathLike, model: LMFusionModel) -> dict[str, torch.Tensor]:
    """The weights of checkpoint folder `path`, checked against `model`: every stored name is one of its
    parameters with the same shape, and every trainable parameter is stored (under any of a tied weight's
    names). Frozen tied aliases stored by checkpoints before issue 16 are dropped."""
    path = Path(path)
    state = load_file(str(path / WEIGHTS))
    params = dict(model.named_parameters(remove_duplicate=False))  # a tied weight under each of its names
    own_names = {n for n, _ in model.named_parameters()}
    for name in sorted(set(state) & set(params) - own_names):
        if not params[name].requires_grad:  # checkpoints before issue 16 stored a tied alias of a frozen weight
            log.debug("ignoring %s in %s: a frozen weight (a tied alias), taken from the base", name, path / WEIGHTS)
            del state[name]
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise UserError(
            f"Checkpoint {path / WEIGHTS} has weights this model lacks ({unknown[:3]}...); check its LMFusion config."
        )
    stored = {id(params[n]) for n in state}  # a tied weight counts as stored under any of its names
    missing = sorted(n for n in own_names if params[n].requires_grad and id(params[n]) not in stored)
    if missing:
        raise UserError(
            f"Checkpoint {path / WEIGHTS} lacks trainable weights the model has ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}); pass a complete checkpoint made with this LMFusion config."
        )
    wrong = [
        f"{n} {tuple(t.shape)} vs {tuple(params[n].shape)}" for n, t in state.items() if t.shape != params[n].shape
    ]
    if wrong:
        raise UserError(
            f"Checkpoint {path / WEIGHTS} has weights of other shapes than this model's ({'; '.join(wrong[:2])}"
            f"{'; ...' if len(wrong) > 2 else ''}); its LMFusion config differs (patch size, patcher, latent size?)."
        )
    return state


def merge(path: str | os.PathLike, out: str | os.PathLike, base=None) -> None:
    """Export checkpoint `path` as one self-contained directory `out` (base copied into `out/base`)."""
    model = load(path, base)
    out = Path(out)
    with atomic_dir(out, overwrite=True) as tmp:
        model.base.save_pretrained(str(tmp / "base"))
        base_source = Path(model.base_id)
        if base_source.is_dir():  # keep the tokenizer next to the weights it belongs to
            for f in base_source.iterdir():
                if f.is_file() and ("token" in f.name or f.name in ("vocab.json", "merges.txt")):
                    (tmp / "base" / f.name).write_bytes(f.read_bytes())
        _write(tmp, model, {n: p for n, p in model.named_parameters() if not n.startswith("base.")}, "base")
