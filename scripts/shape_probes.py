"""Shape probes on the shapes demo's latents (issue 23): who can read an object's shape, from how many examples.

    PYTHONPATH=$PWD .venv/bin/python scripts/shape_probes.py arch --latents work/base/latents
    PYTHONPATH=$PWD .venv/bin/python scripts/shape_probes.py generated --latents work/base/latents EVAL/shapes ...

`arch`: held-out shape accuracy of single-object items against labelled examples seen, for three readers of
the 4×16×16 latent trained on the shape label alone: a small CNN (three 3×3 convs, global max pool), a
ViT of the tiny LM's size on the patcher's 2×2 patches (what the LMFusion model's image experts see), and
the same ViT behind a two-conv stem. It tells whether the tokenisation or the amount of data holds shape back.

`generated`: the CNN reader, trained on the cache's real latents, reads the shape of the single-object
images that `lmfusion evaluate --suite shapes` generated (re-encoded by the shipped VAE), against the
prompt's shape. Unlike the pixel checker it does not care whether the object is drawn crisply: it asks only
whether the generator makes a circle, a square and a triangle differently at all.

`scripts/shapes_flow_lab.py` uses the same reader to score a stand-alone class-conditional generator.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmfusion_cli.common.vae import to_model_space
from lmfusion_cli.data import shapes
from lmfusion_cli.data.latents import open_latent_cache
from lmfusion_cli.model.patchers import _space_to_depth


def single_object_latents(latents: str, splits: str) -> tuple[torch.Tensor, list[dict], list[str]]:
    """(x (n, C, H, W) diffusion-space posterior means, attributes of each, caption of each) of the
    single-object items of `splits` (comma-separated)."""
    cache = open_latent_cache(latents, splits=splits.split(","))
    xs, attrs, captions = [], [], []
    for i in range(len(cache)):
        item = cache[i]
        a = item["attributes"]
        if a is None or a["layout"] != "single":
            continue
        xs.append(to_model_space(item["mean"].float(), cache.scaling_factor, cache.shift_factor))
        attrs.append(a)
        captions.append(item["caption"])
    return torch.stack(xs), attrs, captions


def shape_labels(attrs: list[dict]) -> torch.Tensor:
    return torch.tensor([shapes.SHAPES.index(a["objects"][0]["shape"]) for a in attrs])


def attribute_value(attrs: dict, attribute: str) -> str:
    """ "shape" or "colour" of the single object, or the "background"."""
    return attrs["background"] if attribute == "background" else attrs["objects"][0][attribute]


def attribute_labels(attrs: list[dict], attribute: str, classes: list[str]) -> torch.Tensor:
    return torch.tensor([classes.index(attribute_value(a, attribute)) for a in attrs])


class CNNReader(nn.Module):
    """Three 3×3 convs (7×7 receptive field, 28 px: a whole object) and a global max pool: translation
    invariant by construction."""

    def __init__(self, channels: int = 4, width: int = 64, classes: int = len(shapes.SHAPES)):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.GELU(),
        )
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x).amax(dim=(2, 3)))


class ViTReader(nn.Module):
    """p×p patches through one Linear (the linear patcher), learned positions, a class token and a
    pre-norm transformer of the tiny LM's size (4 layers, width 256, 4 heads, MLP 688); `stem` puts two 3×3
    convs (width 64) in front of the patching (5×5 receptive field)."""

    def __init__(
        self, channels: int = 4, side: int = 16, patch: int = 2, width: int = 256, layers: int = 4, stem: bool = False
    ):
        super().__init__()
        self.patch = patch
        self.stem = (
            nn.Sequential(nn.Conv2d(channels, 64, 3, padding=1), nn.GELU(), nn.Conv2d(64, 64, 3, padding=1))
            if stem
            else None
        )
        self.proj = nn.Linear((64 if stem else channels) * patch * patch, width)
        self.position = nn.Parameter(torch.zeros((side // patch) ** 2, width))
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        layer = nn.TransformerEncoderLayer(width, 4, 688, 0.0, batch_first=True, norm_first=True, activation="gelu")
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, len(shapes.SHAPES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stem is not None:
            x = self.stem(x)
        tokens = self.proj(_space_to_depth(x, self.patch)) + self.position  # the linear patcher's token order
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], 1)
        return self.head(self.transformer(tokens)[:, 0])


def train_reader(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, examples: int, lr: float = 1e-3, batch: int = 32, on_examples=None
) -> nn.Module:
    """AdamW on shuffled epochs of (x, y) until `examples` labelled examples are seen; `on_examples(seen)` is
    called after each batch (for learning curves)."""
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-2)
    seen = 0
    while seen < examples:
        perm = torch.randperm(len(x))
        for j in range(0, len(x) - batch + 1, batch):
            b = perm[j : j + batch]
            loss = nn.functional.cross_entropy(net(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += batch
            if on_examples is not None:
                on_examples(seen)
            if seen >= examples:
                break
    return net


@torch.no_grad()
def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    acc = float((net(x).argmax(-1) == y).float().mean())
    net.train()
    return acc


def trained_cnn_reader(latents: str, attribute: str = "shape", seed: int = 0) -> tuple[CNNReader, float, list[str]]:
    """The CNN reader of `attribute` ("shape", "colour" of the object, "background") trained on the cache's
    train split (12 epochs), its accuracy on test + val, and its classes (index → value)."""
    torch.manual_seed(seed)
    x, attrs, _ = single_object_latents(latents, "train")
    xt, attrs_t, _ = single_object_latents(latents, "test,val")
    classes = list(shapes.SHAPES) if attribute == "shape" else sorted({attribute_value(a, attribute) for a in attrs})
    y, yt = attribute_labels(attrs, attribute, classes), attribute_labels(attrs_t, attribute, classes)
    net = train_reader(CNNReader(x.shape[1], classes=len(classes)), x, y, examples=12 * len(x))
    return net, accuracy(net, xt, yt), classes


def arch(args) -> None:
    x, attrs, _ = single_object_latents(args.latents, "train")
    xt, attrs_t, _ = single_object_latents(args.latents, "test,val")
    y, yt = shape_labels(attrs), shape_labels(attrs_t)
    budgets = [int(b) for b in args.examples.split(",")]
    print(json.dumps({"train_items": len(y), "test_items": len(yt)}), flush=True)
    readers = {
        "cnn": (lambda: CNNReader(x.shape[1]), 1e-3),
        "vit": (lambda: ViTReader(x.shape[1], x.shape[-1]), 3e-4),
        "vit_conv_stem": (lambda: ViTReader(x.shape[1], x.shape[-1], stem=True), 3e-4),
    }
    for name in args.readers.split(","):
        make, lr = readers[name]
        t0 = time.time()
        curve = _learning_curve(make, lr, (x, y), (xt, yt), budgets)
        print(
            json.dumps({"reader": name, "accuracy_by_examples": curve, "seconds": round(time.time() - t0)}), flush=True
        )


def _learning_curve(make, lr: float, train, test, budgets: list[int], batch: int = 32) -> dict[int, float]:
    """Held-out accuracy of a fresh reader (seed 0) after each budget of labelled examples."""
    torch.manual_seed(0)
    net, curve = make(), {}

    def record(seen: int) -> None:
        for b in budgets:
            if seen - batch < b <= seen:
                curve[b] = round(accuracy(net, *test), 3)

    train_reader(net, *train, max(budgets), lr=lr, batch=batch, on_examples=record)
    return curve


def generated(args) -> None:
    from PIL import Image

    from lmfusion_cli.common.vae import encode_posterior, load_vae, resolve_vae

    net, real, _ = trained_cnn_reader(args.latents)
    cache = open_latent_cache(args.latents, splits="test")
    print(json.dumps({"reader_on_real_test_latents": round(real, 3)}), flush=True)
    vae = load_vae(resolve_vae(args.vae))
    for folder in map(Path, args.folders):
        rows = [json.loads(line) for line in (folder / "prompts.jsonl").read_text().splitlines() if line.strip()]
        pixels, ys = [], []
        for i, row in enumerate(rows):
            a = row["attributes"]
            if a["layout"] != "single":
                continue
            image = Image.open(folder / "generations" / f"{i:05d}.png").convert("RGB")
            pixels.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1))
            ys.append(shapes.SHAPES.index(a["objects"][0]["shape"]))
        with torch.no_grad():
            mean, _ = encode_posterior(vae, torch.stack(pixels))
            pred = net(to_model_space(mean, cache.scaling_factor, cache.shift_factor)).argmax(-1)
        y = torch.tensor(ys)
        confusion = torch.zeros(3, 3, dtype=torch.long)
        for a, b in zip(y.tolist(), pred.tolist(), strict=True):
            confusion[a, b] += 1
        print(
            json.dumps(
                {
                    "folder": str(folder),
                    "single_items": len(ys),
                    "shape_read_by_cnn": round(float((pred == y).float().mean()), 3),
                    "chance": round(float(torch.bincount(y).max()) / len(y), 3),  # the most common shape's share
                    "confusion_rows_prompt_cols_read": {"order": list(shapes.SHAPES), "counts": confusion.tolist()},
                }
            ),
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    a = sub.add_parser("arch", help="held-out shape accuracy per reader against labelled examples seen")
    a.add_argument("--latents", required=True)
    a.add_argument("--examples", default="2000,4000,11000,22000")
    a.add_argument("--readers", default="cnn,vit,vit_conv_stem")
    g = sub.add_parser("generated", help="the CNN reader on the single-object generations of evaluate folders")
    g.add_argument("--latents", required=True)
    g.add_argument("--vae", default="", help="the VAE the generations were decoded with (default: shipped)")
    g.add_argument("folders", nargs="+", help="`evaluate --suite shapes` output folders (…/shapes)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    arch(args) if args.command == "arch" else generated(args)


if __name__ == "__main__":
    main()
