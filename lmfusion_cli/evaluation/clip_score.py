"""CLIP score of generated images against their prompts, with open-clip-torch.

CLIP score = 100 · max(cos(image embedding, text embedding), 0), averaged over pairs — the
torchmetrics / Hessel et al. convention (no 2.5 rescaling). The model is
`open_clip.create_model_and_transforms(arch, pretrained=...)`: `arch` names an open_clip
architecture (default ViT-L-14), or a custom one registered from a JSON config file (`model_config`,
its name the file's stem). The weights are either open_clip's own pretrained tag (default "openai":
open_clip downloads them into its cache on first use, `load_clip_pretrained`) or a local file
(`load_clip`). Offline, weights that are not cached are a `UserError` naming the file to place."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.progress import progress


@dataclass
class ClipScorer:
    model: Any
    """The open_clip model (eval mode)."""
    preprocess: Any
    """Its image transform (PIL → tensor)."""
    tokenizer: Any
    """Its text tokenizer (list of str → token ids)."""
    device: str = "cpu"
    """Where the model runs."""


def load_clip(
    arch: str, weights: str | Path, model_config: str | Path | None = None, device: str = "cpu"
) -> ClipScorer:
    """An open_clip model of architecture `arch` with weights from the local file `weights`."""
    import open_clip

    weights = Path(weights)
    if not weights.is_file():
        raise UserError(
            f"The CLIP weights file {weights} does not exist; download the open_clip checkpoint "
            f"for {arch} (open_clip_pytorch_model.bin from the hub) and put it at {weights}."
        )
    if model_config is not None:
        config_path = Path(model_config)
        if not config_path.is_file():
            raise UserError(f"The CLIP model config {config_path} does not exist; pass an open_clip JSON config.")
        open_clip.add_model_config(config_path)
        arch = config_path.stem
    if arch not in open_clip.list_models():
        raise UserError(
            f"'{arch}' is not an open_clip architecture; pick one of open_clip.list_models() "
            f"or pass a JSON config with the model-config option."
        )
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(weights), device=device)
    return ClipScorer(model=model.eval(), preprocess=preprocess, tokenizer=open_clip.get_tokenizer(arch), device=device)


def load_clip_pretrained(arch: str, pretrained: str, device: str = "cpu", cache_dir: str | None = None) -> ClipScorer:
    """open_clip's `arch` with its pretrained tag `pretrained`, fetched by open_clip itself when not cached."""
    import open_clip

    if arch not in open_clip.list_models():
        raise UserError(f"'{arch}' is not an open_clip architecture; pick one of open_clip.list_models().")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if pretrained not in tags:
        raise UserError(
            f"open_clip has no pretrained tag '{pretrained}' for {arch}; pick one of {', '.join(tags)} "
            f"or pass a local weights file with --clip-weights."
        )
    root = logging.getLogger()
    level, root.level = root.level, logging.CRITICAL  # open_clip logs the failed download before raising
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=pretrained, device=device, cache_dir=cache_dir
        )
    except (OSError, RuntimeError, ValueError, ConnectionError) as e:  # offline hub / URL errors
        raise UserError(
            f"The CLIP weights {arch}/{pretrained} are not cached and cannot be downloaded "
            f"({type(e).__name__}); download {_weights_source(arch, pretrained)} and pass the file "
            f"with --clip-weights FILE."
        ) from e
    finally:
        root.setLevel(level)
    return ClipScorer(model=model.eval(), preprocess=preprocess, tokenizer=open_clip.get_tokenizer(arch), device=device)


def _weights_source(arch: str, pretrained: str) -> str:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if cfg.get("hf_hub"):
        repo, filename = cfg["hf_hub"].rstrip("/"), "open_clip_pytorch_model.bin"
        if not cfg["hf_hub"].endswith("/"):
            repo, filename = cfg["hf_hub"].rsplit("/", 1)
        return f"https://huggingface.co/{repo}/resolve/main/{filename}"
    return cfg.get("url") or f"the open_clip weights of {arch}/{pretrained}"


@torch.no_grad()
def clip_scores(
    scorer: ClipScorer, images: Sequence[Image.Image], prompts: Sequence[str], batch_size: int = 32
) -> list[float]:
    """100 · max(cos, 0) for each (image, prompt) pair."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    out: list[float] = []
    bar = progress(total=len(images), desc="CLIP score", unit="img")
    for start in range(0, len(images), batch_size):
        pixels = torch.stack([scorer.preprocess(im.convert("RGB")) for im in images[start : start + batch_size]])
        tokens = scorer.tokenizer(list(prompts[start : start + batch_size]))
        img = scorer.model.encode_image(pixels.to(scorer.device)).float()
        txt = scorer.model.encode_text(tokens.to(scorer.device)).float()
        cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
        out.extend((100.0 * cos.clamp(min=0)).tolist())
        bar.update(pixels.shape[0])
    bar.close()
    return out


def clip_score(
    scorer: ClipScorer, images: Sequence[Image.Image], prompts: Sequence[str], batch_size: int = 32
) -> float:
    """Mean CLIP score over the pairs."""
    scores = clip_scores(scorer, images, prompts, batch_size)
    if not scores:
        raise ValueError("no images to score")
    return float(sum(scores) / len(scores))
