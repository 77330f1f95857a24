"""Sampling: text→image with classifier-free guidance over a prefix KV cache, image→text, interleaved.

Python API (used by `lmfusion sample` and by `evaluate`):

- `load_for_sampling(checkpoint, vae=None, ...)` → `Loaded(model, tokenizer, codec, checkpoint)`
- `generate_images(model, prompts, tokenizer=, vae=, cfg_scale=, steps=, sampler=, seed=, batch_size=, ...)`
  → `GeneratedImages(images: list[uint8 HxWx3], records, latents)`
- `caption_images(model, images, tokenizer=, vae=, decoding="greedy"|"beam"|"top-p", max_new_tokens=, ...)`
  → `Captions(records, skips)`
- `generate_interleaved(model, prompts, tokenizer=, vae=, ...)` → `list[InterleavedDocument]`
- `as_generate_fn(model, tokenizer=, vae=, **settings)` / `as_caption_fn(...)`: the plain callables
  `evaluation.suites` takes (`generate_fn(prompts, seeds) -> [PIL]`, `caption_fn(images) -> [str]`)
- `run_sample(SampleConfig)`: the whole stage (files, manifest).

Files: `schedulers.py` (diffusers samplers), `context.py` (cached / uncached sequence state), `t2i.py`
(guidance + denoising loop), `decoding.py` (greedy / beam / top-p), `captioning.py` (+ `vlm_captioning.py`
for a LLaVA base: the VLM's own vision path and prompt), `interleaved.py`,
`generate.py`, `loading.py`, `io.py`, `config.py`, `stage.py`. The latent codec (`LatentCodec`) is
`common/vae.py`'s, shared with the data stages.
"""

from lmfusion_cli.common.vae import LatentCodec
from lmfusion_cli.sampling.captioning import Captions, as_caption_fn, caption_images
from lmfusion_cli.sampling.generate import GeneratedImages, as_generate_fn, generate_images
from lmfusion_cli.sampling.interleaved import InterleavedDocument, generate_interleaved
from lmfusion_cli.sampling.loading import Loaded, load_for_sampling

__all__ = [
    "Captions",
    "GeneratedImages",
    "as_caption_fn",
    "as_generate_fn",
    "InterleavedDocument",
    "LatentCodec",
    "Loaded",
    "caption_images",
    "generate_images",
    "generate_interleaved",
    "load_for_sampling",
]
