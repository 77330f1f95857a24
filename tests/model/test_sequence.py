"""Sequence building: layouts, labels, packing, BOI/EOI resolution."""

from __future__ import annotations

import pytest
import torch

from lmfusion_cli.model import (
    IGNORE,
    IMAGE,
    PAD,
    TEXT,
    caption_to_image,
    collate,
    image_to_caption,
    left_pad,
    pack,
    resolve_boi_eoi,
)

N, BOI, EOI = 4, 90, 91
KW = dict(num_image_tokens=N, boi_id=BOI, eoi_id=EOI, bos_id=1, eos_id=2)


def test_caption_to_image_layout_and_labels():
    ex = caption_to_image([5, 6], **KW)
    assert ex.input_ids.tolist() == [1, 5, 6, BOI, 0, 0, 0, 0, EOI, 2]
    assert ex.modality.tolist() == [TEXT] * 4 + [IMAGE] * 4 + [TEXT] * 2
    assert ex.patch_index.tolist() == [-1] * 4 + [0, 1, 2, 3] + [-1] * 2
    # each text position predicts the next text token; BOI is a target (opening an image), the
    # image positions and the EOI (placed, not predicted) are not
    assert ex.labels.tolist() == [5, 6, BOI, IGNORE, IGNORE, IGNORE, IGNORE, IGNORE, 2, IGNORE]
    assert ex.image_generate.tolist() == [True]


def test_image_to_caption_layout_and_labels():
    ex = image_to_caption([5, 6], **KW)
    assert ex.input_ids.tolist() == [1, BOI, 0, 0, 0, 0, EOI, 5, 6, 2]
    assert ex.labels.tolist() == [IGNORE] * 6 + [5, 6, 2, IGNORE]
    assert ex.image_generate.tolist() == [False]


def test_pack_two_documents_per_row_with_positions_and_padding():
    a = caption_to_image([5, 6], latents=torch.zeros(1, 4, 2, 2), **KW)  # 10 positions
    b = image_to_caption([7], latents=torch.ones(1, 4, 2, 2), **KW)  # 9 positions
    c = caption_to_image([8, 9, 10], latents=torch.full((1, 4, 2, 2), 2.0), **KW)  # 11 positions
    batch, latents = pack([a, b, c], row_length=21)
    assert batch.input_ids.shape == (2, 21)
    # first fit: a and b share row 0, c opens row 1
    assert batch.document_ids[0].tolist() == [0] * 10 + [1] * 9 + [-1] * 2
    assert batch.document_ids[1].tolist() == [2] * 11 + [-1] * 10
    assert batch.position_ids[0, :19].tolist() == list(range(10)) + list(range(9))
    assert (batch.modality[0, 19:] == PAD).all() and (batch.labels[1, 11:] == IGNORE).all()
    assert batch.image_index[0][batch.modality[0] == IMAGE].tolist() == [0] * N + [1] * N
    assert batch.image_index[1][batch.modality[1] == IMAGE].tolist() == [2] * N
    assert latents[:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0]
    assert batch.image_generate.tolist() == [True, False, True]
    assert batch.num_examples == 3
    with pytest.raises(ValueError, match="row_length"):
        pack([c], row_length=5)


def test_collate_and_left_pad():
    batch, latents = collate([caption_to_image([5], **KW), image_to_caption([5, 6, 7], **KW)])
    assert batch.input_ids.shape == (2, 11) and latents is None
    seg = left_pad([[3, 4, 5], [6]])
    assert seg.input_ids.tolist() == [[3, 4, 5], [0, 0, 6]]
    assert seg.position_ids.tolist() == [[0, 1, 2], [0, 0, 0]]
    assert seg.document_ids.tolist() == [[0, 0, 0], [-1, -1, 0]]


def _tokenizer(extra=()):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "a", "b", *extra])}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")), unk_token="<unk>"
    )


def test_resolve_boi_eoi_prefers_named_then_reserved_then_new():
    named = _tokenizer(
        ["<|reserved_special_token_0|>", "<|reserved_special_token_1|>", "<|begin_of_image|>", "<|end_of_image|>"]
    )
    assert resolve_boi_eoi(named) == (5, 6)
    reserved = _tokenizer(["<|reserved_special_token_0|>", "<|reserved_special_token_1|>"])
    assert resolve_boi_eoi(reserved) == (3, 4)
    plain = _tokenizer()
    assert resolve_boi_eoi(plain) == (3, 4) and len(plain) == 5
