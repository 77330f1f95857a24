"""The base LM the model wraps: loading it by path or hub id, and checking it has the Llama layout.

A base that cannot be loaded or is not a Llama-layout causal LM (or LLaVA VLM, `llava.py`) is a
`UserError` naming it and the fix. The model itself is built in `fusion.py`.
"""

from __future__ import annotations

import pickle

import torch
from torch import nn

from lmfusion_cli.common.errors import UserError, what_was_refused
from lmfusion_cli.model import llava
from lmfusion_cli.model.layers import LAYER_PARTS


def base_load_error(name: str, error: BaseException) -> str:
    """One sentence for a base (or its tokenizer) that `transformers` could not load."""
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip(".")
    return (
        f"The base model {name} cannot be loaded ({reason}); pass a local Hugging Face folder with --base, "
        "or a hub id that is downloaded already or reachable online."
    )


def load_base(base_id: str, dtype: torch.dtype) -> nn.Module:
    """A causal LM or a LLaVA VLM from a folder or hub id, in `dtype`; a failure is one sentence."""
    try:
        return llava.load_base(base_id, dtype)
    except (OSError, ValueError) as e:  # not found, offline, not a causal LM (issue 16)
        raise UserError(base_load_error(base_id, e)) from e
    except pickle.UnpicklingError as e:  # a `.bin` transformers' weights-only load refuses (issue 17)
        raise UserError(
            f"The base model {base_id} has a weights file that is not plain tensors (it holds "
            f"{what_was_refused(str(e))}); pass a base saved as safetensors (or a .bin you "
            "trust, re-saved as safetensors)"
        ) from None


def check_llama_layout(base: nn.Module, name: str) -> None:
    """Refuse a base whose decoder is not the Llama layout the routed layer reuses (`LAYER_PARTS`)."""
    decoder = llava.text_decoder(base) if hasattr(base, "model") else None
    layer = getattr(decoder, "layers", [None])[0]
    missing = [p for p in LAYER_PARTS if not hasattr(layer, p)]
    parts = ("embed_tokens", "norm", "rotary_emb")
    if decoder is None or layer is None or missing or not all(hasattr(decoder, p) for p in parts):
        raise UserError(
            f"Base model {name} is not a Llama-layout causal LM; pass a Llama, Qwen2/3, Mistral or SmolLM checkpoint."
        )
    extra = {n for n, _ in layer.named_children()} - set(LAYER_PARTS)
    if extra:
        raise UserError(
            f"Base model {name} has decoder-layer modules {sorted(extra)} outside the Llama layout; pass a Llama, Qwen2/3, Mistral or SmolLM checkpoint."
        )
