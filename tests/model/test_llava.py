"""LLaVAFusion: a LLaVA / LLaVA-NeXT base keeps its understanding exactly (LMFusion §5).

Against `transformers`' own VLM forward, bitwise in fp32 on CPU: an image + question sequence
(vision rows from the VLM's `get_image_features`, AnyRes tiles and `image_newline` included, on the
text expert, causal) gives the VLM's logits; a text-only prompt gives its language model's logits.
"""

from __future__ import annotations

import pytest
import torch

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.model import LMFusionModel, TextPart, build_example, collate, llava
from lmfusion_cli.model.sequence import VISION, VisionPart

from .llava_helpers import (
    IMAGE_TOKEN,
    VOCAB,
    image_processor,
    processed,
    random_image,
    tiny_llava_model,
    tiny_vlm,
)


def _understanding_batch(model, kind, sizes=((20, 40), (28, 28))):
    """Two rows: [bos, 5, <image>×n, question...] for a wide and a square image."""
    examples, ids = [], []
    for i, (h, w) in enumerate(sizes):
        pixels, size = processed(kind, [random_image(h, w, seed=i)])
        n = llava.num_vision_tokens(model.base, pixels, tuple(size[0].tolist()))
        question = [1, 5, *[IMAGE_TOKEN] * n, 7 + i, 8, 9, 10]
        parts = [TextPart([1, 5]), VisionPart(n, IMAGE_TOKEN), TextPart(question[2 + n:])]
        examples.append(build_example(parts, num_image_tokens=model.num_image_tokens, boi_id=model.boi_id,
                                      eoi_id=model.eoi_id, vision_pixels=pixels, vision_sizes=size))
        ids.append(question)
    return collate(examples)[0], ids


@pytest.mark.parametrize("kind", ["llava_next", "llava"])
def test_understanding_logits_equal_the_vlm_bitwise(kind):
    model = tiny_llava_model(kind)
    reference = tiny_vlm(kind)  # an untouched copy of the same weights
    sizes = ((20, 40), (28, 28))
    batch, ids = _understanding_batch(model, kind, sizes)
    assert (batch.modality == VISION).sum() >= 8
    if kind == "llava_next":  # AnyRes: the wide image has more rows than the square one
        assert (batch.modality[0] == VISION).sum() > (batch.modality[1] == VISION).sum()
    with torch.no_grad():
        out = model.forward_segment(batch)
        for row, question in enumerate(ids):
            # the VLM's own inputs: its processor's (padded 5-D for LLaVA-NeXT) pixels and sizes
            vlm_inputs = image_processor(kind)(images=[random_image(*sizes[row], seed=row)], return_tensors="pt")
            theirs = reference(input_ids=torch.tensor([question]), **vlm_inputs).logits[0]
            ours = out.text_logits[row, : len(question), :VOCAB]
            assert torch.equal(ours, theirs)


@pytest.mark.parametrize("kind", ["llava_next", "llava"])
def test_text_only_logits_equal_the_vlm_bitwise(kind):
    model = tiny_llava_model(kind)
    reference = tiny_vlm(kind)
    ids = torch.randint(3, IMAGE_TOKEN, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model.text_logits(ids), reference(input_ids=ids).logits)


def test_llava_base_is_frozen_and_experts_copy_its_language_model():
    model = LMFusionModel.from_base(tiny_vlm(), latent_size=8, unet_channels=(16, 32))
    assert model.is_llava and model.decoder is model.base.model.language_model
    assert not any(p.requires_grad for p in model.base.parameters())  # vision tower, projector, LM
    trainable = {id(p) for p in model.trainable_parameters()}
    assert not trainable & {id(p) for p in model.base.model.vision_tower.parameters()}
    expert, text = model.image_experts[0], model.decoder.layers[0]
    assert torch.equal(expert.mlp.up_proj.weight, text.mlp.up_proj.weight)
    assert expert.mlp.up_proj.weight is not text.mlp.up_proj.weight


def test_llava_base_refuses_unfreezing():
    with pytest.raises(UserError, match="keeps frozen"):
        LMFusionModel.from_base(tiny_vlm(), latent_size=8, unet_channels=(16, 32), freeze_text=False)


def test_vision_rows_must_match_vision_positions():
    model = tiny_llava_model()
    batch, _ = _understanding_batch(model, "llava_next", sizes=((28, 28),))
    batch.vision_sizes = torch.tensor([[20, 40]])  # AnyRes of a wide image: more rows than positions
    batch.vision_pixels = processed("llava_next", [random_image(20, 40)])[0]
    with pytest.raises(ValueError, match="vision positions"):
        model.forward_segment(batch)
