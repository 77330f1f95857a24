"""`LMFusionModel`: a frozen Llama-layout causal LM plus image experts, patcher and diffusion loss.

The base model's modules *are* the text expert (frozen unless the config says otherwise); every
decoder layer gets an `ImageExpert` copy, the image path gets its own final norm, and latents enter
and leave through the patcher (`patchers`). One forward routes tokens by index (`layers`), applies
the hybrid mask (`attention`) and returns losses (training), logits (text only) or, segment by
segment against a `KVCache`, text logits and image predictions (sampling).

This file does no I/O; loading the base is `base_lm.py`'s, the Hub mixin `hub.py`'s, checkpoints
`checkpoint.py`'s, batch layout `sequence.py`'s, noising `noising.py`'s and the loss sums `losses.py`'s.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lmfusion_cli.model import llava
from lmfusion_cli.model.attention import Attention, MaskInfo
from lmfusion_cli.model.base_lm import check_llama_layout, load_base
from lmfusion_cli.model.cache import KVCache
from lmfusion_cli.model.config import LMFusionConfig
from lmfusion_cli.model.diffusion import Diffusion
from lmfusion_cli.model.hub import HubMixin
from lmfusion_cli.model.layers import ImageExpert, Routes, reinitialise_, routed_layer
from lmfusion_cli.model.losses import FusionOutput, image_documents, mean_by, text_token_losses
from lmfusion_cli.model.noising import ImageNoising
from lmfusion_cli.model.patchers import make_patcher
from lmfusion_cli.model.sequence import IMAGE, TEXT, VISION, MixedBatch, text_segment
from lmfusion_cli.model.targets import image_targets, target_masks


@dataclass
class SegmentOutput:
    """`forward_segment` result."""

    text_logits: torch.Tensor | None
    """(B, T, V) logits at text positions, zeros elsewhere ((B, k, V) with logits_to_keep=k);
    None when the segment has no text (in the kept columns)."""
    image_prediction: torch.Tensor | None
    """(num_images, C, H, W) the objective's prediction (ε or velocity); None without images."""
    cache: KVCache | None
    """The cache extended by this segment (update_cache=True), else the cache passed in."""


class LMFusionModel(
    nn.Module,
    HubMixin,
    library_name="lmfusion",
    tags=["lmfusion", "text-to-image", "image-to-text"],
    paper_url="https://arxiv.org/abs/2412.15188",
    pipeline_tag="text-to-image",
):
    """save_pretrained / from_pretrained / push_to_hub come from the Hub mixin; see `model/hub.py`."""

    def __init__(self, base: nn.Module, config: LMFusionConfig, base_id: str):
        """Wrap an already-loaded causal LM (it is modified in place: frozen or re-initialised)."""
        super().__init__()
        check_llama_layout(base, base_id)
        self.is_llava = llava.is_llava(base)  # LLaVAFusion: a frozen VLM's vision path feeds the text expert
        if self.is_llava:
            llava.check_llava_options(config.from_scratch, config.freeze_text, base_id)
        self.base, self.config, self.base_id = base, config, base_id
        self.base_config = base.config
        decoder = llava.text_decoder(base)
        std = getattr(base.config, "initializer_range", 0.02)
        if config.from_scratch:
            reinitialise_(base, std)
        head = base.get_output_embeddings()
        self.vocab_size, hidden = head.weight.shape
        self.num_image_tokens = config.num_image_tokens

        # BOI/EOI: their own trainable input and logit rows, new ids V, V+1 after the vocabulary, started
        # at the mean embedding / head row (a separate parameter: never tied to a base row). Legacy
        # checkpoints that reused reserved ids keep that layout (trainable input rows, the base's frozen
        # logit rows), so they load unchanged; new models never get it (issue 18).
        ids = (config.boi_id, config.eoi_id) if config.boi_id is not None else (self.vocab_size, self.vocab_size + 1)
        self.boi_id, self.eoi_id = ids
        self.new_special_rows = min(ids) >= self.vocab_size
        if self.new_special_rows and sorted(ids) != [self.vocab_size, self.vocab_size + 1]:
            raise ValueError(f"new BOI/EOI ids must be {self.vocab_size} and {self.vocab_size + 1}; got {ids}")
        if not self.new_special_rows and max(ids) >= self.vocab_size:
            raise ValueError(f"boi_id/eoi_id {ids} must both be inside or both just past the vocabulary")
        table = decoder.embed_tokens.weight.detach()
        init_rows = table.mean(0).expand(2, -1) if self.new_special_rows else table[list(ids)]
        self.special_embed = nn.Parameter(init_rows.clone())  # (2, D) input rows of BOI, EOI
        head_rows = head.weight.detach().mean(0).expand(2, -1).clone() if self.new_special_rows else None
        self.special_head = nn.Parameter(head_rows) if head_rows is not None else None  # (2, D) logit rows

        # image experts: copies of the text modules (or random, an ablation)
        if config.experts == "none":
            self.image_experts = None
        else:
            self.image_experts = nn.ModuleList(ImageExpert(layer, config.experts) for layer in decoder.layers)
        self.image_norm = copy.deepcopy(decoder.norm)
        if config.image_init == "random" and self.image_experts is not None:
            reinitialise_(self.image_experts, std)
        self.patcher = make_patcher(config, hidden)
        self.diffusion = Diffusion(config)
        self.noising = ImageNoising(self.diffusion, config.understanding_max_timestep_fraction)

        # the mask has no sliding-window predicate: refuse sequences longer than a base's window
        window = getattr(base.config, "sliding_window", None)
        self.sliding_window = window if window and getattr(base.config, "use_sliding_window", True) else None

        dtype = head.weight.dtype
        for module in (self.image_experts, self.image_norm, self.patcher):
            if module is not None:
                module.to(dtype=dtype)
        if config.freeze_text and not config.from_scratch:
            base.requires_grad_(False)
        self.detach_frozen_prefix = True
        """Training with frozen text: run text positions whose context holds no trainable input (a
        caption before its image) forward only, without a graph (issue 22); False = the full graph."""
        self.checkpoint_every = 0
        """Activation checkpointing (set by training): recompute every k-th routed layer in the backward
        (non-reentrant); 0 = none, 1 = every layer."""

    # ---- construction ----------------------------------------------------------------------------
    @classmethod
    def from_base(
        cls, base: str | os.PathLike | nn.Module, config: LMFusionConfig | None = None, **options
    ) -> LMFusionModel:
        """Build from a local path, hub id or loaded `transformers` causal LM of the Llama layout.

        `options` are `LMFusionConfig` fields, overriding `config` (or the defaults).
        """
        if config is None:
            config = LMFusionConfig(**options)
        elif options:
            config = dataclasses.replace(config, **options)
        config.num_image_tokens  # noqa: B018 - a ValueError now if latent_size is unset, before the base loads
        if isinstance(base, (str, os.PathLike)):
            base_id = str(base)
            base = load_base(base_id, getattr(torch, config.dtype))  # a causal LM or a LLaVA VLM
        else:
            base_id = getattr(base.config, "_name_or_path", "") or type(base).__name__
        return cls(base, config, base_id)

    @property
    def decoder(self) -> nn.Module:
        """The base's Llama-layout decoder: the text expert (a VLM's language model for LLaVA)."""
        return llava.text_decoder(self.base)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Image experts, patcher, image final norm, BOI/EOI rows (plus text modules if unfrozen)."""
        return [p for p in self.parameters() if p.requires_grad]

    # ---- pieces of the forward --------------------------------------------------------------------
    def _embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        """(M,) token ids → (M, D); BOI/EOI take the trainable rows, all others the frozen table."""
        emb = self.decoder.embed_tokens(ids.clamp(max=self.vocab_size - 1))
        emb = torch.where((ids == self.boi_id)[:, None], self.special_embed[0], emb)
        return torch.where((ids == self.eoi_id)[:, None], self.special_embed[1], emb)

    def _text_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final text norm + LM head (+ logits of new BOI/EOI rows): (..., D) → (..., V)."""
        hidden = self.decoder.norm(hidden)
        logits = self.base.get_output_embeddings()(hidden)
        if self.special_head is not None:
            logits = torch.cat([logits, hidden @ self.special_head.T], dim=-1)
        return logits

    def _constant_context_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """`_text_head` for positions in a frozen context: (M, D) → (M, V+2), the base's logits as constants.

        Exactly the values of `_text_head`; only the new BOI/EOI logit rows get a gradient (through the
        softmax normaliser), so the (M, V) base logits are computed without a graph."""
        with torch.no_grad():
            normed = self.decoder.norm(hidden)
            logits = self.base.get_output_embeddings()(normed)
        return torch.cat([logits, normed @ self.special_head.T], dim=-1)

    def target_masks(self, batch: MixedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(learnable, frozen), both (B, T) bool: the LM targets that enter the loss, and the positions
        whose hidden state depends on no trainable parameter (`targets.target_masks`)."""
        text_trainable = not self.config.freeze_text or self.config.from_scratch
        return target_masks(batch, (self.boi_id, self.eoi_id), text_trainable, self.special_head is not None)

    def image_targets(self, batch: MixedBatch) -> torch.Tensor:
        """(num_images,) bool: images with a diffusion loss (`targets.image_targets`)."""
        cfg = self.config
        return image_targets(batch, cfg.understanding_image_loss, cfg.understanding_max_timestep_fraction)

    def _transformer(
        self,
        batch: MixedBatch,
        image_tokens: torch.Tensor | None,
        cache: KVCache | None,
        frozen: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Routes, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Embed, run all routed layers. image_tokens: (num_images, N, D) from the patcher.
        frozen: (B, T) bool, text positions to run forward only (see `Routes.frozen`).

        Returns flat hidden states (B·T, D), the routes and each layer's new (keys, values).
        """
        B, T = batch.input_ids.shape
        is_vision = batch.modality == VISION  # LLaVA vision rows take the text expert, as in LLaVA
        routes = Routes.from_modality(batch.modality.masked_fill(is_vision, TEXT), TEXT, IMAGE)
        text_rows = self._embed_text(batch.input_ids.reshape(-1)[routes.text])  # (N_text, D)
        if is_vision.any():
            rows = llava.vision_features(self.base, batch.vision_pixels, batch.vision_sizes)  # (N_vision, D)
            text_rows = llava.place_vision_rows(text_rows, is_vision.reshape(-1)[routes.text], rows)
        if image_tokens is not None:
            image_rows = image_tokens[
                batch.image_index.reshape(-1)[routes.image], batch.patch_index.reshape(-1)[routes.image]
            ]  # (N_image, D)
        else:
            image_rows = text_rows.new_zeros(0, text_rows.shape[-1])
        hidden = routes.merge(text_rows, image_rows)  # (B·T, D)
        rope = self.decoder.rotary_emb(hidden.view(B, T, -1), batch.position_ids)  # (B, T, hd) ×2
        if frozen is not None and torch.is_grad_enabled():
            routes = routes.with_frozen(frozen.reshape(-1))

        past = 0 if cache is None else cache.length
        if self.sliding_window is not None and past + T > self.sliding_window:
            raise ValueError(
                f"{past + T} positions exceed the base's sliding window of {self.sliding_window}; "
                "LMFusion's mask has no sliding-window predicate, so keep sequences within it"
            )
        past_docs = batch.document_ids.new_empty(B, 0) if cache is None else cache.document_ids
        info = MaskInfo.after_cache(batch.image_index, batch.document_ids, past_docs)
        attention = Attention(info, self.config.attention_backend)
        new_kv = []
        for i, text_layer in enumerate(self.decoder.layers):
            expert = self.image_experts[i] if self.image_experts is not None else None
            past_kv = None if cache is None else (cache.keys[i], cache.values[i])
            args = (text_layer, expert, hidden, routes, (B, T), rope, attention, past_kv)
            if self.checkpoint_every and torch.is_grad_enabled() and i % self.checkpoint_every == 0:
                hidden, kv = checkpoint(routed_layer, *args, use_reentrant=False)
            else:
                hidden, kv = routed_layer(*args)
            new_kv.append(kv)
        return hidden, routes, new_kv

    @property
    def _patcher_dtype(self) -> torch.dtype:
        return next(self.patcher.parameters()).dtype

    def _image_out(
        self,
        hidden: torch.Tensor,
        routes: Routes,
        batch: MixedBatch,
        num_images: int,
        timesteps: torch.Tensor,
        skips: tuple[torch.Tensor, ...],
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Image final norm + patcher decode of the images `keep` (all if None): (n, C, H, W)."""
        N = self.num_image_tokens
        flat = batch.image_index.reshape(-1)[routes.image] * N + batch.patch_index.reshape(-1)[routes.image]
        rows = self.image_norm(hidden[routes.image])  # (N_image, D)
        grid = rows.new_zeros(num_images * N, rows.shape[-1]).index_copy(0, flat, rows).view(num_images, N, -1)
        if keep is not None:
            grid, timesteps, skips = grid[keep], timesteps[keep], tuple(s[keep] for s in skips)
        return self.patcher.decode(grid, timesteps, skips)

    # ---- training ---------------------------------------------------------------------------------
    def forward(
        self,
        batch: MixedBatch,
        latents: torch.Tensor | None = None,
        *,
        timesteps: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> FusionOutput:
        """Training loss on a batch. latents: (num_images, C, H, W) clean, in batch image order.

        timesteps (num_images,) and noise default to fresh draws by `self.noising` (per image;
        understanding images capped at `understanding_max_timestep_fraction`, clean when it is 0).
        Pass them for seeded or fixed-timestep losses (the training workload draws them the same way).
        """
        cfg, num_images = self.config, batch.num_images
        image_tokens = skips = None
        if num_images:
            if latents is None or latents.shape[0] != num_images:
                raise ValueError(f"batch has {num_images} images; pass latents of shape ({num_images}, C, H, W)")
            generate = batch.image_generate
            if timesteps is None or noise is None:  # one generator for all images, drawn in turn
                drawn_t, drawn_noise = self.noising.draw(generate, latents.shape[1:], [generator] * num_images)
                timesteps = drawn_t.to(latents.device) if timesteps is None else timesteps
                noise = drawn_noise.to(latents.device, latents.dtype) if noise is None else noise
            noisy = self.noising.apply(latents, noise, timesteps, generate)
            image_tokens, skips = self.patcher.encode(noisy.to(self._patcher_dtype), timesteps)
        else:
            timesteps = torch.zeros(0, device=batch.input_ids.device)
        learnable, frozen = self.target_masks(batch)
        prefix = frozen if self.detach_frozen_prefix and frozen.any() else None
        hidden, routes, _ = self._transformer(batch, image_tokens, cache=None, frozen=prefix)

        # text: next-token cross-entropy over the learnable targets only (`losses.text_token_losses`)
        token_loss, targets = text_token_losses(
            hidden, batch.labels, learnable, frozen, self._text_head, self._constant_context_logits
        )  # (N_targets,)
        num_text = torch.tensor(targets.shape[0], device=hidden.device)
        text_loss = token_loss.sum() / num_text.clamp(min=1)

        # images: diffusion MSE on generation images, and on understanding images too unless
        # `understanding_image_loss: none` (Transfusion §4.3: an unconditional target, noise capped)
        docs, E = batch.document_ids.reshape(-1), batch.num_examples
        example_loss = hidden.new_zeros(E, dtype=torch.float32)
        with_loss = self.image_targets(batch)  # (num_images,) bool
        image_losses = None
        if with_loss.any():
            keep = with_loss.nonzero().squeeze(1)
            prediction = self._image_out(hidden, routes, batch, num_images, timesteps, skips, keep)
            image_losses = self.diffusion.loss_per_image(prediction, latents[keep], noise[keep])  # (n_loss,)
            image_loss = image_losses.mean()
            image_doc = image_documents(batch, routes)[keep]
            example_loss = example_loss + cfg.lambda_image * mean_by(image_losses.detach(), image_doc, E)
        else:
            image_loss = hidden.sum().float() * 0.0  # keeps the graph whole when there are no images
        example_loss = example_loss + mean_by(token_loss.detach(), docs[targets], E)
        return FusionOutput(
            loss=text_loss + cfg.lambda_image * image_loss,
            text_loss=text_loss,
            image_loss=image_loss,
            num_text_targets=num_text,
            num_image_targets=with_loss.sum(),
            example_loss=example_loss,
            timesteps=timesteps,
            image_losses=image_losses,
        )

    # ---- inference ----------------------------------------------------------------------------------
    def text_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, V) of a text-only batch through the routed path; equal to the base model's.

        V is the base model's vocabulary: the logits of new BOI/EOI rows (if any) are left out, so the
        result has exactly the base's shape and values. Positions are 0..T-1 like `transformers`
        without `position_ids`; masked positions are never attended to and get zero logits.
        """
        B, T = input_ids.shape
        valid = None if attention_mask is None else attention_mask.bool()
        positions = torch.arange(T, device=input_ids.device).expand(B, T)
        batch = text_segment(input_ids, positions, valid)
        hidden, _, _ = self._transformer(batch, None, cache=None)
        return self._text_head(hidden.view(B, T, -1))[..., : self.vocab_size]

    def forward_segment(
        self,
        segment: MixedBatch,
        latents: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
        cache: KVCache | None = None,
        update_cache: bool = False,
        logits_to_keep: int | None = None,
    ) -> SegmentOutput:
        """Run a segment of positions after an optional cache (sampling).

        segment: text and/or image positions with explicit `position_ids` and `document_ids` (-1 =
        padding); build with `sequence.left_pad`, `text_segment`, `image_segment`, `concat_segments`.
        latents: (num_images, C, H, W) *already noisy* x_t (clean for a committed image, t = 0);
        timesteps: (num_images,). update_cache=True appends the segment's keys/values (prompts,
        decoded text, finished images); False leaves the cache as it was (denoising steps).
        logits_to_keep: compute text logits only for the last k columns (k=1 when decoding after a
        long prompt: left padding puts every row's last token in the last column).
        """
        num_images = segment.num_images
        image_tokens = skips = None
        if num_images:
            if latents is None or timesteps is None:
                raise ValueError("a segment with image positions needs latents and timesteps")
            # the patcher runs in its parameters' dtype (a bf16 model samples from fp32 latents)
            image_tokens, skips = self.patcher.encode(latents.to(self._patcher_dtype), timesteps)
        hidden, routes, new_kv = self._transformer(segment, image_tokens, cache)
        B, T = segment.input_ids.shape
        keep = T if logits_to_keep is None else min(logits_to_keep, T)
        text_pos = routes.text[routes.text % T >= T - keep]  # flat text positions in the kept columns
        text_logits = None
        if text_pos.numel():
            text_rows = self._text_head(hidden[text_pos])  # (N_kept_text, V)
            slots = (text_pos // T) * keep + text_pos % T - (T - keep)
            text_logits = text_rows.new_zeros(B * keep, text_rows.shape[-1]).index_copy(0, slots, text_rows)
            text_logits = text_logits.view(B, keep, -1)
        image_prediction = None
        if num_images:
            image_prediction = self._image_out(hidden, routes, segment, num_images, timesteps, skips).to(latents.dtype)
        if update_cache:
            ends = (segment.position_ids + 1).masked_fill(segment.document_ids < 0, 0).amax(dim=1)  # (B,)
            keys, values = tuple(k for k, _ in new_kv), tuple(v for _, v in new_kv)
            if cache is None:
                cache = KVCache(keys, values, segment.document_ids, ends)
            else:
                cache = cache.append(keys, values, segment.document_ids, torch.maximum(cache.next_positions, ends))
        return SegmentOutput(text_logits=text_logits, image_prediction=image_prediction, cache=cache)
