"""Image decoding and encoding shared by ``prepare`` and ``enhance``.

Every input becomes an 8-bit RGB array (H, W, 3) or an :class:`ImageRejected` with a short,
machine-friendly reason:

``empty-file``, ``not-an-image``, ``truncated``, ``corrupt``, ``decompression-bomb``,
``too-small``, ``animated``; prepare adds ``unreadable`` (the storage refused the bytes),
``too-large`` (file bigger than its byte limit), ``unsafe-key`` (a key ``safe_join`` refuses)
and ``duplicate``.

Normalisation rules:

* EXIF orientation is applied (``ImageOps.exif_transpose``), so sizes are as displayed.
* Transparency (RGBA, LA, palette with a transparent index) is composited on **black**: black
  adds no light, so a transparent area never brightens a low-light image.
* Grayscale is replicated to three channels; CMYK, YCbCr and the rest go through Pillow's RGB
  conversion; 16-bit samples are scaled by 1/257 (65535 -> 255), not clipped.
* Animated GIF/WebP/PNG are **rejected** (``animated``) unless ``allow_animated``: a training
  set should not silently learn from one frame of a clip.
* The pixel count from the header is checked against ``max_pixels`` before any pixel is decoded.
* Big JPEGs are reduced in the DCT domain first (Pillow's draft mode, a power-of-two scale that
  stays at least as large as the target), then resampled with LANCZOS to the exact size.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipelines.io.formats import DEFAULT_MAX_PIXELS

REASONS = (
    "empty-file",
    "not-an-image",
    "truncated",
    "corrupt",
    "decompression-bomb",
    "too-small",
    "animated",
)
_ROTATING_ORIENTATIONS = {5, 6, 7, 8}


class ImageRejected(Exception):
    """A file that is not usable as an image; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodedImage:
    """Decoded RGB pixels plus what is needed to write a faithful result back."""

    array: np.ndarray  # (H, W, 3) uint8, orientation applied
    original_mode: str
    format: str | None
    original_size: tuple[int, int]  # (width, height) as displayed, before any resize
    icc_profile: bytes | None = None
    exif: bytes | None = None


@dataclass(frozen=True)
class ResizePolicy:
    """How prepare sizes training images (paper scale: 600x400 photos, 320x320 crops).

    The image is fitted into ``max_long`` x ``max_short`` (landscape or portrait, whichever
    matches it), keeping its aspect ratio, but never shrunk below ``min_side`` on its short side
    (the training crop). An image whose short side is already below ``min_side`` is rejected
    (``too-small``) or, with ``small="upscale"``, enlarged just enough for the crop."""

    max_long: int = 600
    max_short: int = 400
    min_side: int = 320
    small: str = "reject"

    def __post_init__(self):
        if self.small not in ("reject", "upscale"):
            raise ValueError("small must be 'reject' or 'upscale'")
        if not 0 < self.min_side <= self.max_short <= self.max_long:
            raise ValueError("need 0 < min_side <= max_short <= max_long")

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """Output (width, height) for an image displayed as ``width x height``."""
        long_side, short_side = max(width, height), min(width, height)
        fit = min(1.0, self.max_long / long_side, self.max_short / short_side)
        factor = max(fit, self.min_side / short_side)
        if factor > 1.0 and self.small == "reject":
            raise ImageRejected("too-small", f"{width}x{height}, short side < {self.min_side}")
        if factor == 1.0:
            return width, height
        new_short = max(self.min_side, round(short_side * factor))
        new_long = max(new_short, round(long_side * factor))
        return (new_long, new_short) if width >= height else (new_short, new_long)


_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF8", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _failure_reason(error: Exception) -> str:
    """``truncated`` when Pillow ran out of bytes (while opening or decoding), else ``corrupt``."""
    return "truncated" if "truncat" in str(error).lower() else "corrupt"


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageRejected("empty-file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise ImageRejected("decompression-bomb", str(error)) from None
    except UnidentifiedImageError:
        known = next((name for magic, name in _SIGNATURES if data.startswith(magic)), None)
        if known:
            # A PNG cut after its header or with a damaged header chunk is a broken image,
            # not a text file: say so.
            raise ImageRejected(
                "corrupt", f"starts like {known} but has no readable header"
            ) from None
        raise ImageRejected("not-an-image") from None
    except Exception as error:  # Pillow plugins raise many types on garbage headers
        raise ImageRejected(_failure_reason(error), f"{type(error).__name__}: {error}") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageRejected("corrupt", f"size {width}x{height}")
    if width * height > max_pixels:
        raise ImageRejected("decompression-bomb", f"{width}x{height} > {max_pixels} pixels")
    return image


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:
        return 1


def _to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        samples = np.asarray(image, dtype=np.float64)
        if mode == "F" and samples.max(initial=0) <= 1.0:
            samples = samples * 255.0
        elif mode.startswith("I;16") or samples.max(initial=0) > 255:
            samples = samples / 257.0
        gray = np.clip(np.round(samples), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
        composited = (rgba[..., :3] * rgba[..., 3:4] + 127) // 255
        return composited.astype(np.uint8)
    if mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | Callable[[int, int], tuple[int, int]] | None = None,
    allow_animated: bool = False,
) -> DecodedImage:
    """Decode ``data`` to RGB uint8 with orientation applied, or raise :class:`ImageRejected`.

    ``draft_size`` is the size (as displayed) the caller will resize to, or a function of the
    displayed (width, height) giving it; JPEGs are then decoded at the smallest DCT scale that
    is still at least that large."""
    image = _open(data, max_pixels)
    if getattr(image, "is_animated", False) and getattr(image, "n_frames", 1) > 1:
        if not allow_animated:
            raise ImageRejected("animated", f"{image.n_frames} frames")
        image.seek(0)
    source_format = image.format
    orientation = _orientation(image)
    rotated = orientation in _ROTATING_ORIENTATIONS
    width, height = image.size
    displayed = (height, width) if rotated else (width, height)
    if draft_size is not None and image.format == "JPEG":
        target = draft_size(*displayed) if callable(draft_size) else draft_size
        stored_target = (target[1], target[0]) if rotated else tuple(target)
        image.draft(image.mode if image.mode in ("L", "RGB") else None, stored_target)
    try:
        image.load()
    except Exception as error:
        raise ImageRejected(_failure_reason(error), f"{type(error).__name__}: {error}") from None
    icc_profile = image.info.get("icc_profile")
    exif = image.info.get("exif")
    if orientation != 1:
        try:
            image = ImageOps.exif_transpose(image)
        except Exception as error:
            raise ImageRejected("corrupt", f"EXIF orientation: {error}") from None
    try:
        array = _to_rgb(image)
    except Exception as error:
        raise ImageRejected("corrupt", f"{type(error).__name__}: {error}") from None
    return DecodedImage(
        array=np.ascontiguousarray(array),
        original_mode=image.mode,
        format=source_format,
        original_size=displayed,
        icc_profile=icc_profile,
        exif=exif,
    )


def resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """LANCZOS resample of an RGB uint8 array to ``size`` = (width, height)."""
    if (array.shape[1], array.shape[0]) == tuple(size):
        return array
    resized = Image.fromarray(array).resize(tuple(size), Image.Resampling.LANCZOS)
    return np.asarray(resized)


def decode_for_training(
    data: bytes, policy: ResizePolicy, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, DecodedImage]:
    """Decode and size one training image by ``policy``: (resized RGB array, decoded image)."""
    decoded = decode_image(data, max_pixels=max_pixels, draft_size=policy.target_size)
    # The policy is applied to the size as displayed before draft mode shrank the pixels.
    target = policy.target_size(*decoded.original_size)
    return resize(decoded.array, target), decoded


def encode_png(array: np.ndarray, compress_level: int = 1) -> bytes:
    """Lossless PNG of an RGB uint8 array (level 1: fast; PNG is lossless at any level)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """Pixels of a PNG written by :func:`encode_png` as RGB uint8."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def encode_like(
    array: np.ndarray,
    fmt: str | None,
    *,
    quality: int = 95,
    icc_profile: bytes | None = None,
    exif: bytes | None = None,
) -> bytes:
    """Encode RGB uint8 in the source's format (Pillow name: JPEG, PNG, WEBP, TIFF, BMP; other or
    unknown formats become PNG), keeping the ICC profile and EXIF where the format can hold them.
    The EXIF orientation tag is reset since the pixels are already upright."""
    fmt = (fmt or "PNG").upper()
    fmt = fmt if fmt in ("JPEG", "PNG", "WEBP", "TIFF", "BMP") else "PNG"
    options: dict = {}
    if icc_profile and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        options["icc_profile"] = icc_profile
    if exif and fmt in ("JPEG", "PNG", "WEBP"):
        parsed = Image.Exif()
        parsed.load(exif)
        parsed[0x0112] = 1
        options["exif"] = parsed.tobytes()
    if fmt == "JPEG":
        options.update(quality=quality, subsampling=0 if quality >= 90 else 2)
    elif fmt == "WEBP":
        options.update(quality=quality)
    elif fmt == "PNG":
        options.update(compress_level=1)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()
