"""`LMFusionModel`'s Hugging Face Hub side: what `save_pretrained` writes and `from_pretrained` reads.

`LMFusionModel` inherits `HubMixin`, a `huggingface_hub.PyTorchModelHubMixin`, which supplies the public
`save_pretrained` / `from_pretrained` / `push_to_hub` (an `upload_folder` of what `save_pretrained`
writes) and calls the two hooks here (`_save_pretrained`, `_from_pretrained`). Why the mixin and not a `transformers.PreTrainedModel` subclass:
the model *wraps* a loaded `PreTrainedModel` (the frozen base, any Llama-layout checkpoint, loaded by
`AutoModelForCausalLM`) and adds modules of its own; a `PreTrainedModel` subclass would need its own
`PretrainedConfig`, weight-init and tying rules and would re-save the frozen base in every folder,
while the mixin leaves loading to us and lets a folder hold only the trainable weights and point at
its base by id (the paper's models are 8 B bases with a few hundred M new weights).

A folder holds the `model.checkpoint` layout (`lmfusion_model.json` + `model.safetensors`, the base by
id or a merged `base/` folder) plus the mixin's `config.json` (the `LMFusionConfig`, for the Hub
widget and tools that read it). Tokenizer, VAE and model card are the export's (`packaging/export.py`).
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import PyTorchModelHubMixin

from lmfusion_cli.common.errors import UserError


class HubMixin(PyTorchModelHubMixin):
    """`save_pretrained` / `from_pretrained` / `push_to_hub` for `LMFusionModel`, over the folders below."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **hub_options):
        """The Hub mixin's `from_pretrained` (a local folder or a hub id); a repository that cannot be
        fetched (offline, missing, gated) is one sentence."""
        from huggingface_hub.errors import HfHubHTTPError

        try:
            return super().from_pretrained(pretrained_model_name_or_path, **hub_options)
        except (OSError, ValueError, HfHubHTTPError) as e:
            if os.path.isdir(str(pretrained_model_name_or_path)):
                raise
            raise UserError(fetch_error(str(pretrained_model_name_or_path), e)) from e

    def _save_pretrained(self, save_directory) -> None:
        save_folder(self, save_directory)

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision=None,
        cache_dir=None,
        force_download=False,
        local_files_only=False,
        token=None,
        **unused,
    ):
        return load_folder(
            model_id,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
        )


def save_folder(model, folder: Path) -> None:
    """The mixin's `_save_pretrained`: trainable weights + a pointer to the base (`model.base_id`)."""
    from lmfusion_cli.model import checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {n: p for n, p in model.named_parameters() if p.requires_grad}
    checkpoint._write(folder, model, tensors, getattr(model, "base_ref", None) or model.base_id)


def local_folder(
    model_id: str, *, revision=None, cache_dir=None, force_download=False, local_files_only=False, token=None
) -> Path:
    """A local folder for `model_id`: the folder itself, or a snapshot of the Hub repository."""
    if Path(model_id).is_dir():
        return Path(model_id)
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id=model_id,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                local_files_only=local_files_only,
                token=token,
            )
        )
    except Exception as e:  # offline, no such repo, gated: one sentence
        raise UserError(fetch_error(model_id, e)) from e


def fetch_error(model_id: str, error: BaseException) -> str:
    return (
        f"Cannot fetch the LMFusion model {model_id} from the Hugging Face Hub ({type(error).__name__}); "
        "pass a local folder written by save_pretrained or `lmfusion export`, or log in / go online."
    )


def load_folder(model_id: str | os.PathLike, **hub_options):
    """The mixin's `_from_pretrained`: rebuild from the base the folder names (or holds) + its weights."""
    from lmfusion_cli.model import checkpoint

    return checkpoint.load(local_folder(str(model_id), **hub_options)).eval()
