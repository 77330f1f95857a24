"""The shipped embedded assets (lmfusion_cli/assets/) meet issue 4's bar, checked by recomputing, offline.

Plain `transformers`/`diffusers` loading (conftest sets HF_HUB_OFFLINE=1 and blocks the network)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from lmfusion_cli.assets import ASSETS_DIR, TINY_LM, TINY_VAE, asset_path
from lmfusion_cli.data import shapes

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import lm_corpus  # noqa: E402
import tiny_lm  # noqa: E402
import tiny_vae  # noqa: E402

REPORT = json.loads((ASSETS_DIR / "build_report.json").read_text())


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TINY_LM)


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    return AutoModelForCausalLM.from_pretrained(TINY_LM).eval()


@pytest.fixture(scope="module")
def vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(TINY_VAE).eval()


def test_paths_and_total_size():
    assert TINY_LM == asset_path("tiny-lm") and TINY_VAE == asset_path("tiny-vae")
    shipped = ASSETS_DIR / "tiny-lmfusion"  # the trained demo checkpoint has its own limit (test_shipped_checkpoint)
    total = sum(p.stat().st_size for p in ASSETS_DIR.rglob("*") if p.is_file() and shipped not in p.parents)
    assert total <= 25 * 2**20, f"assets hold {total / 2**20:.1f} MiB (limit 25)"
    assert not REPORT["quick"]


def test_tokenizer_round_trips_and_has_the_special_tokens(tokenizer):
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|pad|>",
    )
    for name in ("<|begin_of_image|>", "<|end_of_image|>"):
        ids = tokenizer(name, add_special_tokens=False)["input_ids"]
        assert ids == [tokenizer.convert_tokens_to_ids(name)], name  # one token, not split into pieces
    for text in (
        "a red circle on a blue background",
        "Once upon a time, Émile said: «ça va?» 42 🙂\n\ttabs",
        "  two  spaces ",
        "unseen words: xylophone quizzically",
    ):
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert 2000 <= len(tokenizer) <= 4096


def test_model_is_a_plain_llama_with_gqa(model, tokenizer):
    cfg = model.config
    assert type(model).__name__ == "LlamaForCausalLM" and cfg.vocab_size == len(tokenizer)
    assert cfg.num_key_value_heads < cfg.num_attention_heads and cfg.hidden_act == "silu"
    assert not cfg.tie_word_embeddings and cfg.max_position_embeddings >= 512
    assert (TINY_LM / "model.safetensors").is_file() and not list(TINY_LM.glob("*.bin"))
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_reported_perplexity_is_real_and_within_the_bound(model, tokenizer):
    lm = REPORT["lm"]
    sizes = REPORT["sizes"]
    c = lm_corpus.build_corpus(sizes["num_captions"], sizes["num_general"], 100, seed=REPORT["seed"])
    seen = lm_corpus.training_sentences(c.train)
    for kind, docs in c.heldout.items():
        assert docs and all(s not in seen for d in docs for s in d.sentences)
        measured = tiny_lm.perplexity(model, tokenizer, docs)
        bound = len(tokenizer) / 20
        assert measured <= bound, (kind, measured, bound)
        assert lm["heldout_perplexity"][kind] <= bound
        # 100 of the report's 400 held-out documents: the same figure within sampling noise
        assert measured == pytest.approx(lm["heldout_perplexity"][kind], rel=0.25), kind


def test_greedy_caption_continuation_is_a_shapes_caption(model, tokenizer):
    text = tiny_lm.greedy_samples(model, tokenizer, prompts=("a red",))["a red"]
    templates = list(shapes.SINGLE_TEMPLATES) + [t for ts in shapes.PAIR_TEMPLATES.values() for t in ts]
    patterns = [re.compile("^" + re.sub(r"\\\{[a-z0-9]+\\\}", "[a-z ]+", re.escape(t)) + "$") for t in templates]
    assert any(p.match(text) for p in patterns), text
    assert text.startswith("a red ")


def test_vae_reconstructs_heldout_shapes_and_scaled_latents_are_standardised(vae):
    cfg = vae.config
    assert cfg.latent_channels == 4 and cfg.scaling_factor != 0.18215 and cfg.shift_factor is not None
    images = tiny_vae.images_tensor(range(100), REPORT["seed"] + tiny_vae.HELDOUT_SEED_OFFSET, cfg.sample_size)
    psnr = tiny_vae.psnr_db(vae, images)
    assert psnr["psnr_mean_db"] >= 26.0, psnr
    assert REPORT["vae"]["heldout_psnr_db"] >= 26.0 and REPORT["vae"]["heldout_images"]["count"] == 500
    with torch.no_grad():
        z = vae.encode(tiny_vae.to_model_range(images)).latent_dist.sample(generator=torch.Generator().manual_seed(0))
    scaled = (z - cfg.shift_factor) * cfg.scaling_factor
    assert z.shape[1:] == (4, cfg.sample_size // 4, cfg.sample_size // 4)
    assert abs(float(scaled.mean())) <= 0.2 and abs(float(scaled.std()) - 1) <= 0.2
