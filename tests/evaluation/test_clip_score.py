"""CLIP score with a tiny random open_clip model built from a custom config (no download)."""

from __future__ import annotations

import pytest
import torch
from stand_ins import save_tiny_clip

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.data import shapes
from lmfusion_cli.evaluation.clip_score import clip_score, clip_scores, load_clip


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import open_clip

    config, weights = save_tiny_clip(tmp_path_factory.mktemp("clip"))
    model = open_clip.create_model("tiny-test-clip", pretrained=None)
    model.load_state_dict(torch.load(weights))
    return config, weights, model.eval()


def test_clip_score_matches_manual_cosine(tiny_clip):
    config, weights, model = tiny_clip
    scorer = load_clip("ignored-when-config-given", weights, model_config=config)
    for a, b in zip(scorer.model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)  # the weights file was loaded, not a fresh random init
    items = [shapes.make_item(i, 0, 48) for i in range(5)]
    images, prompts = [it.image for it in items], [it.caption for it in items]
    scores = clip_scores(scorer, images, prompts, batch_size=2)
    with torch.no_grad():
        img = model.encode_image(torch.stack([scorer.preprocess(im) for im in images]))
        txt = model.encode_text(scorer.tokenizer(prompts))
    cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
    assert scores == pytest.approx((100 * cos.clamp(min=0)).tolist(), abs=1e-4)
    assert all(0.0 <= s <= 100.0 for s in scores)
    assert clip_score(scorer, images, prompts) == pytest.approx(sum(scores) / 5, abs=1e-4)
    with pytest.raises(ValueError, match="prompts"):
        clip_scores(scorer, images, prompts[:2])


def test_builtin_arch_name_and_errors(tiny_clip, tmp_path):
    config, weights, _ = tiny_clip
    assert load_clip("tiny-test-clip", weights).model is not None  # registered architecture by name
    with pytest.raises(UserError, match="CLIP weights file"):
        load_clip("ViT-B-32", tmp_path / "open_clip_model.safetensors")
    with pytest.raises(UserError, match="not an open_clip architecture"):
        load_clip("no-such-arch", weights)
    with pytest.raises(UserError, match="model config"):
        load_clip("x", weights, model_config=tmp_path / "missing.json")
