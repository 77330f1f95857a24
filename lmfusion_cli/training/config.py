"""`TrainRunConfig`: every option of `lmfusion train`, as nested frozen dataclasses.

Sections: `base` (the pretrained text LM), `model` (the model package's `LMFusionConfig`; its latent
sizes come from the latent manifest, filled in by `with_latent_geometry`), `data`, `optim`, `schedule`,
`train`, `dist`, `log`. Each field has a docstring with its unit (the CLI's help is made from it);
`__post_init__` checks values, so the whole config is checked before anything is written.
This file owns the options and their checks; it builds nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.model.config import LMFusionConfig


@dataclass(frozen=True)
class BaseConfig:
    path: str = "tiny"
    """The frozen text LM: a local Hugging Face folder, or `tiny` for the embedded tiny LM."""
    tokenizer: str | None = None
    """Tokenizer folder; None = the base folder."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("base.path must name a model folder (or `tiny` for the embedded LM)")


@dataclass(frozen=True)
class DataConfig:
    latents: str = ""
    """Latent cache folder made by `lmfusion encode-latents`."""
    train_split: str = "train"
    """Split of the cache to train on."""
    val_split: str | None = "val"
    """Held-out split for the validation loss; None = no validation."""
    generation_fraction: float | None = None
    """Fraction of examples that are caption→image (generation); the rest are image→caption. None = the
    base's default: 0.8 for a text-only LM, 1.0 for a LLaVA-layout VLM (its frozen understanding path
    has nothing to learn; see docs/model.md, LLaVAFusion)."""
    caption_dropout: float = 0.1
    """Fraction of generation examples whose caption is emptied (classifier-free guidance)."""
    interleaved_fraction: float = 0.0
    """Fraction of examples laid out as the item's interleaved document (`[bos] before BOI image EOI after
    [eos]`; items without one, see `prepare --interleaved`, fall back to generation/understanding)."""
    text_only_fraction: float = 0.0
    """Fraction of examples that are text-only negatives from the tiny LM's corpus (no image follows)."""
    seq_len: int = 0
    """Packed row length in tokens; 0 = one example per row, padded to the longest in the micro-batch."""
    max_caption_tokens: int = 0
    """Captions are cut to this many tokens; 0 = what fits the base's positions (or `seq_len`) beside
    the image tokens, BOI/EOI and bos/eos. A 50 KB caption once made a 20,480-token row (issue 17)."""

    def __post_init__(self) -> None:
        if not self.latents:
            raise ValueError("data.latents is required: pass --latents DIR (a latent cache from encode-latents)")
        for name in ("generation_fraction", "caption_dropout", "interleaved_fraction", "text_only_fraction"):
            if getattr(self, name) is not None and not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"data.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.interleaved_fraction + self.text_only_fraction > 1.0:
            raise ValueError("data.interleaved_fraction + data.text_only_fraction must be <= 1")
        if self.seq_len < 0:
            raise ValueError(f"data.seq_len must be >= 0 tokens, got {self.seq_len}")
        if self.max_caption_tokens < 0:
            raise ValueError(f"data.max_caption_tokens must be >= 0 tokens, got {self.max_caption_tokens}")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    """Peak learning rate (paper: 1e-4)."""
    beta1: float = 0.9
    """AdamW β1."""
    beta2: float = 0.95
    """AdamW β2 (paper: 0.95)."""
    eps: float = 1e-8
    """AdamW ε."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay (paper: 0.1)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 = no clipping."""
    text_lr: float | None = None
    """Peak learning rate of the text modules when they are trained (model.freeze_text: false); None = optim.lr."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError("optim.beta1 and optim.beta2 must be in [0, 1)")
        if self.eps <= 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("optim.eps must be > 0, optim.weight_decay and optim.grad_clip >= 0")
        if self.text_lr is not None and self.text_lr <= 0:
            raise ValueError(f"optim.text_lr must be > 0 (or null for optim.lr), got {self.text_lr}")


@dataclass(frozen=True)
class ScheduleConfig:
    steps: int = 1000
    """Optimizer steps to train for (total, including steps before a resume)."""
    warmup_steps: int = 4000
    """Linear warmup from 0 to optim.lr, in optimizer steps (paper: 4000)."""
    min_lr: float = 1.5e-5
    """Floor of the cosine decay, reached at the last step (paper: 1.5e-5)."""
    decay: Literal["cosine", "constant"] = "cosine"
    """After warmup: cosine decay to min_lr, or constant."""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"schedule.steps must be >= 1, got {self.steps}")
        if self.warmup_steps < 0 or self.min_lr < 0:
            raise ValueError("schedule.warmup_steps and schedule.min_lr must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    out: str = ""
    """Run folder: config.yaml, manifest.json, logs/, checkpoints/."""
    batch_size: int = 8
    """Global batch in examples per optimizer step (all processes and accumulation steps together)."""
    micro_batch_size: int = 8
    """Examples per process per forward/backward; accumulation = batch_size / (micro × processes)."""
    seed: int = 0
    """Seed of initialisation, data order, task mix, caption dropout and noise."""
    save_every: int = 100
    """Save a checkpoint every this many optimizer steps (and always at the end); 0 = only at the end."""
    keep_last: int = 3
    """Complete checkpoints to keep (older ones are deleted after a newer one is complete)."""
    resume: str = "auto"
    """`auto` = newest complete checkpoint in out/ if any, `never` = refuse a non-empty run folder, or a step folder."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Autocast: `auto` = bf16 on CUDA devices that support it, fp32 on CPU."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms(True) (bitwise-repeatable runs; slower on GPU)."""
    max_bad_steps: int = 5
    """Stop after this many non-finite steps in a row (each one is skipped, counted and logged)."""
    stop_at: int = 0
    """Stop this invocation (with a checkpoint) after this optimizer step; 0 = run to schedule.steps."""
    threads: int = 0
    """torch intra-op threads per process on CPU; 0 = leave torch's default."""
    activation_checkpointing: str = "none"
    """Recompute routed layers in the backward instead of keeping their activations: `none`, `layers`
    (every layer) or `every-K` (every K-th layer, e.g. `every-2`); non-reentrant."""
    frozen_bf16: bool = False
    """Store the frozen text weights in bf16 (no gradients, no optimizer state); trainable weights stay fp32."""
    init_from: str = ""
    """Start from the trainable weights of an earlier run: its run folder, a checkpoints/step-N folder, a model
    folder or an `lmfusion export` folder ("" = fresh initialisation). The optimiser, LR schedule and data
    order start anew (a new run: a fine-tune or a second cycle); the base and the latents' VAE must be the
    same and the weights' names and shapes must match this run's model. Not read when the run resumes (the
    resume restores everything)."""
    ema: float = 0.0
    """Decay of an exponential moving average of the trainable weights, updated after every applied step
    (0 = none; e.g. 0.999). With it, checkpoints' `model/` (what sample, evaluate and export load) and
    validation use the average; training continues on the raw weights; a resume restores both."""

    @property
    def checkpoint_every(self) -> int:
        """Layers between checkpointed ones: 0 = none, 1 = every layer, K for `every-K`."""
        mode = self.activation_checkpointing
        return 0 if mode == "none" else 1 if mode == "layers" else int(mode.removeprefix("every-"))

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("train.out is required: pass --out RUN_DIR")
        if self.batch_size < 1 or self.micro_batch_size < 1:
            raise ValueError("train.batch_size and train.micro_batch_size must be >= 1")
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"train.batch_size ({self.batch_size}) must be a multiple of train.micro_batch_size "
                f"({self.micro_batch_size})"
            )
        if self.save_every < 0 or self.keep_last < 1 or self.max_bad_steps < 1 or self.threads < 0 or self.stop_at < 0:
            raise ValueError(
                "train.save_every must be >= 0, train.keep_last and train.max_bad_steps >= 1, "
                "train.threads and train.stop_at >= 0"
            )
        if not self.resume:
            raise ValueError("train.resume must be `auto`, `never` or a checkpoint folder")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"train.ema must be in [0, 1) (0 = no weight average); got {self.ema}")
        mode = self.activation_checkpointing
        every = mode.removeprefix("every-")
        if mode not in ("none", "layers") and not (mode.startswith("every-") and every.isdigit() and int(every) >= 1):
            raise ValueError(
                f"train.activation_checkpointing must be none, layers or every-K (K >= 1, e.g. every-2); got {mode!r}"
            )


@dataclass(frozen=True)
class DistConfig:
    strategy: Literal["fsdp", "ddp", "none"] = "fsdp"
    """How several processes share the model: FSDP2 (fully_shard per layer + root), DDP, or none (1 process)."""
    gpus: int = 1
    """Processes per node (one per GPU; on CPU, gloo processes). >1 re-launches under torchrun."""
    nodes: int = 1
    """Nodes; >1 needs dist.rdzv_endpoint (or an existing torchrun/SLURM launch)."""
    rdzv_endpoint: str | None = None
    """host:port of the rendezvous for multi-node launches."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """Process-group backend: auto = nccl on CUDA, gloo on CPU."""

    def __post_init__(self) -> None:
        if self.gpus < 1 or self.nodes < 1:
            raise ValueError("dist.gpus and dist.nodes must be >= 1")


@dataclass(frozen=True)
class LogConfig:
    every: int = 1
    """Write a JSONL/TensorBoard record every this many optimizer steps."""
    tensorboard: bool = True
    """Also write TensorBoard events to out/logs/tb (false drops `tensorboard` from report_to)."""
    report_to: tuple[str, ...] = ("tensorboard",)
    """Experiment trackers: any of tensorboard, wandb, mlflow (each imported only when named here)."""
    project: str = "lmfusion"
    """W&B project / MLflow experiment name (the run is named after the run folder)."""
    grid_items: int = 4
    """Validation prompts drawn into an image grid at each validation, sent to the trackers (0 = none)."""
    grid_steps: int = 10
    """Denoising steps of the validation grid's images."""
    val_every: int = 0
    """Validation loss every this many optimizer steps (and before the first step and at the end); 0 = ends only."""
    val_items: int = 32
    """Held-out items in the validation loss (first N of data.val_split)."""
    val_timesteps: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    """Fixed noise levels of the validation loss, as fractions of the schedule."""
    val_seed: int = 1234
    """Seed of the fixed validation noise (keep it fixed to compare runs)."""
    count_flops: bool = False
    """Log training FLOPs (`flops`: torch.utils.flop_counter on the first step of each log interval, × its steps)."""

    def __post_init__(self) -> None:
        if self.every < 1 or self.val_every < 0 or self.val_items < 1:
            raise ValueError("log.every and log.val_items must be >= 1, log.val_every >= 0")
        if not self.val_timesteps or not all(0.0 <= t < 1.0 for t in self.val_timesteps):
            raise ValueError("log.val_timesteps must be fractions in [0, 1)")
        unknown = [name for name in self.report_to if name not in ("tensorboard", "wandb", "mlflow")]
        if unknown:
            raise ValueError(f"log.report_to has {unknown}; choose from tensorboard, wandb, mlflow")
        if self.grid_items < 0 or self.grid_steps < 1:
            raise ValueError("log.grid_items must be >= 0 and log.grid_steps >= 1")

    def trackers(self) -> tuple[str, ...]:
        """report_to, without tensorboard when log.tensorboard is false."""
        return tuple(n for n in dict.fromkeys(self.report_to) if n != "tensorboard" or self.tensorboard)


@dataclass(frozen=True)
class TrainRunConfig:
    base: BaseConfig = field(default_factory=BaseConfig)
    """The frozen pretrained text LM."""
    model: LMFusionConfig = field(default_factory=LMFusionConfig)
    """The LMFusion model's options; latent_channels/latent_size come from the latent cache (leave them unset)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Latent caches and the task mix."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """AdamW hyper-parameters."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Steps and learning-rate schedule."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Run folder, batch, checkpoints, safety."""
    dist: DistConfig = field(default_factory=DistConfig)
    """Multi-process launch and sharding."""
    log: LogConfig = field(default_factory=LogConfig)
    """Logging and validation."""


def with_latent_geometry(model: LMFusionConfig, channels: int, side: int) -> LMFusionConfig:
    """`model` with the latent cache's channel count and side filled in; a size the config sets itself
    (it should not) must agree with the cache."""
    for key, value, given in (
        ("latent_channels", channels, model.latent_channels),
        ("latent_size", side, model.latent_size),
    ):
        default = getattr(LMFusionConfig, key)
        if given not in (None, default, value):
            raise UserError(
                f"model.{key}={given} does not match the latent cache ({value}); "
                f"remove model.{key} from the config (it comes from the cache)."
            )
    try:
        return dataclasses.replace(model, latent_channels=channels, latent_size=side)
    except ValueError as e:
        raise UserError(f"Invalid model section for this latent cache: {e}.") from e


# Sections whose change makes a resumed run differ from an uninterrupted one (checked on resume).
RESUME_FIXED_KEYS = (
    "base",
    "model",
    "data.latents",
    "data.train_split",
    "data.generation_fraction",
    "data.caption_dropout",
    "data.interleaved_fraction",
    "data.text_only_fraction",
    "data.seq_len",
    "data.max_caption_tokens",
    "optim",
    "train.batch_size",
    "train.seed",
    "train.ema",
    "schedule.warmup_steps",
    "schedule.min_lr",
    "schedule.decay",
)
