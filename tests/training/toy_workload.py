"""A toy workload with LMFusion's training contract: frozen "text" modules, trainable "image" ones.

Small enough for 2-process CPU tests in seconds. Text: a frozen embedding, frozen per-layer text
linears and a frozen head; image: trainable per-layer linears, a latent in/out projection. The text
stream sees the image (so the caption loss reaches the image modules, as shared attention does).
Noise and timesteps come from each sample's `noise_seed`, as in the real workload. Also a toy
latent source (`ToySource`) with optional NaN items, and `make_config` for tiny runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import save_file
from torch import nn

from lmfusion_cli.common.configs import build_config
from lmfusion_cli.training.config import TrainRunConfig
from lmfusion_cli.training.loader import GENERATION, Sample
from lmfusion_cli.training.workload import LossSums, MicroBatch, ValidationSums

VOCAB, WIDTH, CAPTION_LEN, C, H = 40, 16, 8, 2, 4


@dataclass(frozen=True)
class ToyItem:
    key: str
    caption: str


class ToySource:
    """`num_items` items with seeded latent means/stds; `nan_keys` items carry a NaN latent."""

    def __init__(self, num_items: int = 24, seed: int = 0, nan_keys: tuple[str, ...] = ()):
        g = torch.Generator().manual_seed(seed)
        self.mean = torch.randn(num_items, C, H, H, generator=g)
        self.std = 0.1 * torch.rand(num_items, C, H, H, generator=g)
        words = ["red", "blue", "circle", "square", "big", "small"]
        self.items = [
            ToyItem(f"item-{i:04d}", " ".join(words[(i * k) % 6] for k in range(1, 4))) for i in range(num_items)
        ]
        for i, item in enumerate(self.items):
            if item.key in nan_keys:
                self.mean[i, 0, 0, 0] = float("nan")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> ToyItem:
        return self.items[i]

    def draw(self, i: int, generator: torch.Generator) -> torch.Tensor:
        return self.mean[i] + self.std[i] * torch.randn(self.mean[i].shape, generator=generator)


class ToyLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.text = nn.Linear(WIDTH, WIDTH)
        self.image = nn.Linear(WIDTH, WIDTH)
        self.mix = nn.Linear(WIDTH, WIDTH, bias=False)  # image → text coupling (trainable)

    def forward(self, h_text: torch.Tensor, h_image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h_text = h_text + torch.tanh(self.text(h_text)) + self.mix(h_image).unsqueeze(1)
        return h_text, h_image + torch.tanh(self.image(h_image))


class ToyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.layers = nn.ModuleList([ToyLayer(), ToyLayer()])
        self.head = nn.Linear(WIDTH, VOCAB)
        self.latent_in = nn.Linear(C * H * H + 1, WIDTH)
        self.latent_out = nn.Linear(WIDTH, C * H * H)
        for name, p in self.named_parameters():
            p.requires_grad = not (name.startswith(("embed", "head")) or ".text." in name)

    def forward(self, ids, latents, noise, t, text_mask, gen_mask):
        x_t = (1 - t)[:, None, None, None] * latents + t[:, None, None, None] * noise
        h_image = self.latent_in(torch.cat([x_t.flatten(1), t[:, None]], dim=1))
        h_text = self.embed(ids)
        for layer in self.layers:
            h_text, h_image = layer(h_text, h_image)
        logits = self.head(h_text[:, :-1])  # predict token p+1 at p
        ce = nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # (B, L-1)
        text_per = (ce * text_mask[:, 1:]).sum(1)
        mse = ((self.latent_out(h_image) - noise.flatten(1)) ** 2).mean(1) * gen_mask  # (B,)
        return text_per, mse

    def text_logits(self, ids):
        h = self.embed(ids)
        for layer in self.layers:
            h = h + torch.tanh(layer.text(h))
        return self.head(h)


def tokenize(caption: str) -> list[int]:
    ids = [1] + [2 + (ord(c) % (VOCAB - 2)) for c in caption][: CAPTION_LEN - 1]
    return ids + [0] * (CAPTION_LEN - len(ids))


class ToyInputs(NamedTuple):
    """What `ToyModel.forward` takes besides noise and timesteps."""

    ids: torch.Tensor
    """(B, CAPTION_LEN) token ids, 0 = padding."""
    latents: torch.Tensor
    """(B, C, H, H) clean latents, one per sample."""
    text_mask: torch.Tensor
    """(B, CAPTION_LEN) float: positions with an LM target (understanding samples)."""
    generate: torch.Tensor
    """(B,) float: 1 for generation samples (their image has a diffusion loss)."""


class ToyWorkload:
    lambda_image = 5.0

    def __init__(self, save_delay: float = 0.0):
        self.model = ToyModel()
        self.save_delay = save_delay

    def shard_units(self) -> list[nn.Module]:
        return list(self.model.layers)

    def make_micro_batch(self, samples: list[Sample], device: torch.device) -> MicroBatch[ToyInputs]:
        ids = torch.tensor([tokenize(s.caption) for s in samples])
        gen = torch.tensor([s.task == GENERATION for s in samples], dtype=torch.float32)
        text_mask = ((ids > 0) & (gen[:, None] == 0)).float()
        text_mask[:, 0] = 0
        latents = torch.stack([s.latent for s in samples])
        return MicroBatch(
            inputs=ToyInputs(ids, latents, text_mask, gen),
            keys=[s.key for s in samples],
            text_targets=int(text_mask.sum()),
            generated_images=int(gen.sum()),
            tokens=int((ids > 0).sum()) + len(samples),
            images=len(samples),
        )

    def _noise(self, seeds: list[int], fraction: float | None = None):
        noise, t = [], []
        for s in seeds:
            g = torch.Generator().manual_seed(s)
            noise.append(torch.randn(C, H, H, generator=g))
            t.append(torch.rand((), generator=g) if fraction is None else torch.tensor(fraction))
        return torch.stack(noise), torch.stack(t)

    def loss_sums(self, model: nn.Module, micro: MicroBatch[ToyInputs], noise_seeds: list[int]) -> LossSums:
        ids, latents, text_mask, gen = micro.inputs
        noise, t = self._noise(noise_seeds)
        text_per, mse = model(ids, latents, noise, t, text_mask, gen)
        return LossSums(text=text_per.sum(), image=mse.sum(), per_sample=(text_per + mse).detach())

    def validation_sums(
        self, model: nn.Module, micro: MicroBatch[ToyInputs], noise_seeds: list[int], fraction: float
    ) -> ValidationSums:
        ids, latents, text_mask, gen = micro.inputs
        noise, t = self._noise(noise_seeds, fraction)
        text_per, mse = model(ids, latents, noise, t, text_mask, gen)
        return ValidationSums(
            text=float(text_per.sum()),
            text_targets=micro.text_targets,
            image=float(mse.sum()),
            images=micro.generated_images,
        )

    def save_inference(self, trainable_state: dict[str, torch.Tensor], folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in trainable_state.items()}, str(folder / "trainable.safetensors"))
        if self.save_delay:
            time.sleep(self.save_delay)

    def describe(self) -> dict[str, Any]:
        return {"model": "toy"}


def make_config(out: Path, **sections: dict[str, Any]) -> TrainRunConfig:
    """A tiny run config; `sections` override e.g. train={"batch_size": 4}."""
    data: dict[str, Any] = {
        "data": {"latents": "toy", "val_split": None},
        "optim": {"lr": 3e-3, "weight_decay": 0.1},
        "schedule": {"steps": 6, "warmup_steps": 2, "min_lr": 1e-4},
        "train": {"out": str(out), "batch_size": 4, "micro_batch_size": 2, "save_every": 3, "keep_last": 2},
        "dist": {"strategy": "none"},
        "log": {"tensorboard": False, "val_items": 4},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return build_config(TrainRunConfig, data)


def toy_factories(num_items: int = 24, nan_keys: tuple[str, ...] = (), save_delay: float = 0.0):
    """(workload_factory, source_factory) for `run_training`."""

    def workload_factory(config, source, device):
        return ToyWorkload(save_delay=save_delay)

    def source_factory(path, split):
        return ToySource(num_items=num_items, seed=0 if split == "train" else 1, nan_keys=nan_keys)

    return workload_factory, source_factory
