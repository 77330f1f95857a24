"""`LMFusionPipeline`: the diffusers-style object over an exported model (text → image, image → text).

    pipe = LMFusionPipeline.from_pretrained("DIR or hub id")
    images = pipe("a red circle on a blue background", num_inference_steps=25, guidance_scale=3).images
    captions = pipe.caption(images)

It calls the same functions as `lmfusion sample` (`sampling.generate.generate_images`,
`sampling.captioning.caption_images`), so the same seed and settings give the same pixels (on the same
device and CPU thread count: float reductions depend on it). Sample i
of a call uses `seed + i`, as in `lmfusion sample`.

Why not a `diffusers.DiffusionPipeline` subclass: its `from_pretrained` loads each component listed
in `model_index.json` only if the component's class is a diffusers `ModelMixin`/`SchedulerMixin` or a
transformers model/tokenizer/processor (`pipeline_loading_utils.LOADABLE_CLASSES`); the LMFusion model
is neither (it is a `PyTorchModelHubMixin` around a loaded transformers LM), and its sampler is a
KV-cached loop over a mixed text/image sequence, not a scheduler stepping a denoiser component. A
subclass would override the loader and the call and keep only the name, so this is a plain class with
the same surface: `from_pretrained`, `__call__(...).images` (diffusers' `ImagePipelineOutput`), `to`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from PIL import Image

from lmfusion_cli.sampling.config import DecodingOptions


class LMFusionPipeline:
    def __init__(self, model, tokenizer, codec):
        """model: `LMFusionModel`; tokenizer: its tokenizer (BOI/EOI ids must match); codec: `LatentCodec`."""
        self.model, self.tokenizer, self.codec = model.eval(), tokenizer, codec

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        device: str = "cpu",
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        token=None,
        local_files_only: bool = False,
    ) -> LMFusionPipeline:
        """Load an `lmfusion export` folder, or the Hub repository it was pushed to."""
        from lmfusion_cli.model.hub import local_folder
        from lmfusion_cli.sampling.loading import load_for_sampling

        folder = local_folder(
            str(pretrained_model_name_or_path),
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
        )
        loaded = load_for_sampling(folder, device=device)
        return cls(loaded.model, loaded.tokenizer, loaded.codec)

    def to(self, device: str) -> LMFusionPipeline:
        self.model.to(device)
        self.codec.vae.to(device)
        return self

    @property
    def device(self):
        return next(self.model.parameters()).device

    def __call__(
        self,
        prompt: str | Sequence[str],
        *,
        num_inference_steps: int = DecodingOptions.steps,
        guidance_scale: float = DecodingOptions.cfg_scale,
        num_images_per_prompt: int = 1,
        seed: int = 0,
        sampler: str = DecodingOptions.sampler,
        batch_size: int = 8,
        use_cache: bool = DecodingOptions.cache,
    ) -> ImagePipelineOutput:
        """Text → image. Defaults are `lmfusion sample`'s (`sampling.config.DecodingOptions`; seed 0)."""
        from lmfusion_cli.sampling.generate import generate_images

        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        out = generate_images(
            self.model,
            prompts,
            tokenizer=self.tokenizer,
            vae=self.codec,
            options=DecodingOptions(
                cfg_scale=guidance_scale, steps=num_inference_steps, sampler=sampler, cache=use_cache
            ),
            seed=seed,
            batch_size=batch_size,
            num_per_prompt=num_images_per_prompt,
        )
        return ImagePipelineOutput(images=[Image.fromarray(image) for image in out.images])

    def caption(
        self,
        images: Image.Image | Sequence[Image.Image | str | Path],
        *,
        max_new_tokens: int = DecodingOptions.max_new_tokens,
        decoding: str = DecodingOptions.decoding,
        num_beams: int = DecodingOptions.num_beams,
        rerank: str = DecodingOptions.rerank,
        top_p: float = DecodingOptions.top_p,
        temperature: float = DecodingOptions.temperature,
        seed: int = 0,
        batch_size: int = 8,
    ) -> list[str]:
        """Image → text, one caption per image (an unreadable image gets "")."""
        from lmfusion_cli.sampling.captioning import caption_images

        items = [images] if isinstance(images, Image.Image) else list(images)
        result = caption_images(
            self.model,
            items,
            tokenizer=self.tokenizer,
            vae=self.codec,
            options=DecodingOptions(
                decoding=decoding,
                max_new_tokens=max_new_tokens,
                num_beams=num_beams,
                rerank=rerank,
                top_p=top_p,
                temperature=temperature,
            ),
            seed=seed,
            batch_size=batch_size,
        )
        by_index = {r["index"]: r["caption"] for r in result.records}
        return [by_index.get(i, "") for i in range(len(items))]
