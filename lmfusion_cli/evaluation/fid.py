"""FID with clean-fid, offline: Inception weights from a local file, reference statistics cached on disk.

clean-fid's default extractor downloads `inception-2015-12-05.pt` to a temp folder; here the weights
are always a local file given by the user, loaded by `load_inception`:
- clean-fid's / StyleGAN's TorchScript `inception-2015-12-05.pt` (the standard FID network), or
- torchvision's `inception_v3` state dict (`inception_v3_google-*.pth`; pool features, 2048-d).
A missing file is a `UserError` naming the file to fetch and where to put it.

Any `extractor(x) -> (B, D)` taking float (B, 3, 299, 299) images in [0, 255] works (tests pass a
tiny network); images are resized by clean-fid's "clean" resizer (PIL bicubic). Reference
statistics (mean, covariance) are saved as `.npz` keyed by the reference folder's file list and
the extractor id, so a rerun against the same references only extracts the generated images.

The Fréchet distance itself is `metrics.frechet_distance`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmfusion_cli.common.atomic import atomic_file
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.hashing import sha256_json
from lmfusion_cli.evaluation.metrics import frechet_distance, gaussian_stats

log = logging.getLogger(__name__)

Extractor = Callable[[torch.Tensor], torch.Tensor]
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "bmp", "webp", "tif", "tiff")


def load_inception(weights: str | Path, device: str | torch.device = "cpu") -> Extractor:
    """A feature extractor from a local Inception weights file (TorchScript or torchvision state dict)."""
    path = Path(weights)
    if not path.is_file():
        raise UserError(f"The Inception weights file {path} does not exist; download {INCEPTION_URL} "
                        f"(or torchvision's inception_v3 weights) and put it at {path}, or pass its path.")
    try:
        scripted = torch.jit.load(str(path), map_location=device).eval()
    except RuntimeError:
        scripted = None
    if scripted is not None:
        # Issue 17: a TorchScript file is a program, not data; it is run as given, so say so once.
        log.warning("%s is a TorchScript program and evaluate runs the code inside it: use only a file you trust "
                    "(the official %s)", path, INCEPTION_URL)
        layers = scripted.layers if hasattr(scripted, "layers") else scripted

        def torchscript_features(x: torch.Tensor) -> torch.Tensor:  # as cleanfid's InceptionV3W, no resize
            return layers.forward((x.to(device) - 128) / 128).reshape(x.shape[0], -1)

        return torchscript_features
    return _torchvision_inception(path, device)


def _torchvision_inception(path: Path, device: str | torch.device) -> Extractor:
    from torchvision.models import inception_v3

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise UserError(f"{path} is neither a TorchScript Inception nor a torchvision inception_v3 state dict "
                        f"({type(e).__name__}); download {INCEPTION_URL} and put it there.") from e
    model = inception_v3(weights=None, aux_logits=True, init_weights=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise UserError(f"{path} lacks {len(missing)} inception_v3 weights (e.g. {missing[0]}); "
                        f"download {INCEPTION_URL} and pass that file instead.")
    model.fc = torch.nn.Identity()
    model = model.eval().to(device)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

    def torchvision_features(x: torch.Tensor) -> torch.Tensor:
        return model((x.to(device) / 255.0 - mean) / std)

    return torchvision_features


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"The image folder {folder} does not exist; check the path.")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS)


@torch.no_grad()
def files_features(files: list[Path], extractor: Extractor, batch_size: int = 32,
                   description: str = "FID features") -> np.ndarray:
    """(N, D) float64 features of image files, resized to 299² by clean-fid's "clean" resizer."""
    from cleanfid.fid import get_files_features

    from lmfusion_cli.common.progress import progress_enabled

    if len(files) < 2:
        raise UserError(f"FID needs at least 2 images, found {len(files)}; generate or point at more images.")
    feats = get_files_features([str(f) for f in files], model=extractor, num_workers=0, batch_size=batch_size,
                               device=torch.device("cpu"), mode="clean", description=description,
                               verbose=progress_enabled())
    return feats.astype(np.float64)


def reference_stats(folder: str | Path, extractor: Extractor, extractor_id: str, cache_dir: str | Path | None,
                    batch_size: int = 32) -> dict[str, Any]:
    """Mean and covariance of a reference folder's features, read from / written to `cache_dir`.

    The cache file name hashes the folder's file names and sizes plus `extractor_id` (name the
    weights file there: a different network must not reuse the statistics)."""
    files = list_images(folder)
    key = sha256_json({"files": [[str(f.relative_to(folder)), f.stat().st_size] for f in files],
                       "extractor": extractor_id, "mode": "clean"})[:16]
    path = Path(cache_dir) / f"fid-ref-{key}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        with np.load(path) as saved:
            log.info("FID reference statistics reused from %s", path)
            return {"mu": saved["mu"], "sigma": saved["sigma"], "count": int(saved["count"]), "path": str(path),
                    "cached": True}
    mu, sigma = gaussian_stats(files_features(files, extractor, batch_size, "FID reference features"))
    if path is not None:
        with atomic_file(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, mu=mu, sigma=sigma, count=len(files))
    return {"mu": mu, "sigma": sigma, "count": len(files), "path": str(path) if path else None, "cached": False}


def fid_from_feats(feats1: Any, feats2: Any) -> float:
    """FID of two (N, D) feature sets (as clean-fid's `fid_from_feats`)."""
    return frechet_distance(*gaussian_stats(feats1), *gaussian_stats(feats2))


def fid_from_folders(generated: str | Path, reference: str | Path, extractor: Extractor, extractor_id: str,
                     cache_dir: str | Path | None = None, batch_size: int = 32) -> dict[str, Any]:
    """FID between a folder of generated images and a reference folder (its statistics cached).

    Returns {"fid", "num_generated", "num_reference", "reference_stats", "reference_cached"}."""
    ref = reference_stats(reference, extractor, extractor_id, cache_dir, batch_size)
    gen_files = list_images(generated)
    mu, sigma = gaussian_stats(files_features(gen_files, extractor, batch_size, "FID generated features"))
    return {"fid": frechet_distance(mu, sigma, ref["mu"], ref["sigma"]), "num_generated": len(gen_files),
            "num_reference": ref["count"], "reference_stats": ref["path"], "reference_cached": ref["cached"]}
