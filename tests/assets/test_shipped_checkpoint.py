"""The shipped longer-trained demo checkpoint (lmfusion_cli/assets/tiny-lmfusion, `make tiny-lmfusion`,
issue 23): small, trainable weights only, loads with no flag on the shipped base and VAE, leaves text
exactly as the base has it, and captions held-out shapes images (offline, ~15 s)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from lmfusion_cli.assets import ASSETS_DIR, TINY_LM
from lmfusion_cli.data import shapes
from lmfusion_cli.evaluation.shapes_captions import score_captions

SHIPPED = ASSETS_DIR / "tiny-lmfusion"
BUILD = json.loads((SHIPPED / "build.json").read_text())


@pytest.fixture(scope="module")
def loaded():
    from lmfusion_cli.sampling.loading import load_for_sampling

    torch.set_num_threads(1)
    return load_for_sampling(SHIPPED)


def test_size_and_build_record():
    size = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert size <= 15 * 2**20, f"{size / 2**20:.1f} MiB (limit 15)"
    # three cosine cycles (pipelines/tiny_lmfusion.sh): 20,000 steps, then 16,000 from their weights at lr 1e-3,
    # then 15,000 generation-heavy ones
    assert BUILD["steps"] == 51000 and [c["steps"] for c in BUILD["cycles"]] == [20000, 16000, 15000]
    assert BUILD["cycles"][-1]["args"] == ["--set", "data.generation_fraction=0.7"]
    assert BUILD["stages"]["run"]["wall_s"] > 0 and BUILD["cycles"][0]["run"]["cpu_s"] > 0
    assert set(BUILD["shapes"]) == {"generation", "captioning"}
    assert 0 < BUILD["shapes"]["captioning"]["cider"]


def test_loads_on_the_shipped_base_and_vae_with_no_flag(loaded):
    assert loaded.model.base_id == str(TINY_LM)
    assert loaded.codec.resolution == 64
    export = json.loads((SHIPPED / "lmfusion_export.json").read_text())
    assert (
        export["vae"]["id"] == "../tiny-vae" and export["source"]["step"] == BUILD["cycles"][-1]["steps"]
    )  # the last cycle's run


def test_holds_trainable_weights_only(loaded):
    trainable = {n for n, p in loaded.model.named_parameters() if p.requires_grad}
    with safe_open(str(SHIPPED / "model.safetensors"), "pt") as f:
        stored = set(f.keys())
    assert stored == trainable and not any(name.startswith("base.") for name in stored)


def test_text_logits_equal_the_base(loaded):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(TINY_LM).eval()
    ids = torch.randint(5, base.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = loaded.model.text_logits(ids)
        theirs = base(ids).logits
    assert torch.equal(ours[..., : theirs.shape[-1]], theirs)


def test_captions_name_the_background_of_held_out_images(loaded):
    from lmfusion_cli.sampling.captioning import caption_images

    items = [shapes.make_item(i, 1000, 64) for i in range(16)]  # seed 1000: not in the training set (seed 0)
    captions = caption_images(
        loaded.model, [it.image for it in items], tokenizer=loaded.tokenizer, vae=loaded.codec, batch_size=16
    )
    texts = {it.key: r["caption"] for it, r in zip(items, captions.records)}
    scored = score_captions(texts, {it.key: it.attributes for it in items}, tokenizer="auto")
    # the build measured 1.00 on 200 held-out items; chance is 1/8
    assert scored["accuracy"]["background"] >= 0.75, texts
