"""Image bytes → RGB pixels at the target resolution, and back to deterministic file bytes.

Owns decoding (with the reason a bad image is bad), the resize-shorter-side + centre-crop rule every
source goes through, and the encoding of stored images (PNG lossless, JPEG quality 95, no metadata,
so the same pixels always give the same bytes). It does not read files or know about sources."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
"""File extensions accepted as images by the folder-like sources and in shards."""


class BadImage(Exception):
    """An image that cannot be used; `reason` is the short counted reason (e.g. `corrupt-image`)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


DEFAULT_MAX_PIXELS = 64_000_000
"""Decoded-pixel cap (width × height) of `decode_image` unless the caller gives another."""


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode image bytes fully into an RGB PIL image, or raise `BadImage` with the reason.

    Reasons: `empty-image` (0 bytes), `too-large` (more than `max_pixels`, checked from the header
    before any pixel is decoded), `truncated-image` (the data stops early: PIL refuses it, since
    `ImageFile.LOAD_TRUNCATED_IMAGES` stays False), `corrupt-image` (anything else PIL cannot read).
    16-bit grayscale is scaled by its real bit depth (65535 → 255), not clipped."""
    if not data:
        raise BadImage("empty-image", "0 bytes")
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if width * height > max_pixels:
            raise BadImage("too-large", f"{width}x{height} pixels is over the cap of {max_pixels}")
        img.load()  # decode now: truncation and corruption show up here, not later in a worker
    except BadImage:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for bad data
        text = str(e)
        low = text.lower()
        reason = "truncated-image" if "truncated" in low or "broken data stream" in low else "corrupt-image"
        raise BadImage(reason, f"{type(e).__name__}: {text}") from e
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode == "I":
        return _wide_gray_to_rgb(img)
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparency onto white, the common convention (img2dataset, torchvision docs).
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _wide_gray_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit (or 32-bit integer) grayscale → 8-bit RGB by the real bit depth. PIL's `convert("L")`
    clips at 255, which turned mid-gray 32768 into white (issue 17)."""
    values = np.asarray(img, dtype=np.float64)
    bits = 16 if img.mode.startswith("I;16") or values.max(initial=0) <= 65535 else 32
    gray = np.clip(np.rint(values * (255.0 / (2**bits - 1))), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def resize_center_crop(img: Image.Image, resolution: int) -> Image.Image:
    """Resize so the shorter side is `resolution` (bicubic, antialiased), then centre-crop a square.

    An image already `resolution`² is returned unchanged (bit-exact: no resampling)."""
    w, h = img.size
    if (w, h) == (resolution, resolution):
        return img
    scale = resolution / min(w, h)
    new_w, new_h = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=None)
    left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def encode_image(img: Image.Image, fmt: str) -> bytes:
    """Deterministic file bytes of `img`: `png` (lossless, compress level 6) or `jpg` (quality 95)."""
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=6)
    elif fmt == "jpg":
        img.save(buf, format="JPEG", quality=95, subsampling=0)
    else:
        raise ValueError(f"unknown image format {fmt!r}; use png or jpg")
    return buf.getvalue()


def to_unit_tensor_array(img: Image.Image) -> np.ndarray:
    """RGB image (H, W) → float32 array (3, H, W) in [-1, 1], the range diffusers VAEs expect."""
    arr = np.asarray(img, dtype=np.float32)  # (H, W, 3) in [0, 255]
    return (arr.transpose(2, 0, 1) / 127.5) - 1.0
