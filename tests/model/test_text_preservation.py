"""Text preserved: the routed model's text logits equal the base `transformers` model's.

Text-only input: bitwise (torch.equal) on every layout we support, in fp32 on CPU: the text path
runs exactly the base's modules on the same rows. Captions inside a longer mixed sequence: equal to
1e-6 (the attention reduces over a longer, masked row, so float sums may round differently).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmfusion_cli.model import LMFusionModel, caption_to_image, collate
from lmfusion_cli.model.sequence import text_segment

from .helpers import LAYOUTS, VOCAB, tiny_base, tiny_model

REAL_LM = Path(__file__).resolve().parents[2] / ".cache" / "smollm2-135m-instruct"


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_text_logits_equal_base(layout):
    model = tiny_model(layout)
    reference = tiny_base(layout)  # an untouched copy of the same weights
    ids = torch.randint(3, VOCAB, (3, 17), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0  # right padding
    mask[2, 5:] = 0
    with torch.no_grad():
        ours = model.text_logits(ids)  # exactly the base's shape: (B, T, V)
        theirs = reference(ids).logits
        assert torch.equal(ours, theirs)
        ours_padded = model.text_logits(ids, attention_mask=mask)
        theirs_padded = reference(ids, attention_mask=mask).logits
    valid = mask.bool()
    assert torch.equal(ours_padded[valid], theirs_padded[valid])


@pytest.mark.parametrize("layout", ["llama3", "qwen3"])
def test_caption_logits_in_a_mixed_sequence_equal_base_on_caption_alone(layout):
    model = tiny_model(layout)
    reference = tiny_base(layout)
    caption = [1, 7, 8, 9, 10, 11]
    C, S, N = 4, model.config.latent_size, model.num_image_tokens
    example = caption_to_image(
        caption,
        num_image_tokens=N,
        boi_id=model.boi_id,
        eoi_id=model.eoi_id,
        eos_id=2,
        latents=torch.randn(1, C, S, S),
    )
    batch, latents = collate([example])
    with torch.no_grad():
        out = model.forward_segment(batch, latents, torch.tensor([500.0]))
        alone = reference(torch.tensor([caption])).logits
    # not bitwise: the attention reduces over a longer (masked) row than the base's
    torch.testing.assert_close(out.text_logits[0, : len(caption), :VOCAB], alone[0], atol=1e-6, rtol=0)


def test_new_special_rows_extend_segment_logits_but_not_text_logits():
    model = tiny_model("llama3")
    assert model.new_special_rows and (model.boi_id, model.eoi_id) == (VOCAB, VOCAB + 1)
    ids = torch.tensor([[1, 5, 6]])
    with torch.no_grad():
        logits = model.text_logits(ids)
        segment_logits = model.forward_segment(text_segment(ids, torch.arange(3).expand(1, 3), None)).text_logits
    assert logits.shape[-1] == VOCAB  # text_logits: the base's vocabulary only
    assert segment_logits.shape[-1] == VOCAB + 2  # sampling can emit the new BOI/EOI rows
    assert torch.equal(segment_logits[..., :VOCAB], logits)


def test_reserved_special_rows_are_reused():
    base = tiny_base("llama3")
    model = LMFusionModel.from_base(base, latent_size=8, unet_channels=(16, 32), boi_id=90, eoi_id=91)
    assert not model.new_special_rows and model.special_head is None
    assert torch.equal(model.special_embed.detach(), base.model.embed_tokens.weight[[90, 91]])
    assert model.text_logits(torch.tensor([[1, 2]])).shape[-1] == VOCAB


@pytest.mark.skipif(not REAL_LM.is_dir(), reason=f"real LM folder {REAL_LM} missing; run `make real-lm` to create it")
def test_real_smollm2_text_preserved():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(REAL_LM)
    reference = AutoModelForCausalLM.from_pretrained(REAL_LM, dtype=torch.float32).eval()
    model = LMFusionModel.from_base(REAL_LM, latent_size=8, unet_channels=(16, 32)).eval()
    prompts = ["The capital of France is", "Write a haiku about the sea:\n"]
    encoded = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        ours = model.text_logits(encoded.input_ids, encoded.attention_mask)[..., : reference.config.vocab_size]
        theirs = reference(**encoded).logits
    valid = encoded.attention_mask.bool()
    torch.testing.assert_close(ours[valid], theirs[valid], atol=1e-5, rtol=0)
    assert torch.equal(ours[valid], theirs[valid])  # bitwise, noted in docs/model.md
    last = ours[0, valid[0].nonzero().max()]
    assert tokenizer.decode(last.argmax().item()).strip().startswith("Paris")
