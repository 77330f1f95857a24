"""Tiny local stand-ins shared by the evaluation tests: Inception, CLIP weights and a COCO layout."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmfusion_cli.data import shapes

TINY_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


class TinyInception(torch.nn.Module):
    """Stands in for clean-fid's TorchScript Inception: a `layers` stack on (x - 128) / 128 input."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 5, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten()
        )

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return self.layers(x)


def save_tiny_inception(path: Path) -> Path:
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(TinyInception().eval()), str(path))
    return path


def save_tiny_clip(folder: Path, name: str = "tiny-test-clip") -> tuple[Path, Path]:
    """(config JSON, weights file) of a random open_clip model small enough for CPU tests."""
    import open_clip

    config = folder / f"{name}.json"
    config.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    weights = folder / f"{name}.pt"
    torch.save(open_clip.create_model(name, pretrained=None).state_dict(), weights)
    return config, weights


def make_coco_fixture(root: Path, year: str = "2014", num_images: int = 8, missing=(7,), size=(32, 32)) -> Path:
    """A COCO-layout folder: annotations/captions_val{year}.json, val{year}/ images (shapes scenes resized to
    `size`, e.g. not square as COCO's are not), 5 captions each, dataset_coco.json (even images: test)."""
    (root / "annotations").mkdir(parents=True)
    (root / f"val{year}").mkdir()
    images, anns, karpathy = [], [], []
    for i in range(num_images):
        item = shapes.make_item(i, 5, 32)
        name = f"COCO_val{year}_{i + 100:012d}.jpg"
        images.append({"id": i + 100, "file_name": name})
        if i not in missing:
            item.image.resize(size).save(root / f"val{year}" / name)
        for t in range(5):
            anns.append({"id": len(anns), "image_id": i + 100, "caption": shapes.caption_for(item.attributes, t) + "."})
        karpathy.append({"cocoid": i + 100, "filename": name, "split": "test" if i % 2 == 0 else "train"})
    (root / "annotations" / f"captions_val{year}.json").write_text(json.dumps({"images": images, "annotations": anns}))
    (root / "dataset_coco.json").write_text(json.dumps({"images": karpathy}))
    return root
