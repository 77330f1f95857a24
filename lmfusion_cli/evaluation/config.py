"""`EvaluateConfig`: every option of `lmfusion evaluate`, as frozen dataclasses checked in `__post_init__`.

One nested config per concern: `sampling` (how images and captions are made: the sampling package's
settings, imported from its light `sampling/config.py`), `shapes`, `text` and `coco` (what each suite
reads). Command-line options set the common fields; any field can be set with `--set
section.field=value` or a YAML file. This file validates; it runs nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lmfusion_cli.data.config import CaptionStyle
from lmfusion_cli.evaluation.text_suite import FieldMap
from lmfusion_cli.sampling.config import DecodingOptions, SamplingSettings, options_of

SUITES = ("shapes", "text", "coco", "all")
CAPTION_METRICS = ("bleu", "meteor", "rouge", "cider")
DEFAULT_CFG_SCALES = {"coco": (1.0, 1.55), "shapes": (1.55,)}
"""LMFusion (arXiv 2412.15188) Table 1 reports COCO FID / CLIP without CFG (1.0) and with CFG 1.55."""


@dataclass(frozen=True)
class EvalSamplingConfig(SamplingSettings):
    """The sampling settings (`sampling.config.SamplingSettings`) plus the guidance scales to evaluate."""

    cfg_scale: tuple[float, ...] = ()
    """Classifier-free guidance scales (1 = conditional only); one generation pass per scale over the same
    prompts and seeds. Empty = each suite's default: coco (1.0, 1.55), the two LMFusion Table 1 reports
    (FID 14.0 | 8.61); shapes 1.55 (one scale only: the shapes suite takes one)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if any(s < 0 for s in self.cfg_scale) or len(set(self.cfg_scale)) != len(self.cfg_scale):
            raise ValueError(f"cfg_scale must be distinct scales >= 0, e.g. 1.0,1.55; got {list(self.cfg_scale)}")

    def scales_for(self, suite: str) -> tuple[float, ...]:
        """The guidance scales a suite generates with (its paper default when none are given)."""
        return self.cfg_scale or DEFAULT_CFG_SCALES[suite]

    def options(self, cfg_scale: float | None = None) -> DecodingOptions:
        """The `DecodingOptions` the sampling functions take, at guidance `cfg_scale` (None: captions only,
        the default guidance)."""
        return options_of(self, **({} if cfg_scale is None else {"cfg_scale": cfg_scale}))


@dataclass(frozen=True)
class ShapesEvalConfig:
    num_items: int = 200
    """Held-out items (prompts to generate and images to caption) when no `data` is given."""
    seed: int = 1000
    """Seed of the held-out items (`shapes.make_item(i, seed)`; keep it unlike the training data's seed);
    item i is generated with seed + i."""
    captions: CaptionStyle = "fixed"
    """Caption style of the generated held-out items (`lmfusion prepare --captions`): the one the model was
    trained on. Ignored with `data` (its captions are used)."""
    data: str | None = None
    """A prepared shapes set (`lmfusion prepare --source shapes`): its test split replaces the generated items."""
    resolution: int | None = None
    """Side of the held-out images in pixels; None = the resolution the model generates (from its VAE)."""

    def __post_init__(self) -> None:
        if self.num_items < 1:
            raise ValueError(f"shapes.num_items must be >= 1; got {self.num_items}")
        if self.resolution is not None and self.resolution < 8:
            raise ValueError(f"shapes.resolution must be >= 8 pixels; got {self.resolution}")


@dataclass(frozen=True)
class TextEvalConfig:
    tasks: tuple[str, ...] = ()
    """lm-eval tasks: names (hellaswag, siqa, winogrande, piqa, ...; data fetched by `datasets` when online)
    and/or paths of lm-eval task YAMLs (local data_files read against the YAML's folder); empty = the
    shipped 257-item set (`evaluation/tasks/lmfusion_tiny_mc.yaml`, offline)."""
    limit: int | None = None
    """Score only the first N documents of each task (quick runs; lm-eval's --limit); None = all."""
    items: str | None = None
    """Instead of `tasks`: multiple-choice items in a JSONL file or a `datasets` folder (save_to_disk), turned
    into an lm-eval task (field names via `fields`; malformed items skipped and counted)."""
    split: str | None = None
    """Split to read when `items` is a DatasetDict folder."""
    fields: FieldMap = field(default_factory=FieldMap)
    """Field names of context, choices (one list field or several), label (+ offset) and id."""

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"text.limit must be >= 1; got {self.limit}")
        if self.items and self.tasks:
            raise ValueError("text.items and text.tasks exclude each other; pass --text-items or --tasks")


@dataclass(frozen=True)
class CocoEvalConfig:
    root: str | None = None
    """COCO root with annotations/captions_val2014.json (or 2017) and val2014/ (or val2017/)."""
    karpathy_split: str | None = None
    """Karpathy's dataset_coco.json: its test images are captioned; None = every annotated image."""
    num_caption_images: int | None = None
    """Caption a seeded subset of this many test images; None = all."""
    num_prompts: int = 30_000
    """Caption prompts to generate images for (FID, CLIP score); 30k is the usual COCO protocol."""
    seed: int = 0
    """Seed of the prompt draw and of the subset; prompt i is generated with seed + i."""
    inception: str | None = None
    """Local Inception weights for FID (clean-fid's inception-2015-12-05.pt or torchvision inception_v3);
    None = clean-fid's own, read from / downloaded into `cleanfid_dir`."""
    cleanfid_dir: str = "/tmp"
    """Where clean-fid keeps (and downloads) inception-2015-12-05.pt when `inception` is None (its default: /tmp)."""
    clip_arch: str = "ViT-L-14"
    """open_clip architecture of the CLIP-score model (see docs/evaluation.md for why this default)."""
    clip_pretrained: str = "openai"
    """open_clip pretrained tag of `clip_arch` (downloaded by open_clip into its cache when online)."""
    clip_weights: str | None = None
    """Local open_clip weights file for the CLIP score (instead of the pretrained tag)."""
    clip_cache_dir: str | None = None
    """open_clip's download cache; None = its default (the Hugging Face cache)."""
    clip_config: str | None = None
    """open_clip JSON model config for an architecture open_clip does not ship (its name is the file stem)."""
    fid_stats_dir: str | None = None
    """Where FID reference statistics are cached for reuse; None = OUT/coco/fid_stats."""
    caption_metrics: tuple[str, ...] = CAPTION_METRICS
    """Caption metrics: bleu, meteor (needs java), rouge, cider (SPICE would download; not offered)."""

    def __post_init__(self) -> None:
        if self.num_prompts < 1:
            raise ValueError(f"coco.num_prompts must be >= 1; got {self.num_prompts}")
        if self.num_caption_images is not None and self.num_caption_images < 1:
            raise ValueError(f"coco.num_caption_images must be >= 1; got {self.num_caption_images}")
        unknown = [m for m in self.caption_metrics if m not in CAPTION_METRICS]
        if unknown or not self.caption_metrics:
            raise ValueError(
                f"coco.caption_metrics must be some of {', '.join(CAPTION_METRICS)}; got {unknown or '[]'}"
            )


@dataclass(frozen=True)
class EvaluateConfig:
    checkpoint: str = ""
    """Run folder (newest complete checkpoint), a checkpoints/step-N folder, or a model folder."""
    out: str = ""
    """Output folder: metrics.json, report.md, plots, raw generations, manifest.json (resumable)."""
    suite: Literal["shapes", "text", "coco", "all"] = "all"
    """Which suite: shapes | text | coco | all (all runs coco only when coco.root is given)."""
    batch_size: int = 8
    """Prompts, images or text sequences per forward pass."""
    ptb_tokenizer: Literal["auto", "java", "python"] = "auto"
    """Caption tokenization before scoring: java (the official PTB tokenizer), python, or auto (java if installed)."""
    base: str | None = None
    """Base LM folder overriding the one the checkpoint points at (also the text suite's reference LM)."""
    tokenizer: str | None = None
    """Tokenizer folder overriding the run's."""
    vae: str | None = None
    """VAE folder overriding the one the run recorded (same weights required)."""
    device: str = "auto"
    """auto (CUDA when available, else CPU) | cpu | cuda[:N]."""
    overwrite: bool = False
    """Delete an existing evaluation in `out` first (default: resume it, reusing its generations)."""
    sampling: EvalSamplingConfig = field(default_factory=EvalSamplingConfig)
    """How images and captions are generated."""
    shapes: ShapesEvalConfig = field(default_factory=ShapesEvalConfig)
    """The shapes suite."""
    text: TextEvalConfig = field(default_factory=TextEvalConfig)
    """The text suite."""
    coco: CocoEvalConfig = field(default_factory=CocoEvalConfig)
    """The COCO suite."""

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ValueError("checkpoint is required: pass --checkpoint RUN_OR_STEP")
        if not self.out:
            raise ValueError("out is required: pass --out DIR")
        if self.suite not in SUITES:
            raise ValueError(f"suite must be one of {', '.join(SUITES)}; got {self.suite!r}")
        if self.suite == "coco" and not self.coco.root:
            raise ValueError("suite coco needs the COCO folder: pass --coco-root DIR")
        if "shapes" in self.suites() and len(self.sampling.cfg_scale) > 1:
            raise ValueError(
                f"the shapes suite generates with one guidance scale, got {list(self.sampling.cfg_scale)}; "
                f"pass one --cfg-scale (several are for --suite coco)"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {self.batch_size}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ValueError(f"device must be auto, cpu or cuda[:N]; got {self.device!r}")

    def suites(self) -> list[str]:
        """The suites to run, in order (text first: it is the cheapest)."""
        if self.suite != "all":
            return [self.suite]
        return ["text", "shapes"] + (["coco"] if self.coco.root else [])
