"""Model-independent metrics: caption scores (CIDEr and friends) and the Fréchet distance.

- `cider(references, candidates)`: CIDEr-D exactly as the official COCO scorer computes it: captions
  are PTB-tokenized first (`ptb.py`: the Java tokenizer pycocoevalcap ships when `java` is present,
  else its pure-Python re-implementation), then scored by pycocoevalcap's own `Cider` (n = 4,
  σ = 6). The idf comes from the references of the images scored together, so a single image gets
  0.0, as in pycocoevalcap.
- `caption_scores`: BLEU-4, METEOR (Java), ROUGE-L and CIDEr from pycocoevalcap on the same tokens.
  SPICE is not offered: its tool downloads Stanford CoreNLP at run time.
- `frechet_distance(mu1, sigma1, mu2, sigma2)`: the FID formula with the pytorch-fid / clean-fid
  recipe for a near-singular product (add eps·I) and tiny imaginary parts (dropped; large ones raise).

Feature extraction for FID lives in `fid.py`, CLIP score in `clip_score.py`."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from lmfusion_cli.evaluation.ptb import Backend, tokenize_captions

log = logging.getLogger(__name__)

CAPTION_METRICS = ("bleu", "meteor", "rouge", "cider")


def _check_caption_inputs(
    references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, str]
) -> list[Hashable]:
    """The ids to score, in `candidates` order; ValueError naming ids present on one side only."""
    if not candidates:
        raise ValueError("no candidate captions to score: `candidates` is empty")
    only_cand = [k for k in candidates if k not in references]
    only_refs = [k for k in references if k not in candidates]
    if only_cand or only_refs:
        raise ValueError(
            f"references and candidates must have the same ids: {len(only_cand)} id(s) only in candidates "
            f"(e.g. {only_cand[:3]}), {len(only_refs)} only in references (e.g. {only_refs[:3]})"
        )
    for key, refs in references.items():
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            raise TypeError(f"references[{key!r}] must be a list of strings, got {type(refs).__name__}")
        if len(refs) == 0:
            raise ValueError(f"references[{key!r}] is empty; every image needs at least one reference caption")
        if not all(isinstance(r, str) for r in refs):
            raise TypeError(f"references[{key!r}] must contain only strings")
    for key, cand in candidates.items():
        if not isinstance(cand, str):
            raise TypeError(f"candidates[{key!r}] must be a string, got {type(cand).__name__}")
    return list(candidates)


def tokenize_pair(
    references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, str], tokenizer: Backend = "auto"
) -> tuple[dict[Hashable, list[str]], dict[Hashable, list[str]]]:
    """PTB-tokenize references and candidates in one pass: (gts, res) in pycocoevalcap's input format."""
    ids = _check_caption_inputs(references, candidates)
    # One tokenizer run over both sides (a tuple key keeps them apart whatever the ids are).
    merged = {("ref", k): list(references[k]) for k in ids}
    merged.update({("cand", k): [candidates[k]] for k in ids})
    tokens = tokenize_captions(merged, tokenizer)
    gts = {k: tokens[("ref", k)] for k in ids}
    res = {k: tokens[("cand", k)] for k in ids}
    return gts, res


def cider_scores(
    references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, str], tokenizer: Backend = "auto"
) -> tuple[float, dict[Hashable, float]]:
    """Corpus CIDEr-D and the per-id scores (pycocoevalcap's `Cider` on PTB-tokenized captions)."""
    from pycocoevalcap.cider.cider import Cider

    gts, res = tokenize_pair(references, candidates, tokenizer)
    score, per_item = Cider().compute_score(gts, res)
    return float(score), {k: float(s) for k, s in zip(gts, per_item)}


def cider(references: dict[str, list[str]], candidates: dict[str, str], tokenizer: Backend = "auto") -> float:
    """CIDEr-D of `candidates` (id → caption) against `references` (id → reference captions).

    Raw captions go in: they are PTB-tokenized (lower-cased, punctuation removed) as the official
    scorer does, then scored by pycocoevalcap's `Cider`. Both dicts must have the same ids (else
    ValueError); an empty candidate scores 0 for its image; one image alone scores 0.0 (the idf of
    CIDEr-D is log(#images / df) = 0 then, exactly as in pycocoevalcap)."""
    return cider_scores(references, candidates, tokenizer)[0]


def caption_scores(
    references: Mapping[Hashable, Sequence[str]],
    candidates: Mapping[Hashable, str],
    metrics: Sequence[str] = CAPTION_METRICS,
    tokenizer: Backend = "auto",
) -> dict[str, Any]:
    """COCO caption metrics on PTB-tokenized captions: keys `BLEU-1..4`, `METEOR`, `ROUGE-L`, `CIDEr`.

    `metrics` picks among "bleu", "meteor" (needs Java; ~6 s start-up), "rouge", "cider"; a
    metric whose tool cannot run (no Java for METEOR) is left out and named under `unavailable`."""
    unknown = [m for m in metrics if m not in CAPTION_METRICS]
    if unknown:
        raise ValueError(f"unknown caption metric(s) {unknown}; choose from {list(CAPTION_METRICS)}")
    gts, res = tokenize_pair(references, candidates, tokenizer)
    out: dict[str, Any] = {}
    unavailable: list[str] = []
    if "bleu" in metrics:
        from pycocoevalcap.bleu.bleu import Bleu

        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        out.update({f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)})
    if "meteor" in metrics:
        from lmfusion_cli.evaluation.ptb import java_tool_available

        if java_tool_available("meteor.meteor", "meteor-1.5.jar", "data/paraphrase-en.gz"):
            from pycocoevalcap.meteor.meteor import Meteor

            meteor = Meteor()
            try:
                out["METEOR"] = float(meteor.compute_score(gts, res)[0])
            finally:
                del meteor  # its __del__ stops the Java process
        else:
            log.warning("METEOR skipped: it needs `java` on PATH and pycocoevalcap's METEOR jar and data")
            unavailable.append("METEOR")
    if "rouge" in metrics:
        from pycocoevalcap.rouge.rouge import Rouge

        out["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    if "cider" in metrics:
        from pycocoevalcap.cider.cider import Cider

        out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    if unavailable:
        out["unavailable"] = unavailable
    return out


def _as_numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def frechet_distance(
    mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, eps: float = 1e-6, max_imaginary: float = 1e-3
) -> float:
    """‖mu1 − mu2‖² + tr(Σ1 + Σ2 − 2·(Σ1·Σ2)^½): the Fréchet distance of two Gaussians (FID).

    mu: (D,) means, sigma: (D, D) covariances, as numpy arrays or torch tensors (computed in float64).
    As in pytorch-fid / clean-fid: when the product is singular (sqrtm not finite) `eps`·I is added
    to both covariances; an imaginary part of sqrtm's diagonal above `max_imaginary` raises
    ValueError, smaller ones are numerical noise and dropped."""
    from scipy import linalg

    mu1, mu2 = _as_numpy(mu1, "mu1"), _as_numpy(mu2, "mu2")
    sigma1, sigma2 = _as_numpy(sigma1, "sigma1"), _as_numpy(sigma2, "sigma2")
    if mu1.ndim != 1 or mu2.ndim != 1:
        raise ValueError(f"means must be 1-D vectors, got shapes {mu1.shape} and {mu2.shape}")
    if mu1.shape != mu2.shape:
        raise ValueError(f"means have different lengths: {mu1.shape[0]} and {mu2.shape[0]}")
    dim = mu1.shape[0]
    for name, sigma in (("sigma1", sigma1), ("sigma2", sigma2)):
        if sigma.shape != (dim, dim):
            raise ValueError(f"{name} must be ({dim}, {dim}) to match the means, got {sigma.shape}")

    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        log.warning("Fréchet distance: singular product of covariances; adding %g to their diagonals", eps)
        offset = np.eye(dim) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=max_imaginary):
            raise ValueError(
                f"Fréchet distance: sqrtm has an imaginary component of "
                f"{np.max(np.abs(covmean.imag)):.3g}; the covariances are not valid"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def gaussian_stats(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of an (N, D) feature array, float64, as clean-fid computes them (N ≥ 2)."""
    feats = _as_numpy(features, "features")
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"features must be an (N, D) array with N >= 2, got shape {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)
