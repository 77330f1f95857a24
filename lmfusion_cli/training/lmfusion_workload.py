"""The LMFusion workload: base LM + tokenizer + latent cache → `LMFusionModel` and its micro-batches.

- Builds the model with `LMFusionModel.from_base`, taking the latent sizes from the cache manifest,
  never from literals; BOI/EOI are the model's own new rows (ids V, V+1), not tokenizer tokens.
- Lays out each sample with the model package's builders: generation = `[bos] caption BOI image EOI
  [eos]`, understanding = `[bos] BOI image EOI caption [eos]`, interleaved = `[bos] before BOI image EOI
  after [eos]` (the image a generation target), text-only = `[bos] text [eos]`; packs rows of `data.seq_len` tokens
  (`sequence.pack`) or one example per row (`sequence.collate`).
- Draws each image's timestep and noise from its sample's `noise_seed`, so the noise does not depend
  on how samples are split over processes or micro-batches (exact resume on another world size).
- Names the FSDP units: per decoder layer, one group of the modules `routed_layer` calls (norms,
  attention projections, MLPs of both experts), since a decoder layer's own `forward` is never called.
- Writes inference weights in the model package's checkpoint format (`model/checkpoint.py`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from lmfusion_cli.common.configs import config_to_dict
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.training.config import TrainRunConfig, with_latent_geometry
from lmfusion_cli.training.distributed import unwrap
from lmfusion_cli.training.loader import GENERATION, INTERLEAVED, TEXT_ONLY, LatentSource, Sample
from lmfusion_cli.training.workload import LossSums, MicroBatch, ValidationSums

if TYPE_CHECKING:
    from lmfusion_cli.model.sequence import MixedBatch

log = logging.getLogger(__name__)


class LMFusionInputs(NamedTuple):
    """What `LMFusionModel.forward` takes for one micro-batch, on the device."""

    batch: MixedBatch
    """The packed (or collated) examples."""
    latents: torch.Tensor
    """(num_images, C, H, W) clean latents, in batch image order."""
    image_documents: torch.Tensor
    """(num_images,) long, on the CPU: the sample (index in the micro-batch) each image belongs to."""


def resolve_base_path(path: str) -> str:
    """`tiny` → the embedded tiny LM; anything else is used as given (a local folder or hub id)."""
    if path != "tiny":
        return path
    try:
        from lmfusion_cli.assets import TINY_LM
    except ImportError as e:
        raise UserError(
            "The embedded tiny LM is missing from lmfusion_cli/assets; run `make assets` or pass --base PATH."
        ) from e
    return str(TINY_LM)


def latent_geometry(source: LatentSource) -> tuple[int, int]:
    """(channels, side) of the cache's latents, from its manifest (or the first item)."""
    shape = getattr(source, "latent_shape", None)
    if shape is None:
        generator = torch.Generator().manual_seed(0)
        shape = tuple(source.draw(0, generator).shape)
    channels, height, width = shape
    if height != width:
        raise UserError(f"The latent cache has non-square latents {height}×{width}; re-encode square images.")
    return int(channels), int(height)


def caption_budget(model: nn.Module, seq_len: int, max_caption_tokens: int) -> int:
    """Most caption tokens one example may hold: the row (`seq_len`, else the base's positions) less
    the image tokens and BOI, EOI, bos, eos; and at most `max_caption_tokens` when that is set."""
    config = getattr(model.base.config, "text_config", None) or model.base.config  # a LLaVA base: its LM's
    positions = getattr(config, "max_position_embeddings", None) or 0
    rows = [n for n in (seq_len, positions) if n]
    room = max(min(rows) - model.num_image_tokens - 4, 1) if rows else 10**9
    return min(room, max_caption_tokens) if max_caption_tokens else room


class LMFusionWorkload:
    """`Workload` for `LMFusionModel` (see `training/workload.py` for the contract)."""

    text_parameter_prefix = "base."
    """Parameter names of the text modules (the loaded base LM): `optim.text_lr` applies to them when trained."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        seq_len: int,
        cache_vae: dict[str, Any] | None,
        max_caption_tokens: int = 0,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.cache_vae = cache_vae
        self.lambda_image = model.config.lambda_image
        self.num_image_tokens = model.num_image_tokens
        self.bos_id = tokenizer.bos_token_id
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._outside_groups: set[str] | None = None
        self.caption_budget = caption_budget(model, seq_len, max_caption_tokens)
        self.captions_cut = 0
        # LLaVAFusion trains generation only: understanding through the frozen VLM teaches nothing
        self.default_generation_fraction = 1.0 if getattr(model, "is_llava", False) else 0.8
        self.pending_load: tuple[dict[str, torch.Tensor], torch.device] | None = None
        """(kept values, device) while the model is a meta-built skeleton waiting for `load_after_sharding`."""

    def load_after_sharding(self, model: nn.Module) -> None:
        """Read this process's shards of the base into the (sharded) meta-built model (issue 22)."""
        if self.pending_load is not None:
            from lmfusion_cli.training.sharded_load import load_into_shards

            load_into_shards(model, *self.pending_load)
            self.pending_load = None

    # ---- sharding ----------------------------------------------------------------------------------
    def shard_units(self) -> list[list[nn.Module]]:
        """One FSDP group per decoder layer: every module `routed_layer` calls, text and image expert.

        Grouped (`fully_shard([...])`), not one unit per module: with small units the backward order
        of q/k/v/o/MLP can differ between processes whose batches differ (a generation example on one,
        an understanding example on the other), and the collectives would mismatch.
        A LLaVA base's vision tower and projector form one more (frozen) unit."""
        groups: list[list[nn.Module]] = []
        layers = self.model.decoder.layers
        experts = self.model.image_experts or [None] * len(layers)
        for text_layer, expert in zip(layers, experts):
            group: list[nn.Module] = []
            for layer in (text_layer, expert):
                if layer is None:
                    continue
                group += [layer.input_layernorm, layer.post_attention_layernorm, layer.mlp]
                attn = getattr(layer, "self_attn", None)
                if attn is not None:
                    group += [m for m in attn.children()]  # q/k/v/o projections (+ q/k norms)
            groups.append(group)
        if getattr(self.model, "is_llava", False):
            groups.append(vision_unit(self.model.base))
        return groups

    # ---- batches -----------------------------------------------------------------------------------
    def _caption_ids(self, caption: str, room: int | None = None) -> list[int]:
        ids = self.tokenizer(caption, add_special_tokens=False)["input_ids"] if caption else []
        budget = self.caption_budget if room is None else max(min(room, self.caption_budget), 0)
        if len(ids) > budget and room is None:
            self.captions_cut += 1
            if self.captions_cut == 1:
                log.warning(
                    "a caption of %d+ tokens was cut to %d (data.max_caption_tokens); later cuts are "
                    "counted as captions_cut",
                    len(ids),
                    self.caption_budget,
                )
        return ids[:budget]

    def _example(self, s: Sample):
        """One sample laid out with the model package's builders (see the module docstring)."""
        from lmfusion_cli.model import sequence

        core = unwrap(self.model)
        kw = dict(num_image_tokens=self.num_image_tokens, boi_id=core.boi_id, eoi_id=core.eoi_id)
        head = [self.bos_id] if self.bos_id is not None else []
        tail = [self.eos_id] if self.eos_id is not None else []
        if s.task == TEXT_ONLY:  # a negative: no image follows; short, so it does not swamp the mean
            room = (self.seq_len or 48) - 2
            C, S = core.config.latent_channels, core.config.latent_size
            return sequence.build_example(
                [sequence.TextPart(head + self._caption_ids(s.caption, room) + tail)],
                latents=torch.zeros(0, C, S, S),
                **kw,
            )
        if s.task == INTERLEAVED:  # [bos] before BOI image EOI after [eos]: the image is a generation target
            room = (self.seq_len or self.num_image_tokens + 64) - self.num_image_tokens - 4
            before = self._caption_ids(s.caption, room)
            after = self._caption_ids(s.after, room - len(before))
            parts = [
                sequence.TextPart(head + before),
                sequence.ImagePart(generate=True),
                sequence.TextPart(after + tail),
            ]
            return sequence.build_example(parts, latents=s.latent.unsqueeze(0), **kw)
        build = sequence.caption_to_image if s.task == GENERATION else sequence.image_to_caption
        return build(
            self._caption_ids(s.caption), bos_id=self.bos_id, eos_id=self.eos_id, latents=s.latent.unsqueeze(0), **kw
        )

    def make_micro_batch(self, samples: list[Sample], device: torch.device) -> MicroBatch[LMFusionInputs]:
        from lmfusion_cli.model import sequence

        examples = [self._example(s) for s in samples]
        if self.seq_len:
            batch, latents = sequence.pack(examples, self.seq_len, pad_id=self.pad_id)
        else:
            batch, latents = sequence.collate(examples, pad_id=self.pad_id)
        core = unwrap(self.model)
        return MicroBatch(
            inputs=LMFusionInputs(batch.to(device), latents.to(device), _image_documents(batch)),
            keys=[s.key for s in samples],
            text_targets=int(core.target_masks(batch)[0].sum()),
            generated_images=int(core.image_targets(batch).sum()),
            tokens=int((batch.modality != sequence.PAD).sum()),
            images=batch.num_images,
        )

    def _noise(
        self, micro: MicroBatch[LMFusionInputs], noise_seeds: list[int], fraction: float | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image (timesteps, noise) drawn by the model's noising (`LMFusionModel.noising`), each image's
        from its sample's seed; at the fixed level `fraction` (validation) if given."""
        batch, latents, image_docs = micro.inputs
        generators = [torch.Generator().manual_seed(noise_seeds[doc]) for doc in image_docs.tolist()]
        timesteps, noise = unwrap(self.model).noising.draw(
            batch.image_generate, latents.shape[1:], generators, fraction
        )
        return timesteps.to(latents.device), noise.to(latents.device, latents.dtype)

    def loss_sums(self, model: nn.Module, micro: MicroBatch[LMFusionInputs], noise_seeds: list[int]) -> LossSums:
        batch, latents, _ = micro.inputs
        timesteps, noise = self._noise(micro, noise_seeds, None)
        out = model(batch, latents, timesteps=timesteps, noise=noise)
        return LossSums(
            text=out.text_loss.float() * out.num_text_targets + self._touch_root_params(model),
            image=out.image_loss.float() * out.num_image_targets,
            per_sample=out.example_loss.detach(),
        )

    def _touch_root_params(self, model: nn.Module) -> torch.Tensor:
        """0 · Σ(first element of each trainable parameter outside the layer groups).

        A micro-batch without a generation example never runs the image final norm and patcher
        decoder, so those parameters get no gradient on that process; FSDP2 reduce-scatters only
        parameters with a gradient, and the processes' collectives would no longer match (gloo aborts).
        Touching them gives a zero gradient everywhere — in one process too, so that AdamW treats them
        the same (a zero gradient still moves a parameter through its moments; a missing one does not)
        whatever the process count. The root group stays unsharded after the forward (FSDP2's default
        for the root), so these are the full parameters here."""
        if self._outside_groups is None:  # names are stable; the parameter objects change under FSDP2
            in_groups = {id(p) for group in self.shard_units() for m in group for p in m.parameters()}
            self._outside_groups = {
                n for n, p in self.model.named_parameters() if p.requires_grad and id(p) not in in_groups
            }
        touched = [p.reshape(-1)[:1].sum() for n, p in unwrap(model).named_parameters() if n in self._outside_groups]
        return 0.0 * torch.stack(touched).sum().float() if touched else torch.zeros(())

    def validation_sums(
        self, model: nn.Module, micro: MicroBatch[LMFusionInputs], noise_seeds: list[int], fraction: float
    ) -> ValidationSums:
        batch, latents, _ = micro.inputs
        timesteps, noise = self._noise(micro, noise_seeds, fraction)
        out = model(batch, latents, timesteps=timesteps, noise=noise)
        return ValidationSums(
            text=float(out.text_loss) * int(out.num_text_targets),
            text_targets=int(out.num_text_targets),
            image=float(out.image_loss) * int(out.num_image_targets),
            images=int(out.num_image_targets),
        )

    # ---- initialisation ----------------------------------------------------------------------------
    def init_from(self, model: nn.Module, path: str) -> str:
        """`train.init_from`: copy the trainable weights of an earlier run (run, step or model/export
        folder) into the wrapped `model`, after checking its base and weights against this model. Returns
        what was read (for the log)."""
        from lmfusion_cli.model import checkpoint
        from lmfusion_cli.sampling.loading import resolve_checkpoint
        from lmfusion_cli.training.sharded_load import copy_into_shards

        try:
            found = resolve_checkpoint(path)
        except UserError as e:
            raise UserError(f"train.init_from: {e}") from None
        meta = checkpoint.read_meta(found.model_dir)
        try:
            checkpoint.check_base(meta, self.model, path)
            state = checkpoint.trainable_state(found.model_dir, self.model)
        except UserError as e:
            raise UserError(f"train.init_from: {e}") from None
        frozen = sorted(
            n for n, p in self.model.named_parameters(remove_duplicate=False) if n in state and not p.requires_grad
        )
        if frozen:
            raise UserError(
                f"train.init_from: {path} holds weights this run keeps frozen ({', '.join(frozen[:3])}); "
                "train with the same frozen/unfrozen text modules as the run it came from."
            )
        self._check_init_vae(path, found)
        ours, theirs = config_to_dict(self.model.config), meta.get("lmfusion_config", {})
        changed = sorted(k for k in ours if k in theirs and ours[k] != theirs[k])
        if changed:
            log.info(
                "train.init_from: model settings changed from %s: %s",
                path,
                ", ".join(f"{k} {theirs[k]} -> {ours[k]}" for k in changed),
            )
        copy_into_shards(unwrap(model), state)
        return f"{found.model_dir}" + (f" (step {found.step})" if found.step is not None else "")

    def _check_init_vae(self, path: str, found: Any) -> None:
        """Refuse starting weights trained on another VAE's latents than this run's cache (by weights hash)."""
        from lmfusion_cli.sampling.loading import recorded_vae

        source = recorded_vae(found)
        theirs, ours = (source or {}).get("weights_sha256"), (self.cache_vae or {}).get("weights_sha256")
        if theirs is None or ours is None:
            log.warning("train.init_from: cannot tell which VAE %s was trained on; make sure it is the cache's", path)
        elif theirs != ours:
            raise UserError(
                f"train.init_from: {path} was trained on latents of VAE '{source.get('id')}' (weights "
                f"{theirs[:12]}…), but this run's cache was made with VAE '{self.cache_vae.get('id')}' (weights "
                f"{ours[:12]}…); re-encode the data with that VAE (encode-latents --vae) or start without init_from."
            )

    # ---- outputs -----------------------------------------------------------------------------------
    def save_inference(self, trainable_state: dict[str, torch.Tensor], folder: Path) -> None:
        from lmfusion_cli.model import checkpoint

        folder.mkdir(parents=True, exist_ok=True)
        checkpoint._write(folder, self.model, trainable_state, self.model.base_id)

    def validation_grid(self, source: Any, num_items: int, steps: int, seed: int):
        """(H, W, 3) uint8 grid of images generated from the first `num_items` validation captions
        (the sampling default guidance `DecodingOptions.cfg_scale`, `steps` denoising steps), for the
        trackers; None when the cache's VAE cannot be loaded (then a warning, once). Sampling's Python API,
        as evaluation uses it."""
        import numpy as np

        from lmfusion_cli.sampling.generate import generate_images
        from lmfusion_cli.sampling.io import make_grid
        from lmfusion_cli.sampling.loading import load_codec

        if getattr(self, "_codec", False) is None:
            return None
        if not hasattr(self, "_codec"):
            try:
                self._codec = load_codec(
                    None,
                    self.cache_vae,
                    self.model.config.latent_size,
                    self.model.config.latent_channels,
                    str(next(self.model.parameters()).device),
                )
            except UserError as e:
                log.warning("no validation image grid: %s", e)
                self._codec = None
                return None
        captions = [source[i]["caption"] for i in range(min(num_items, len(source)))]
        with torch.no_grad():
            out = generate_images(
                self.model,
                captions,
                tokenizer=self.tokenizer,
                vae=self._codec,
                steps=steps,
                seed=seed,
                batch_size=len(captions),
            )
        return np.ascontiguousarray(make_grid(out.images))

    def describe(self) -> dict[str, Any]:
        from lmfusion_cli.model.checkpoint import base_config_hash

        return {
            "base": self.model.base_id,
            "base_config_sha256": base_config_hash(self.model.base_config),
            "lmfusion_config": config_to_dict(self.model.config),
            "latent_vae": self.cache_vae,
        }


def vision_unit(vlm: nn.Module) -> list[nn.Module]:
    """A LLaVA base's vision tower and projector as one frozen FSDP group.

    The tower's *children* are sharded, not the tower: transformers 5 finds which hidden states a
    model records by its class name, and `fully_shard` swaps a module's class (FSDP<Name>), after
    which `get_image_features` would get no hidden states back (measured: a TypeError in FSDP2 runs)."""
    inner = vlm.model
    return [*inner.vision_tower.children(), inner.multi_modal_projector]


def _image_documents(batch: MixedBatch) -> torch.Tensor:
    """(num_images,) the document (sample index in the micro-batch) of each image, in batch image order."""
    where = batch.image_index >= 0
    docs = torch.full((batch.num_images,), -1, dtype=torch.long)
    return docs.scatter_reduce(0, batch.image_index[where], batch.document_ids[where], "amax")


def build_lmfusion_workload(config: TrainRunConfig, source: LatentSource, device: torch.device) -> LMFusionWorkload:
    """Load the base and tokenizer, size the model from the cache, move it to `device`."""
    from transformers import AutoTokenizer

    from lmfusion_cli.model import LMFusionModel
    from lmfusion_cli.model.base_lm import base_load_error
    from lmfusion_cli.training.sharded_load import build_meta_model, can_load_sharded

    base = resolve_base_path(config.base.path)
    if not Path(base).exists() and "/" not in base:
        raise UserError(f"Base model {base} is neither a folder nor a hub id; check base.path (or pass --base).")
    try:
        tokenizer = AutoTokenizer.from_pretrained(config.base.tokenizer or base)
    except (OSError, ValueError) as e:
        raise UserError(base_load_error(config.base.tokenizer or base, e)) from e
    model_config = with_latent_geometry(config.model, *latent_geometry(source))
    sharded = (
        config.dist.strategy == "fsdp"
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
        and can_load_sharded(base, model_config)
    )
    if sharded:  # meta now, each process's shards read after `wrap_model` (issue 22)
        model, kept = build_meta_model(base, model_config)
    else:
        model = LMFusionModel.from_base(base, model_config)
    if model.is_llava and config.data.generation_fraction not in (None, 1.0):
        raise UserError(
            f"data.generation_fraction={config.data.generation_fraction} asks for understanding examples, "
            f"but the LLaVA base {base} keeps its understanding path frozen (they would teach nothing); "
            "set data.generation_fraction to 1 or leave it unset."
        )
    manifest = getattr(source, "manifest", None) or {}
    log.info(
        "model: %s + image experts, %.2f M trainable of %.2f M parameters",
        base,
        sum(p.numel() for p in model.trainable_parameters()) / 1e6,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    model.checkpoint_every = config.train.checkpoint_every
    workload = LMFusionWorkload(
        model if sharded else model.to(device),
        tokenizer,
        config.data.seq_len,
        manifest.get("vae"),
        config.data.max_caption_tokens,
    )
    workload.pending_load = (kept, device) if sharded else None
    return workload
