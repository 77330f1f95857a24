"""Sampling settings: the choices, the defaults and the options dataclasses, importing nothing heavy.

`SamplingSettings` holds how images are denoised and text is decoded; `DecodingOptions` adds one
guidance scale and is the single options object the sampling functions take (`generate_images`,
`caption_images`, `generate_interleaved`, `decoding.decode`). `SampleConfig` (`lmfusion sample`) is
those options plus the stage's inputs and outputs; `evaluation.config.EvalSamplingConfig` is the
settings plus a list of guidance scales. Each default is written here once. Checking a config
imports no torch / diffusers: the implementations import this file, not the other way round."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Literal, get_args

from lmfusion_cli.common.configs import check_choices

Sampler = Literal["ddpm", "ddim", "dpm-solver", "euler"]
Decoding = Literal["greedy", "beam", "top-p"]
Rerank = Literal["none", "image"]
SAMPLERS: tuple[str, ...] = get_args(Sampler)
"""Diffusers samplers `sampling.schedulers.make_sampler` builds (flow checkpoints: dpm-solver, euler)."""
DECODINGS: tuple[str, ...] = get_args(Decoding)
"""Text decoding strategies of `sampling.decoding`."""


@dataclass(frozen=True)
class SamplingSettings:
    steps: int = 50
    """Denoising steps per image."""
    sampler: Sampler = "dpm-solver"
    """Diffusers sampler: ddpm | ddim | dpm-solver | euler (flow checkpoints: dpm-solver | euler)."""
    cache: bool = True
    """Use the prefix KV cache (False recomputes the prefix each step: the slow reference, same results)."""
    decoding: Decoding = "greedy"
    """Text decoding: greedy | beam | top-p (interleaved: greedy | top-p)."""
    max_new_tokens: int = 32
    """Most text tokens generated per caption / document (the stop token not counted)."""
    num_beams: int = 4
    """Beam search width: hypotheses kept per row (decoding beam)."""
    length_penalty: float = 1.0
    """Beam search: a finished hypothesis scores sum log-prob / length^length_penalty (decoding beam)."""
    rerank: Rerank = "none"
    """Captions, decoding beam: `none` keeps the best-scored beam; `image` keeps the beam candidate whose caption
    makes the image likeliest under the model's own generation loss (noisy-channel reranking, `sampling.rerank`)."""
    top_p: float = 0.9
    """Nucleus mass: sample from the smallest set of tokens whose probability reaches it (decoding top-p)."""
    temperature: float = 1.0
    """Softmax temperature: logits are divided by it before top-p (decoding top-p)."""

    def __post_init__(self) -> None:
        check_choices(self)
        if self.steps < 1 or self.max_new_tokens < 1 or self.num_beams < 1:
            raise ValueError(
                f"steps, max_new_tokens and num_beams must be >= 1; got {self.steps}, "
                f"{self.max_new_tokens}, {self.num_beams}"
            )
        if not 0 < self.top_p <= 1 or self.temperature <= 0:
            raise ValueError(f"top_p must be in (0, 1] and temperature > 0; got {self.top_p}, {self.temperature}")
        if self.rerank != "none" and self.decoding != "beam":
            raise ValueError(
                f"rerank {self.rerank} chooses among beam search's candidates; set decoding to beam or rerank to none"
            )


@dataclass(frozen=True)
class DecodingOptions(SamplingSettings):
    cfg_scale: float = 5.0
    """Classifier-free guidance scale s (1 = conditional only, no unconditional pass)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cfg_scale < 0:
            raise ValueError(f"cfg_scale must be >= 0; got {self.cfg_scale}")


INTERLEAVED_DECODINGS: tuple[str, ...] = ("greedy", "top-p")
"""Decodings interleaved generation can use: it follows one token stream that an image may interrupt."""


def interleaved_decoding_error(decoding: str) -> str | None:
    """Why interleaved generation cannot decode with `decoding` (None: it can); the one owner of the rule, checked
    by `SampleConfig` before a model loads and by `interleaved.generate_document` for direct callers."""
    if decoding in INTERLEAVED_DECODINGS:
        return None
    return f"task interleaved decodes with decoding greedy or top-p, not {decoding}; set decoding to greedy or top-p"


def with_settings(options: DecodingOptions | None, settings: dict[str, Any]) -> DecodingOptions:
    """`options` (None: the defaults) with keyword `settings` (`DecodingOptions` field names) applied; a bad
    value is a ValueError naming the parameter."""
    names = {f.name for f in fields(DecodingOptions)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise TypeError(f"unknown sampling setting(s) {unknown}; DecodingOptions has {', '.join(sorted(names))}")
    options = options if options is not None else DecodingOptions()
    return replace(options, **settings) if settings else options


def options_of(settings: SamplingSettings, **changes) -> DecodingOptions:
    """The `DecodingOptions` part of a config that holds its fields (`SampleConfig`, or
    `EvalSamplingConfig` with `cfg_scale=` one of its scales), with `changes` applied."""
    values = {f.name: getattr(settings, f.name) for f in fields(SamplingSettings)}
    if isinstance(settings, DecodingOptions):
        values["cfg_scale"] = settings.cfg_scale
    return DecodingOptions(**{**values, **changes})


TASK_INPUTS: dict[str, tuple[str, ...]] = {
    "prompt": ("t2i", "interleaved"),
    "prompts": ("t2i", "interleaved"),
    "images": ("caption",),
}
"""The tasks that read each input option of `SampleConfig`; any other task refuses it rather than ignore it."""


@dataclass(frozen=True)
class SampleConfig(DecodingOptions):
    """Every option of `lmfusion sample`: the sampling options, then the stage's inputs and outputs."""

    checkpoint: str = ""
    """Run folder (newest complete checkpoint), a checkpoints/step-N folder, or a model folder."""
    task: Literal["t2i", "caption", "interleaved"] = "t2i"
    """`t2i` (text→image), `caption` (image→text) or `interleaved` (text with images)."""
    prompt: str | None = None
    """One prompt (t2i, interleaved)."""
    prompts: str | None = None
    """Prompt file: .txt (one per line) or .jsonl ({"prompt": ...}) (t2i, interleaved)."""
    images: tuple[str, ...] = ()
    """Image folders and/or files to caption (caption); repeatable."""
    out: str = ""
    """Output folder: images/, grid.png, samples.jsonl | captions.jsonl | interleaved.jsonl, manifest.json."""
    seed: int = 0
    """Sample i uses seed + i (noise on the CPU, so results do not depend on the batch or device)."""
    batch_size: int = 8
    """Prompts (t2i) or images (caption) per forward pass."""
    num_per_prompt: int = 1
    """Images per prompt (t2i)."""
    max_images: int = 2
    """Most images per interleaved document."""
    grid_columns: int = 0
    """Columns of grid.png; 0 = ⌈√n⌉."""
    base: str | None = None
    """Base LM folder overriding the one the checkpoint points at (moved files)."""
    tokenizer: str | None = None
    """Tokenizer folder overriding the run's."""
    vae: str | None = None
    """VAE folder overriding the one the run's latent cache recorded (must have the same weights)."""
    device: str = "auto"
    """`auto` (CUDA when available, else CPU), `cpu` or `cuda[:N]`."""
    overwrite: bool = False
    """Replace an existing output folder."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.checkpoint:
            raise ValueError("checkpoint is required: pass --checkpoint RUN_OR_STEP")
        if not self.out:
            raise ValueError("out is required: pass --out DIR")
        if self.task in ("t2i", "interleaved") and (self.prompt is None) == (self.prompts is None):
            raise ValueError(f"task {self.task} needs exactly one of --prompt TEXT or --prompts FILE")
        if self.task == "caption" and not self.images:
            raise ValueError("task caption needs --images DIR or image files")
        if self.task == "interleaved" and (problem := interleaved_decoding_error(self.decoding)):
            raise ValueError(problem)
        for name, tasks in TASK_INPUTS.items():
            if self.task not in tasks and getattr(self, name) not in (None, ()):
                raise ValueError(
                    f"task {self.task} does not use --{name}; drop it, or pass --task {' or '.join(tasks)}"
                )
        if self.batch_size < 1 or self.num_per_prompt < 1:
            raise ValueError("batch_size and num_per_prompt must be >= 1")
        if self.max_images < 0 or self.grid_columns < 0:
            raise ValueError("max_images and grid_columns must be >= 0")
