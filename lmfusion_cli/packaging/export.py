"""`lmfusion export`: a run or checkpoint → one self-contained folder to share the Hugging Face way.

    OUT/lmfusion_model.json   the model's metadata: base (hub id, or `base` when merged), config hash,
                              LMFusionConfig (`model.checkpoint` layout)
    OUT/model.safetensors     trainable weights (image experts, patcher, image norm, BOI/EOI rows);
                              with --merged every non-base weight, the base in OUT/base/
    OUT/config.json           the LMFusionConfig (the Hub mixin's file)
    OUT/tokenizer*            the tokenizer, chat template included
    OUT/vae/                  the diffusers AutoencoderKL (or, with --vae-id, only its hub id)
    OUT/lmfusion_export.json  the VAE (folder or id, weights hash, latent scale/shift), where it came from
    OUT/README.md             the model card: training data, steps, evaluation figures, intended use

`LMFusionModel.from_pretrained(OUT)`, `LMFusionPipeline.from_pretrained(OUT)`, `lmfusion sample
--checkpoint OUT` and `lmfusion evaluate --checkpoint OUT` read it with no other flag. The folder is
written atomically (temp folder, rename).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lmfusion_cli.common.atomic import atomic_dir
from lmfusion_cli.common.configs import config_to_dict
from lmfusion_cli.common.errors import UserError

log = logging.getLogger(__name__)

EXPORT_META = "lmfusion_export.json"
FORMAT_VERSION = 1


def run_export(
    checkpoint: str | Path,
    out: str | Path,
    *,
    merged: bool = False,
    base_id: str | None = None,
    vae_id: str | None = None,
    evals: list[str | Path] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the export folder `out` from `checkpoint` (run, step or model folder); return `out`."""
    from lmfusion_cli.common.vae import weights_sha256
    from lmfusion_cli.model import checkpoint as model_checkpoint
    from lmfusion_cli.packaging.model_card import model_card
    from lmfusion_cli.sampling.loading import load_for_sampling

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"Output folder {out} is not empty; pass --overwrite to replace it or choose another --out.")
    if merged and base_id:
        raise UserError("--merged stores the base inside the folder; drop --base-id (or drop --merged).")
    loaded = load_for_sampling(checkpoint)
    model, codec = loaded.model, loaded.codec
    base_ref = base_id or model.base_id
    if not merged and not base_id and Path(model.base_id).is_absolute():
        log.warning(
            "the base is the local folder %s: the export points at it; pass --base-id HUB_ID (or --merged) "
            "so that others can load it",
            model.base_id,
        )
    vae_record = {
        "scaling_factor": codec.scaling_factor,
        "shift_factor": codec.shift_factor,
        "weights_sha256": weights_sha256(codec.vae),
        "image_size": codec.resolution,
    }
    with atomic_dir(out, overwrite=True) as tmp:
        if merged:
            model.base.save_pretrained(str(tmp / "base"))
            model_checkpoint._write(
                tmp, model, {n: p for n, p in model.named_parameters() if not n.startswith("base.")}, "base"
            )
        else:
            model.base_ref = base_ref
            try:
                model.save_pretrained(tmp)  # the Hub mixin: our weights + config.json (+ a default card, replaced)
            finally:
                del model.base_ref
        (tmp / "config.json").write_text(json.dumps(config_to_dict(model.config), indent=2, sort_keys=True) + "\n")
        loaded.tokenizer.save_pretrained(str(tmp))
        if vae_id:
            vae_record["id"] = vae_id
        else:
            codec.vae.save_pretrained(str(tmp / "vae"))
            vae_record["id"] = "vae"
        meta = {
            "format_version": FORMAT_VERSION,
            "vae": vae_record,
            "tokenizer": ".",
            "source": {
                "checkpoint": str(loaded.checkpoint.model_dir),
                "step": loaded.checkpoint.step,
                "run": str(loaded.checkpoint.run_dir) if loaded.checkpoint.run_dir else None,
            },
        }
        (tmp / EXPORT_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        card = model_card(
            model, base_ref if not merged else "base/ (merged)", loaded.checkpoint, meta, [Path(e) for e in evals or []]
        )
        (tmp / "README.md").write_text(card, encoding="utf-8")
    log.info(
        "exported %s (step %s) to %s%s",
        loaded.checkpoint.model_dir,
        loaded.checkpoint.step,
        out,
        " (merged)" if merged else "",
    )
    return out


def push_folder(folder: str | Path, repo_id: str, private: bool | None = None, token: str | None = None) -> str:
    """Upload an export folder (tokenizer, VAE and card included) to the Hub: `huggingface_hub`'s
    `create_repo` + `upload_folder`, the same calls `LMFusionModel.push_to_hub` makes for the model alone."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        repo = api.create_repo(repo_id=repo_id, private=private, exist_ok=True).repo_id
        return str(
            api.upload_folder(
                repo_id=repo, folder_path=str(folder), repo_type="model", commit_message="Upload LMFusion export"
            )
        )
    except Exception as e:  # offline, not logged in, no rights: one sentence
        raise UserError(
            f"Cannot push {folder} to the Hub repository {repo_id} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); log in with `huggingface-cli login` "
            "and check the repository name."
        ) from e


def read_export(folder: Path) -> dict[str, Any] | None:
    """The export record of `folder`, with a relative VAE folder made absolute; None for other folders."""
    path = Path(folder) / EXPORT_META
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    vae = dict(meta.get("vae") or {})
    if vae.get("id") and (Path(folder) / vae["id"]).is_dir():
        vae["id"] = str(Path(folder) / vae["id"])
    meta["vae"] = vae
    return meta
