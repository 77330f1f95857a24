"""Sampling: text→image with classifier-free guidance over a prefix KV cache, image→text, interleaved.

Python API (used by `lmfusion sample` and by `evaluate`):

- `load_for_sampling(checkpoint, vae=None, ...)` → `Loaded(model, tokenizer, codec, checkpoint)`
- `generate_images(model, prompts, tokenizer=, vae=, options=DecodingOptions(...), seed=, batch_size=, ...)`
  → `GeneratedImages(images: list[uint8 HxWx3], records, latents)`
- `caption_images(model, images, tokenizer=, vae=, options=, ...)` → `Captions(records, skips)`
- `generate_interleaved(model, prompts, tokenizer=, vae=, options=, max_images=, ...)` → `list[InterleavedDocument]`
- Each takes one `DecodingOptions` (`config.py`: every sampling default, written once); keyword settings
  with its field names (`cfg_scale=2.0, steps=10`) change single options.
- `as_generate_fn(model, tokenizer=, vae=, **settings)` / `as_caption_fn(...)`: the plain callables
  `evaluation.generations` takes (`generate_fn(prompts, seeds) -> [PIL]`, `caption_fn(images) -> [str]`)
- `run_sample(SampleConfig)`: the whole stage (files, manifest).

Files: `schedulers.py` (diffusers samplers), `context.py` (cached / uncached sequence state), `t2i.py`
(guidance + denoising loop), `decoding.py` (greedy / beam / top-p; `beam_candidates`, the n-best list),
`rerank.py` (captions chosen among the beam's by the image's likelihood, `rerank="image"`), `captioning.py`
(+ `vlm_captioning.py` for a LLaVA base: the VLM's own vision path and prompt), `interleaved.py`,
`generate.py`, `loading.py`, `io.py`, `config.py`, `stage.py`. The latent codec (`LatentCodec`) is
`common/vae.py`'s, shared with the data stages.
"""

from lmfusion_cli.common.lazy import lazy_attributes

_SOURCES = {
    "Captions": "captioning",
    "as_caption_fn": "captioning",
    "caption_images": "captioning",
    "GeneratedImages": "generate",
    "as_generate_fn": "generate",
    "generate_images": "generate",
    "InterleavedDocument": "interleaved",
    "generate_interleaved": "interleaved",
    "Loaded": "loading",
    "load_for_sampling": "loading",
    "LatentCodec": "lmfusion_cli.common.vae",
}


__getattr__ = lazy_attributes(__name__, _SOURCES)
__all__ = sorted(_SOURCES)
