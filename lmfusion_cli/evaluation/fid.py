"""FID with clean-fid ("clean" mode): the Inception network, features, reference statistics cached on disk.

The network is either
- clean-fid's own: `cleanfid_inception(folder)` is clean-fid's `InceptionV3W(folder, download=True)`, which
  loads `folder/inception-2015-12-05.pt` and downloads it there first when absent (clean-fid's default
  folder is /tmp); offline, a missing file is a `UserError` naming the file to place and where; or
- a local file given by the user, loaded by `load_inception`: the same TorchScript
  `inception-2015-12-05.pt`, or torchvision's `inception_v3` state dict (pool features, 2048-d).

Any `extractor(x) -> (B, D)` taking float (B, 3, 299, 299) images in [0, 255] works (tests pass a
tiny network); images are resized by clean-fid's "clean" resizer (PIL bicubic). Reference
statistics (mean, covariance) are saved as `.npz` keyed by the reference folder's file list and
the extractor id, so a rerun against the same references only extracts the generated images.

The Fréchet distance itself is `metrics.frechet_distance`."""

from __future__ import annotations

import logging
import urllib.error
import warnings
from collections.abc import Callable, Sequence
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
INCEPTION_FILE = "inception-2015-12-05.pt"
CLEANFID_DIR = "/tmp"
"""Where clean-fid's `build_feature_extractor("clean")` keeps the Inception file (its hard-coded default)."""


def cleanfid_inception(folder: str | Path = CLEANFID_DIR, device: str | torch.device = "cpu") -> tuple[Extractor, Path]:
    """clean-fid's own Inception (`InceptionV3W`, downloading `folder/inception-2015-12-05.pt` when absent).

    Returns (extractor taking (B, 3, 299, 299) in [0, 255], the weights file)."""
    from cleanfid.inception_torchscript import InceptionV3W

    folder = Path(folder)
    path = folder / INCEPTION_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # torch.jit.load's deprecation notice (clean-fid ships TorchScript)
            warnings.simplefilter("ignore", FutureWarning)
            network = InceptionV3W(str(folder), download=True, resize_inside=False).to(device).eval()
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        path.unlink(missing_ok=True)  # clean-fid opens the file before the first byte arrives
        raise UserError(
            f"FID needs {path} and it cannot be downloaded ({type(e).__name__}); place {INCEPTION_URL} "
            f"at {path} or pass a local copy with --inception FILE."
        ) from e
    except RuntimeError as e:  # a partial file from an interrupted download does not load
        raise UserError(
            f"{path} is not a loadable TorchScript Inception ({type(e).__name__}); delete it so that "
            f"clean-fid downloads it again, or place {INCEPTION_URL} there."
        ) from e

    def cleanfid_features(x: torch.Tensor) -> torch.Tensor:
        return network(x.to(device)).reshape(x.shape[0], -1)

    return cleanfid_features, path


def load_inception(weights: str | Path, device: str | torch.device = "cpu") -> Extractor:
    """A feature extractor from a local Inception weights file (TorchScript or torchvision state dict)."""
    path = Path(weights)
    if not path.is_file():
        raise UserError(
            f"The Inception weights file {path} does not exist; download {INCEPTION_URL} "
            f"(or torchvision's inception_v3 weights) and put it at {path}, or pass its path."
        )
    try:
        with (
            warnings.catch_warnings()
        ):  # the standard FID network ships as TorchScript; torch's deprecation notice is noise
            warnings.simplefilter("ignore", FutureWarning)
            scripted = torch.jit.load(str(path), map_location=device).eval()
    except RuntimeError:
        scripted = None
    if scripted is not None:
        # Issue 17: a TorchScript file is a program, not data; it is run as given, so say so once.
        log.warning(
            "%s is a TorchScript program and evaluate runs the code inside it: use only a file you trust "
            "(the official %s)",
            path,
            INCEPTION_URL,
        )
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
        raise UserError(
            f"{path} is neither a TorchScript Inception nor a torchvision inception_v3 state dict "
            f"({type(e).__name__}); download {INCEPTION_URL} and put it there."
        ) from e
    model = inception_v3(weights=None, aux_logits=True, init_weights=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise UserError(
            f"{path} lacks {len(missing)} inception_v3 weights (e.g. {missing[0]}); "
            f"download {INCEPTION_URL} and pass that file instead."
        )
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
def files_features(
    files: Sequence[Path],
    extractor: Extractor,
    batch_size: int = 32,
    description: str = "FID features",
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """(N, D) float64 features of image files, resized to 299² by clean-fid's "clean" resizer (after
    `transform`, an (H, W, 3) uint8 → uint8 array function, when given)."""
    from cleanfid.fid import get_files_features

    from lmfusion_cli.common.progress import progress_enabled

    if len(files) < 2:
        raise UserError(f"FID needs at least 2 images, found {len(files)}; generate or point at more images.")
    feats = get_files_features(
        [str(f) for f in files],
        model=extractor,
        num_workers=0,
        batch_size=batch_size,
        device=torch.device("cpu"),
        mode="clean",
        description=description,
        verbose=progress_enabled(),
        custom_image_tranform=transform,
    )
    return feats.astype(np.float64)


def centre_crop(resolution: int) -> Callable[[np.ndarray], np.ndarray]:
    """(H, W, 3) uint8 → the centred square resized to `resolution`² (PIL bicubic): real images as generated."""
    from PIL import Image, ImageOps

    def fit(image: np.ndarray) -> np.ndarray:
        square = ImageOps.fit(Image.fromarray(image), (resolution, resolution), Image.Resampling.BICUBIC)
        return np.asarray(square, dtype=np.uint8)

    return fit


def image_set_stats(
    files: Sequence[Path],
    resolution: int,
    extractor: Extractor,
    extractor_id: str,
    cache_dir: str | Path | None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """FID reference statistics of real images, centre-cropped and resized to the generation resolution.

    Cached in `cache_dir` under a key of (image list hash, resolution, extractor id, clean mode): the same
    images at the same resolution through the same network reuse it, anything else computes anew."""
    names = sorted(Path(f).name for f in files)
    key = sha256_json(
        {"images": sha256_json(names), "resolution": resolution, "extractor": extractor_id, "mode": "clean"}
    )[:16]
    return _cached_stats(
        cache_dir,
        key,
        len(files),
        lambda: files_features(list(files), extractor, batch_size, "FID reference features", centre_crop(resolution)),
    )


def fid_against(generated: str | Path, reference: dict[str, Any], extractor: Extractor, batch_size: int = 32) -> float:
    """FID of a folder of generated images against reference statistics (`image_set_stats`)."""
    mu, sigma = gaussian_stats(files_features(list_images(generated), extractor, batch_size, "FID generated features"))
    return frechet_distance(mu, sigma, reference["mu"], reference["sigma"])


def reference_stats(
    folder: str | Path, extractor: Extractor, extractor_id: str, cache_dir: str | Path | None, batch_size: int = 32
) -> dict[str, Any]:
    """Mean and covariance of a reference folder's features, read from / written to `cache_dir`.

    The cache file name hashes the folder's file names and sizes plus `extractor_id` (name the
    weights file there: a different network must not reuse the statistics)."""
    files = list_images(folder)
    key = sha256_json(
        {
            "files": [[str(f.relative_to(folder)), f.stat().st_size] for f in files],
            "extractor": extractor_id,
            "mode": "clean",
        }
    )[:16]
    return _cached_stats(
        cache_dir, key, len(files), lambda: files_features(files, extractor, batch_size, "FID reference features")
    )


def _cached_stats(
    cache_dir: str | Path | None, key: str, count: int, features: Callable[[], np.ndarray]
) -> dict[str, Any]:
    """Gaussian statistics of `count` reference images kept as `cache_dir/fid-ref-{key}.npz`: read when that
    file exists, else computed from `features()` and written (atomically)."""
    path = Path(cache_dir) / f"fid-ref-{key}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        with np.load(path) as saved:
            log.info("FID reference statistics reused from %s", path)
            return {
                "mu": saved["mu"],
                "sigma": saved["sigma"],
                "count": int(saved["count"]),
                "path": str(path),
                "cached": True,
                "key": key,
            }
    mu, sigma = gaussian_stats(features())
    if path is not None:
        with atomic_file(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, mu=mu, sigma=sigma, count=count)
    return {"mu": mu, "sigma": sigma, "count": count, "path": str(path) if path else None, "cached": False, "key": key}


def fid_from_feats(feats1: Any, feats2: Any) -> float:
    """FID of two (N, D) feature sets (as clean-fid's `fid_from_feats`)."""
    return frechet_distance(*gaussian_stats(feats1), *gaussian_stats(feats2))


def fid_from_folders(
    generated: str | Path,
    reference: str | Path,
    extractor: Extractor,
    extractor_id: str,
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """FID between a folder of generated images and a reference folder (its statistics cached).

    Returns {"fid", "num_generated", "num_reference", "reference_stats", "reference_cached"}."""
    ref = reference_stats(reference, extractor, extractor_id, cache_dir, batch_size)
    gen_files = list_images(generated)
    mu, sigma = gaussian_stats(files_features(gen_files, extractor, batch_size, "FID generated features"))
    return {
        "fid": frechet_distance(mu, sigma, ref["mu"], ref["sigma"]),
        "num_generated": len(gen_files),
        "num_reference": ref["count"],
        "reference_stats": ref["path"],
        "reference_cached": ref["cached"],
    }
