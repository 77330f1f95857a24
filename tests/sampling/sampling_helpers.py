"""Tiny sampling fixtures built from configs: a word-level tokenizer with the image tokens, a tiny
Llama base, an LMFusion model around it (experts perturbed so they differ from the text modules), and
a tiny random VAE. Nothing is downloaded."""

from __future__ import annotations

import torch
import transformers
from diffusers import AutoencoderKL
from tokenizers import Tokenizer, models, pre_tokenizers

from lmfusion_cli.data.shapes import COLOURS, POSITIONS, SHAPES, SIZES
from lmfusion_cli.model import LMFusionModel

torch.set_num_threads(1)  # 2 cores shared by several engineers; the tiny models do not need more

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|begin_of_image|>", "<|end_of_image|>"]
WORDS = ["a", "an", "the", "on", "of", "in", "is", "and", "background", "image", "shape", "with", "."]


def _words() -> list[str]:
    found: list[str] = []
    for group in (COLOURS, SHAPES, SIZES, POSITIONS, WORDS):
        names = group.keys() if isinstance(group, dict) else group
        for name in names:
            for w in str(name).replace("-", " ").split():
                if w not in found:
                    found.append(w)
    return found


def make_tokenizer() -> transformers.PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + _words())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=SPECIALS[4:],
    )
    return tok


def make_base(vocab_size: int, seed: int = 0) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return transformers.LlamaForCausalLM(config).eval()


def make_model(tokenizer, seed: int = 0, **options) -> LMFusionModel:
    """BOI/EOI on new rows after the vocabulary (the default); pass `boi_id`/`eoi_id` (e.g.
    `resolve_boi_eoi(tokenizer)`) for the legacy reserved-id layout."""
    options = {"latent_size": 8, "latent_channels": 4, "patch_size": 2, "unet_channels": (16, 32), **options}
    model = LMFusionModel.from_base(make_base(len(tokenizer), seed), **options)
    torch.manual_seed(seed + 1)
    with torch.no_grad():  # copied experts start equal to the text modules; make them differ
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def make_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        sample_size=32,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        norm_num_groups=8,
    ).eval()
