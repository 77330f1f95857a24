"""Tiny models and batches for the model tests (built from configs; nothing is downloaded)."""

from __future__ import annotations

import torch
import transformers

from lmfusion_cli.model import LMFusionModel, caption_to_image, image_to_caption, pack

VOCAB = 96
_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
LAYOUTS = {
    "llama3": (
        transformers.LlamaConfig,
        transformers.LlamaForCausalLM,
        dict(
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=64,
            )
        ),
    ),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),  # QKV bias
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, dict(head_dim=8)),  # q/k norms
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, dict(sliding_window=None)),
    "smollm": (transformers.LlamaConfig, transformers.LlamaForCausalLM, dict(tie_word_embeddings=True)),
}


def tiny_base(layout: str = "llama3", seed: int = 0, **overrides):
    config_cls, model_cls, extra = LAYOUTS[layout]
    torch.manual_seed(seed)
    base = model_cls(config_cls(**{**_COMMON, **extra, **overrides}))
    if layout == "qwen2":  # random init leaves biases at 0; make the QKV bias matter
        for layer in base.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.1)
    if layout == "qwen3":
        for layer in base.model.layers:
            torch.nn.init.normal_(layer.self_attn.q_norm.weight, mean=1.0, std=0.1)
    return base.eval()


def tiny_model(layout: str = "llama3", seed: int = 0, base_overrides: dict | None = None, **options) -> LMFusionModel:
    options = {"latent_size": 8, "unet_channels": (16, 32), **options}
    model = LMFusionModel.from_base(tiny_base(layout, seed, **(base_overrides or {})), **options)
    torch.manual_seed(seed + 1)
    with torch.no_grad():  # copied experts start equal to the text modules; make them differ
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def mixed_examples(model: LMFusionModel, seed: int = 0, captions=((5, 6, 7), (8, 9, 10, 11), (12, 13))):
    """A caption→image, an image→caption and a two-image example, with latents."""
    g = torch.Generator().manual_seed(seed)
    C, S, N = model.config.latent_channels, model.config.latent_size, model.num_image_tokens
    kw = dict(num_image_tokens=N, boi_id=model.boi_id, eoi_id=model.eoi_id, bos_id=1, eos_id=2)
    lat = lambda k: torch.randn(k, C, S, S, generator=g)  # noqa: E731
    from lmfusion_cli.model import ImagePart, TextPart, build_example

    two = build_example(
        [TextPart([1, *captions[2]]), ImagePart(True), TextPart([14, 15]), ImagePart(False), TextPart([16, 2])],
        num_image_tokens=N,
        boi_id=model.boi_id,
        eoi_id=model.eoi_id,
        latents=lat(2),
    )
    return [
        caption_to_image(captions[0], latents=lat(1), **kw),
        image_to_caption(captions[1], latents=lat(1), **kw),
        two,
    ]


def mixed_batch(model: LMFusionModel, row_length: int | None = None, seed: int = 0):
    examples = mixed_examples(model, seed)
    length = row_length or sum(len(e) for e in examples) + 3
    return pack(examples, length)
