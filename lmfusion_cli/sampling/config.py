"""`SampleConfig`: every option of `lmfusion sample`, as one frozen dataclass (checked in `__post_init__`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lmfusion_cli.sampling.decoding import STRATEGIES
from lmfusion_cli.sampling.schedulers import SAMPLERS


@dataclass(frozen=True)
class SampleConfig:
    checkpoint: str = ""
    """Run folder (newest complete checkpoint), a checkpoints/step-N folder, or a model folder."""
    task: Literal["t2i", "caption", "interleaved"] = "t2i"
    """`t2i` (text→image), `caption` (image→text) or `interleaved` (text with images)."""
    prompt: str | None = None
    """One prompt (t2i, interleaved)."""
    prompts: str | None = None
    """Prompt file: .txt (one per line) or .jsonl ({"prompt": ...}) (t2i, interleaved)."""
    images: tuple[str, ...] = ()
    """Image folders and/or files to caption (caption)."""
    out: str = ""
    """Output folder: images/, grid.png, samples.jsonl | captions.jsonl | interleaved.jsonl, manifest.json."""
    cfg_scale: float = 5.0
    """Classifier-free guidance scale s (1 = conditional only, no unconditional pass)."""
    steps: int = 50
    """Denoising steps per image."""
    sampler: str = "dpm-solver"
    """Diffusers sampler: ddpm | ddim | dpm-solver | euler (flow checkpoints: dpm-solver | euler)."""
    seed: int = 0
    """Sample i uses seed + i (noise on the CPU, so results do not depend on the batch or device)."""
    batch_size: int = 8
    """Prompts (t2i) or images (caption) per forward pass."""
    num_per_prompt: int = 1
    """Images per prompt (t2i)."""
    cache: bool = True
    """Use the prefix KV cache (False recomputes the prefix each step: the slow reference)."""
    decoding: str = "greedy"
    """Text decoding: greedy | beam | top-p (interleaved: greedy | top-p)."""
    max_new_tokens: int = 32
    """Most text tokens generated per caption / document."""
    num_beams: int = 4
    """Beam search width (decoding beam)."""
    top_p: float = 0.9
    """Nucleus mass (decoding top-p)."""
    temperature: float = 1.0
    """Softmax temperature (decoding top-p)."""
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
        if not self.checkpoint:
            raise ValueError("checkpoint is required: pass --checkpoint RUN_OR_STEP")
        if not self.out:
            raise ValueError("out is required: pass --out DIR")
        if self.task in ("t2i", "interleaved") and (self.prompt is None) == (self.prompts is None):
            raise ValueError(f"task {self.task} needs exactly one of --prompt TEXT or --prompts FILE")
        if self.task == "caption" and not self.images:
            raise ValueError("task caption needs --images DIR or image files")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}; got {self.sampler!r}")
        if self.decoding not in STRATEGIES:
            raise ValueError(f"decoding must be one of {', '.join(STRATEGIES)}; got {self.decoding!r}")
        if self.steps < 1 or self.batch_size < 1 or self.num_per_prompt < 1 or self.max_new_tokens < 1:
            raise ValueError("steps, batch_size, num_per_prompt and max_new_tokens must be >= 1")
        if self.cfg_scale < 0 or self.num_beams < 1 or self.max_images < 0 or self.grid_columns < 0:
            raise ValueError("cfg_scale and max_images must be >= 0, num_beams >= 1, grid_columns >= 0")
        if not 0 < self.top_p <= 1 or self.temperature <= 0:
            raise ValueError("top_p must be in (0, 1] and temperature > 0")
