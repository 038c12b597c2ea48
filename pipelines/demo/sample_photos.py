"""Real photos that ship inside installed wheels, and a tiny unpaired low/normal set built from them.

Sources (no network): scikit-image ``skimage.data`` (coffee, astronaut, chelsea, rocket,
stereo_motorcycle, hubble_deep_field), scikit-learn ``load_sample_images`` (china, flower) and
matplotlib's ``grace_hopper.jpg`` (a portrait). Low-light copies are made the way the issue
describes: gamma 2.2, then x0.25.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.io import storage


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        loaded = getattr(data, name)()
        return loaded[0] if isinstance(loaded, tuple) else loaded

    return load


def _sklearn(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)

    return load


def _grace_hopper() -> np.ndarray:
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        return np.asarray(Image.open(handle).convert("RGB"))


PHOTO_SOURCES: dict[str, Callable[[], np.ndarray]] = {
    "coffee": _skimage("coffee"),
    "astronaut": _skimage("astronaut"),
    "chelsea": _skimage("chelsea"),
    "rocket": _skimage("rocket"),
    "motorcycle": _skimage("stereo_motorcycle"),
    "hubble": _skimage("hubble_deep_field"),
    "china": _sklearn("china.jpg"),
    "flower": _sklearn("flower.jpg"),
    "grace_hopper": _grace_hopper,
}


@functools.cache
def wheel_photo(name: str) -> np.ndarray:
    """One shipped photo as an RGB uint8 array (H, W, 3)."""
    array = np.asarray(PHOTO_SOURCES[name]())
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return np.ascontiguousarray(array[..., :3].astype(np.uint8))


def darken(rgb: np.ndarray, gamma: float = 2.2, scale: float = 0.25) -> np.ndarray:
    """A synthetic low-light copy: ``(x / 255) ** gamma * scale``, back to uint8."""
    normalised = rgb.astype(np.float32) / 255.0
    return np.clip(np.round(normalised**gamma * scale * 255.0), 0, 255).astype(np.uint8)


def fit_within(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize (up or down) so the photo exactly fits a width x height box, aspect kept."""
    image = Image.fromarray(rgb)
    factor = min(width / image.width, height / image.height)
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return np.asarray(image.resize(size, Image.Resampling.LANCZOS))


def demo_originals(longest_side: int = 600) -> list[tuple[str, np.ndarray]]:
    """The undarkened originals of the demo's low-light photos, fitted as the demo fits them."""
    photos = []
    for name, _ in LOW_LAYOUT:
        rgb = wheel_photo(name)
        box = (longest_side, longest_side * 2 // 3)
        photos.append(
            (name, fit_within(rgb, *(box if rgb.shape[1] >= rgb.shape[0] else box[::-1])))
        )
    return photos


def encode(rgb: np.ndarray, fmt: str, **options) -> bytes:
    """Encode an RGB array with Pillow (``fmt`` is a Pillow format name: JPEG, PNG, ...)."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=fmt, **options)
    return buffer.getvalue()


@dataclass(frozen=True)
class PhotoFile:
    key: str
    photo: str
    width: int
    height: int


@dataclass(frozen=True)
class PhotoDataset:
    """A tiny unpaired set: ``root/low`` (darkened) and ``root/normal``, nested, jpg and png."""

    root: Path
    low: tuple[PhotoFile, ...]
    normal: tuple[PhotoFile, ...]

    @property
    def low_dir(self) -> Path:
        return self.root / "low"

    @property
    def normal_dir(self) -> Path:
        return self.root / "normal"


# (photo, relative key) per domain: nested folders, mixed formats and case, one portrait.
LOW_LAYOUT = (
    ("coffee", "kitchen/coffee.jpg"),
    ("astronaut", "portraits/space/astronaut.png"),
    ("rocket", "rocket.JPG"),
    ("china", "travel/china.jpeg"),
    ("grace_hopper", "portraits/grace hopper.png"),
)
NORMAL_LAYOUT = (
    ("chelsea", "animals/chelsea.png"),
    ("motorcycle", "street/motorcycle.jpg"),
    ("hubble", "sky/deep/hubble.jpg"),
    ("flower", "flower.png"),
)


def _write_domain(
    folder: Path, layout, transform: Callable[[np.ndarray], np.ndarray], longest_side: int
) -> tuple[PhotoFile, ...]:
    files = []
    for photo, key in layout:
        rgb = wheel_photo(photo)
        box = (longest_side, longest_side * 2 // 3)
        if rgb.shape[0] > rgb.shape[1]:
            box = box[::-1]
        rgb = transform(fit_within(rgb, *box))
        path = folder / key
        path.parent.mkdir(parents=True, exist_ok=True)
        is_jpeg = path.suffix.lower() in {".jpg", ".jpeg"}
        path.write_bytes(encode(rgb, "JPEG", quality=95) if is_jpeg else encode(rgb, "PNG"))
        files.append(PhotoFile(key=key, photo=photo, width=rgb.shape[1], height=rgb.shape[0]))
    return tuple(files)


def build_photo_dataset(root: Path, longest_side: int = 600) -> PhotoDataset:
    """Write the unpaired set under ``root``: 5 low-light files and 4 normal-light files."""
    root = Path(root)
    low = _write_domain(root / "low", LOW_LAYOUT, darken, longest_side)
    normal = _write_domain(root / "normal", NORMAL_LAYOUT, lambda rgb: rgb, longest_side)
    return PhotoDataset(root=root, low=low, normal=normal)


def upload_folder(local_dir: Path, filesystem, destination: str) -> list[str]:
    """Copy every file under ``local_dir`` to ``destination`` (``bucket/prefix``) on a pyarrow
    filesystem, keeping relative keys; returns the keys uploaded."""
    local_dir = Path(local_dir)
    keys = []
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        key = path.relative_to(local_dir).as_posix()
        target = f"{destination.rstrip('/')}/{key}"
        storage.write_bytes(storage.Location(filesystem, target, target), path.read_bytes())
        keys.append(key)
    return keys
