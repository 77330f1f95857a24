"""Typed configs of the data stages (`prepare`, `encode-latents`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CaptionStyle = Literal["fixed", "varied"]
"""Caption styles of the shapes set (`data/shapes.py`): one template per layout, or several per item."""
SourceKind = Literal["shapes", "coco", "folder", "jsonl", "hf-disk", "imagefolder"]


@dataclass(frozen=True)
class PrepareConfig:
    source: SourceKind = "shapes"
    """Where items come from: the synthetic shapes set, a COCO layout, a folder, a JSONL file, a saved
    `datasets` dataset (`load_from_disk`) or an `imagefolder` with captions."""
    out: str = ""
    """Output folder for the webdataset shards and `manifest.json`."""
    input: str | None = None
    """Input path: COCO root, image folder, JSONL file or dataset folder (unused for shapes)."""
    karpathy_split: str | None = None
    """COCO only: Karpathy split JSON (`dataset_coco.json`); without it the seeded hash split is used."""
    num_items: int = 2000
    """Shapes only: number of items to generate."""
    interleaved: bool = False
    """Shapes only: give each item an interleaved document ("Here is a picture of <caption>: <image> The
    circle is on the left.") for `data.interleaved_fraction` in training (data/interleaved.py)."""
    captions: CaptionStyle = "fixed"
    """Shapes only: `fixed`, one caption template per layout with every attribute in its own word slot
    (what the demo's small generator can read), or `varied`, one of several templates per item
    (`data/shapes.py`; same images either way)."""
    seed: int = 0
    """Seed of the shapes generator and of the train/val/test split."""
    resolution: int = 64
    """Output image side in pixels (shorter side resized, then centre-cropped)."""
    shard_size: int = 1000
    """Items per `.tar` shard."""
    val_fraction: float = 0.05
    """Fraction of items in the validation split."""
    test_fraction: float = 0.05
    """Fraction of items in the test split."""
    image_format: Literal["png", "jpg"] = "png"
    """Encoding of stored images (png is lossless and byte-deterministic)."""
    workers: int = 1
    """Worker processes."""
    overwrite: bool = False
    """Rewrite a finished output instead of refusing/skipping."""
    max_pixels: int = 64_000_000
    """Largest decoded image in pixels (width × height); bigger ones are skipped as `too-large` before
    decoding (a 12000² PNG of 165 KB cost 760 MB per worker, issue 17)."""
    max_caption_chars: int = 2000
    """Captions longer than this many characters are cut at a word boundary and counted as
    `caption-truncated` (training then cuts captions to `data.max_caption_tokens`)."""
    allow_outside_root: bool = False
    """Read images outside the input's root (absolute paths, `../`, symlinks leaving it); by default
    they are skipped and counted as `outside-root`."""

    def __post_init__(self):
        if not self.out:
            raise ValueError("out is required: pass --out DIR")
        if self.max_pixels < 1 or self.max_caption_chars < 1:
            raise ValueError("max_pixels and max_caption_chars must be >= 1")
        if self.num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {self.num_items}")
        if self.resolution < 8:
            raise ValueError(f"resolution must be >= 8 pixels, got {self.resolution}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        if not (
            0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1
        ):
            raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum to less than 1")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.interleaved and self.source != "shapes":
            raise ValueError("interleaved applies to --source shapes; a jsonl source gives documents with `parts`")
        if self.source != "shapes" and not self.input:
            raise ValueError(f"source '{self.source}' needs an input path: pass --input PATH (or --coco-root DIR)")


@dataclass(frozen=True)
class EncodeConfig:
    data: str = ""
    """Folder of shards made by `lmfusion prepare`, or shard URLs streamed with webdataset: pipe:CMD,
    http(s)://…/train-{00000..00099}.tar (join several with ::; needs resolution)."""
    out: str = ""
    """Output folder of the latent cache."""
    vae: str = ""
    """AutoencoderKL folder or hub id; empty means the shipped tiny VAE (`lmfusion_cli/assets/tiny-vae`)."""
    resolution: int | None = None
    """Image side in pixels fed to the VAE; None keeps the prepared shards' resolution."""
    batch_size: int = 32
    """Images per VAE call."""
    workers: int = 1
    """DataLoader worker processes decoding images while the VAE encodes (0 = decode in the main process)."""
    gpus: int = 1
    """Encoding processes; shards are split over them (one device each, or CPU cores when there is no GPU)."""
    dtype: Literal["fp16", "bf16", "fp32"] = "fp16"
    """Storage dtype of the latents (the VAE itself runs in fp32)."""
    store: Literal["mean-std", "sample"] = "mean-std"
    """Store the posterior mean and std (training draws a fresh sample) or one drawn sample."""
    flip: bool = False
    """Also store the horizontally flipped image's latents (captions are not flipped)."""
    seed: int = 0
    """Seed of the draws for store=sample (each item's noise depends only on (seed, key))."""
    overwrite: bool = False
    """Rewrite a finished cache instead of reusing it."""

    def __post_init__(self):
        if not self.data:
            raise ValueError("data is required: pass --data DIR (a folder made by lmfusion prepare) or shard URLs")
        if not self.out:
            raise ValueError("out is required: pass --out DIR")
        if self.resolution is not None and self.resolution < 8:
            raise ValueError(f"resolution must be >= 8 pixels, got {self.resolution}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.gpus < 1:
            raise ValueError(f"gpus must be >= 1, got {self.gpus}")
