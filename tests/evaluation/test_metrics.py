"""metrics.cider equals pycocoevalcap on PTB-tokenized input; frechet_distance equals the SciPy computation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lmfusion_cli.evaluation.metrics import caption_scores, cider, cider_scores, frechet_distance, gaussian_stats
from lmfusion_cli.evaluation.ptb import java_available, tokenize_captions

REPO = Path(__file__).resolve().parents[2]

REFS = {
    "1": [
        "A man riding a wave on top of a surfboard.",
        "A surfer rides a large wave!",
        "Someone's surfing on the ocean.",
    ],
    "2": ["A kitchen with a stove, a sink, and a refrigerator.", "The kitchen has white cabinets."],
    "3": ["Two dogs' toys aren't on the floor.", "Dogs play with toys (outside)."],
    "4": ["A red circle on a blue background", "a red circle in the center on a blue background"],
}
CANDS = {
    "1": "A man surfing a wave.",
    "2": "a kitchen with a sink",
    "3": "two dogs playing",
    "4": "A red circle on a blue background.",
}


def _official(refs, cands, backend):
    from pycocoevalcap.cider.cider import Cider

    toks = tokenize_captions(
        {**{("r", k): v for k, v in refs.items()}, **{("c", k): [c] for k, c in cands.items()}}, backend
    )
    gts = {k: toks[("r", k)] for k in cands}
    res = {k: toks[("c", k)] for k in cands}
    return Cider().compute_score(gts, res)


@pytest.mark.parametrize(
    "backend", ["python", pytest.param("java", marks=pytest.mark.skipif(not java_available(), reason="needs java"))]
)
def test_cider_equals_pycocoevalcap(backend):
    score, per_item = _official(REFS, CANDS, backend)
    assert abs(cider(REFS, CANDS, tokenizer=backend) - score) < 1e-9
    mean, items = cider_scores(REFS, CANDS, tokenizer=backend)
    assert np.allclose([items[k] for k in CANDS], per_item, atol=1e-12)
    assert score > 0.5  # the fixture has real overlap: a degenerate 0 would hide bugs


@pytest.mark.skipif(not java_available(), reason="needs java")
def test_cider_on_official_ptbtokenizer_output():
    """Against the whole official chain: pycocoevalcap's PTBTokenizer then Cider."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    res = tok.tokenize({k: [{"caption": c}] for k, c in CANDS.items()})
    assert abs(cider(REFS, CANDS) - Cider().compute_score(gts, res)[0]) < 1e-9


def test_cider_tokenization_ignores_case_and_punctuation():
    lower = {k: v.lower().rstrip(".") for k, v in CANDS.items()}
    assert abs(cider(REFS, CANDS, "python") - cider(REFS, lower, "python")) < 1e-12


def test_cider_edge_cases():
    with pytest.raises(ValueError, match="only in candidates"):
        cider(REFS, {**CANDS, "9": "extra"})
    with pytest.raises(ValueError, match="only in references"):
        cider(REFS, {k: CANDS[k] for k in ("1", "2")})
    with pytest.raises(ValueError, match="empty"):
        cider({}, {})
    with pytest.raises(ValueError, match="at least one reference"):
        cider({"1": []}, {"1": "a dog"})
    # an empty candidate scores 0 for its image, the others as pycocoevalcap says
    cands = {**CANDS, "2": ""}
    score, per_item = _official(REFS, cands, "python")
    mean, items = cider_scores(REFS, cands, "python")
    assert items["2"] == 0.0 and abs(mean - score) < 1e-9
    # one image alone: CIDEr-D's idf is log(1/1) = 0 -> pycocoevalcap gives 0.0, and so do we
    one_refs, one_cands = {"1": REFS["1"]}, {"1": REFS["1"][0]}
    assert cider(one_refs, one_cands, "python") == pytest.approx(_official(one_refs, one_cands, "python")[0], abs=1e-12)
    assert cider(one_refs, one_cands, "python") == 0.0


def test_caption_scores_match_pycocoevalcap():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.rouge.rouge import Rouge

    metrics = ("bleu", "rouge", "cider") + (("meteor",) if java_available() else ())
    out = caption_scores(REFS, CANDS, metrics=metrics, tokenizer="python")
    toks = tokenize_captions(
        {**{("r", k): v for k, v in REFS.items()}, **{("c", k): [c] for k, c in CANDS.items()}}, "python"
    )
    gts = {k: toks[("r", k)] for k in CANDS}
    res = {k: toks[("c", k)] for k in CANDS}
    assert out["BLEU-4"] == pytest.approx(Bleu(4).compute_score(gts, res, verbose=0)[0][3], abs=1e-12)
    assert out["ROUGE-L"] == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-12)
    assert out["CIDEr"] == pytest.approx(cider(REFS, CANDS, "python"), abs=1e-12)
    if java_available():
        assert 0 < out["METEOR"] < 1
    with pytest.raises(ValueError, match="spice"):
        caption_scores(REFS, CANDS, metrics=("spice",))


def _scipy_reference(mu1, s1, mu2, s2):
    from scipy import linalg

    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _random_stats(rng, n, d):
    feats = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    return feats.mean(0), np.cov(feats, rowvar=False)


def test_frechet_distance_equals_scipy():
    rng = np.random.default_rng(0)
    for d in (4, 32, 64):
        mu1, s1 = _random_stats(rng, 500, d)
        mu2, s2 = _random_stats(rng, 400, d)
        mu2 = mu2 + 0.3
        ref = _scipy_reference(mu1, s1, mu2, s2)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6)


def test_frechet_distance_near_singular_matches_clean_fid():
    """Fewer samples than dimensions: rank-deficient covariances, as with a small FID sample."""
    from cleanfid.fid import frechet_distance as clean_fd

    rng = np.random.default_rng(1)
    f1, f2 = rng.normal(size=(20, 48)), rng.normal(size=(25, 48)) + 0.1
    mu1, s1 = gaussian_stats(f1)
    mu2, s2 = gaussian_stats(f2)
    assert np.linalg.matrix_rank(s1) < 48
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(float(clean_fd(mu1, s1, mu2, s2)), rel=1e-6)
    assert ours == pytest.approx(_scipy_reference(mu1, s1, mu2, s2), rel=1e-6)
    # exactly singular: a zero covariance makes the product singular; the eps offset path answers
    zero = np.zeros((48, 48))
    assert frechet_distance(mu1, zero, mu2, zero) == pytest.approx(float(((mu1 - mu2) ** 2).sum()), rel=1e-6)


def test_frechet_distance_torch_inputs_and_self_distance():
    rng = np.random.default_rng(2)
    mu, s = _random_stats(rng, 300, 16)
    mu2, s2 = _random_stats(rng, 300, 16)
    ours = frechet_distance(torch.tensor(mu, dtype=torch.float32), torch.tensor(s), torch.tensor(mu2), s2)
    assert ours == pytest.approx(frechet_distance(mu.astype(np.float32), s, mu2, s2), rel=1e-6)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-8 * np.trace(s)


def test_frechet_distance_validates_shapes_and_imaginary_parts():
    mu, s = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match="1-D"):
        frechet_distance(np.zeros((3, 1)), s, mu, s)
    with pytest.raises(ValueError, match="different lengths"):
        frechet_distance(mu, s, np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match=r"sigma2 must be \(3, 3\)"):
        frechet_distance(mu, s, mu, np.eye(2))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(mu, s * np.nan, mu, s)
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(mu, np.diag([-1.0, 1.0, 1.0]), mu, s)


def test_frechet_distance_singular_product_adds_eps(monkeypatch):
    """When sqrtm of the product is not finite, eps·I is added to both covariances (clean-fid recipe)."""
    from scipy import linalg

    real_sqrtm, seen = linalg.sqrtm, []

    def flaky_sqrtm(a):
        seen.append(a.copy())
        return np.full_like(a, np.inf) if len(seen) == 1 else real_sqrtm(a)

    monkeypatch.setattr(linalg, "sqrtm", flaky_sqrtm)
    rng = np.random.default_rng(3)
    mu1, s1 = _random_stats(rng, 100, 5)
    mu2, s2 = _random_stats(rng, 100, 5)
    out = frechet_distance(mu1, s1, mu2, s2, eps=1e-3)
    offset = np.eye(5) * 1e-3
    assert np.allclose(seen[1], (s1 + offset) @ (s2 + offset))
    expected = float(
        ((mu1 - mu2) ** 2).sum()
        + np.trace(s1)
        + np.trace(s2)
        - 2 * np.trace(real_sqrtm((s1 + offset) @ (s2 + offset)).real)
    )
    assert out == pytest.approx(expected, rel=1e-9)


def test_a_pycocoevalcap_without_its_jars_scores_with_the_python_tokenizer(tmp_path):
    """A pycocoevalcap slimmed to its Python scorers (no CoreNLP / METEOR jars, as scripts/gpu_wheels.sh carries
    it to the GPU machine) must not send `auto` to the Java tokenizer, even where `java` is installed."""
    import importlib.util
    import json
    import shutil
    import subprocess
    import sys

    spec = importlib.util.find_spec("pycocoevalcap")
    source = Path(next(iter(spec.submodule_search_locations)))
    shutil.copytree(source, tmp_path / "pycocoevalcap", ignore=shutil.ignore_patterns("*.jar", "data", "spice"))
    # pycocoevalcap is a namespace package: the slim copy and the installed one merge, as they would on a
    # machine with both; each scorer module loads from the first, jar-less, copy
    refs = {"a": ["A man riding a horse.", "a person on a horse"], "b": ["Two dogs play in the snow!"]}
    cands = {"a": "a man rides a horse", "b": "dogs in snow"}
    script = (
        "import json, sys; from lmfusion_cli.evaluation.ptb import java_available, pycocoevalcap_has; "
        "from lmfusion_cli.evaluation.metrics import cider, caption_scores; "
        "r, c = json.loads(sys.argv[1]), json.loads(sys.argv[2]); "
        "print(json.dumps([java_available(), pycocoevalcap_has('cider.cider', 'cider_scorer.py'), cider(r, c), "
        "caption_scores(r, c, metrics=('meteor', 'cider'))]))"
    )
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}")
    out = subprocess.run(
        [sys.executable, "-c", script, json.dumps(refs), json.dumps(cands)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    java, has_cider, score, scores = json.loads(out.strip().splitlines()[-1])
    assert java is False and has_cider is True
    assert score == pytest.approx(cider(refs, cands, tokenizer="python"))
    assert scores["unavailable"] == ["METEOR"] and scores["CIDEr"] == pytest.approx(score)
