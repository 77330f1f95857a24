"""The Python API evaluation uses: explicit seeds, batch-size independence, the suite callables."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lmfusion_cli.sampling import as_caption_fn, as_generate_fn, caption_images, generate_images

SETTINGS = dict(cfg_scale=2.0, steps=2, sampler="euler")


def test_generate_images_seeds_records_and_batch_independence(model, tokenizer, codec):
    a = generate_images(
        model,
        ["red circle", "blue"],
        tokenizer=tokenizer,
        vae=codec,
        seed=10,
        batch_size=3,
        num_per_prompt=2,
        keep_latents=True,
        **SETTINGS,
    )
    assert [r["seed"] for r in a.records] == [10, 11, 12, 13]
    assert [r["prompt_index"] for r in a.records] == [0, 0, 1, 1]
    assert a.latents.shape == (4, 4, 8, 8) and all(img.shape == (32, 32, 3) for img in a.images)
    b = generate_images(model, ["blue"], tokenizer=tokenizer, vae=codec, seeds=[12], batch_size=1, **SETTINGS)
    assert np.abs(b.images[0].astype(int) - a.images[2].astype(int)).max() <= 1
    with pytest.raises(ValueError, match="seeds"):
        generate_images(model, ["x"], tokenizer=tokenizer, vae=codec, seeds=[1, 2], **SETTINGS)


def test_suite_callables(model, tokenizer, codec):
    generate_fn = as_generate_fn(model, tokenizer=tokenizer, vae=codec, **SETTINGS)
    images = generate_fn(["red circle", "green"], [3, 4])
    assert len(images) == 2 and all(isinstance(i, Image.Image) and i.size == (32, 32) for i in images)
    caption_fn = as_caption_fn(model, tokenizer=tokenizer, vae=codec, max_new_tokens=3)
    captions = caption_fn(images)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    direct = caption_images(model, images, tokenizer=tokenizer, vae=codec, max_new_tokens=3)
    assert [r["caption"] for r in direct.records] == captions
    assert direct.skips.counts()["kept"] == 2
