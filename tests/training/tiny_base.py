"""A tiny random Llama base + word-level tokenizer saved to a folder, and a fake latent cache.

Tests build these themselves (no dependency on the embedded assets): 2 layers, width 32."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = (
    "a",
    "red",
    "blue",
    "green",
    "circle",
    "square",
    "triangle",
    "small",
    "large",
    "on",
    "the",
    "left",
    "right",
    "background",
    "of",
    "with",
    "white",
    "black",
)
SPECIAL = ("<pad>", "<s>", "</s>", "<unk>", "<|begin_of_image|>", "<|end_of_image|>")


def build_tiny_base(folder: Path, seed: int = 0, tie_word_embeddings: bool = False, words=WORDS) -> Path:
    """Save a 2-layer width-32 Llama + word-level tokenizer (`words` after the specials) to `folder`.

    `tie_word_embeddings=True` makes `lm_head.weight` the embedding table, as in SmolLM2 / Llama-3.2."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL + tuple(words))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=["<|begin_of_image|>", "<|end_of_image|>"],
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=tie_word_embeddings,
    )
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class FakeLatentCache:
    """The latent cache's reader interface (dict items, `latent_shape`, `draw`) over random latents."""

    def __init__(self, num_items: int = 16, shape=(4, 8, 8), seed: int = 0, nan_keys=()):
        g = torch.Generator().manual_seed(seed)
        self.latent_shape = shape
        self.mean = torch.randn(num_items, *shape, generator=g)
        self.std = 0.05 * torch.ones(num_items, *shape)
        colours, shapes = ("red", "blue", "green"), ("circle", "square", "triangle")
        self.records = [
            {"key": f"k{i:03d}", "caption": f"a {colours[i % 3]} {shapes[(i // 3) % 3]} on the left"}
            for i in range(num_items)
        ]
        for i, r in enumerate(self.records):
            if r["key"] in nan_keys:
                self.mean[i, 0, 0, 0] = float("nan")
        self.manifest = {"vae": {"id": "fake"}}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        return self.records[i]

    def draw(self, i: int, generator=None) -> torch.Tensor:
        return self.mean[i] + self.std[i] * torch.randn(self.mean[i].shape, generator=generator)


def write_fake_cache(
    folder: Path, num_items: int = 16, shape=(4, 8, 8), seed: int = 0, vae_weights_sha256: str = "0"
) -> Path:
    """A latent cache on disk in `data.latents` format (train + val splits), random latents."""
    from lmfusion_cli.common.manifest import file_entry, write_manifest
    from lmfusion_cli.data.latents import write_latent_shard

    fake = FakeLatentCache(num_items, shape, seed)
    folder.mkdir(parents=True, exist_ok=True)
    shards, files = [], {}
    for split, rows in (("train", range(0, num_items - 4)), ("val", range(num_items - 4, num_items))):
        stem = f"{split}-00000"
        rows = list(rows)
        write_latent_shard(
            folder,
            stem,
            {"mean": fake.mean[rows].half(), "std": fake.std[rows].half()},
            [{"key": fake.records[i]["key"], "caption": fake.records[i]["caption"], "meta": {}} for i in rows],
        )
        shards.append({"stem": stem, "split": split, "count": len(rows)})
        for ext in ("safetensors", "jsonl"):
            files[f"{stem}.{ext}"] = file_entry(folder / f"{stem}.{ext}")
    vae = {
        "id": "fake-vae",
        "config_hash": "0",
        "weights_sha256": vae_weights_sha256,
        "scaling_factor": 1.0,
        "shift_factor": 0.0,
        "latent_channels": shape[0],
    }
    write_manifest(
        folder,
        "latents",
        vae=vae,
        resolution=shape[1] * 8,
        latent_shape=list(shape),
        dtype="fp16",
        store="mean-std",
        flip=False,
        shards=shards,
        files=files,
    )
    return folder


def cli(*args) -> int:
    """Run `lmfusion ARGS` in this process; the exit code (0 when it returns)."""
    from lmfusion_cli.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0
