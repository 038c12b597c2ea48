"""Build the starter model's unpaired training corpus offline, from Debian wallpaper packages.

``python -m pipelines.starter.corpus --out starter-corpus`` downloads the packages named in
``corpus_photos.tsv`` with ``apt-get download`` (a package registry, no other network), unpacks
them with ``dpkg -x``, and writes:

* ``normal/``: normal-light photographs (the reviewed ``normal`` rows plus three wheel photos);
* ``low/``: the ``real-low`` photographs as they are, and the ``synthetic-low`` photographs
  darkened by :func:`degrade_low_light` (randomised, seeded; no source photo is in both domains);
* ``holdout/``: ten photographs never used in training, for evaluation;
* ``README.md`` and ``corpus.json``: sources, licences, counts and every degradation's parameters.

Each wallpaper gives five views (the whole frame and four corner windows of 60 % of each side),
fitted into 600x400 as the paper's images are, so each photograph yields several training images
at the scale the model runs on. Nothing here runs at training or inference time.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.demo.sample_photos import encode, wheel_photo

LIST_FILE = Path(__file__).with_name("corpus_photos.tsv")
ROLES = ("normal", "synthetic-low", "real-low", "holdout")
# Wheel photos that the demo does not darken for its evaluation (its low set is coffee,
# astronaut, rocket, china and grace_hopper); hubble is left out as a night-sky image.
WHEEL_NORMAL = ("chelsea", "motorcycle", "flower")
VIEW_BOX = (600, 400)
VIEW_FRACTION = 0.6


@dataclass(frozen=True)
class CorpusPhoto:
    package: str
    path: str
    name: str
    role: str
    licence: str


def read_photo_list(path: Path = LIST_FILE) -> list[CorpusPhoto]:
    """The reviewed list; raises ValueError on an unknown role or a name listed twice."""
    photos = []
    with open(path, encoding="utf-8") as handle:
        rows = csv.reader((line for line in handle if not line.startswith("#")), delimiter="\t")
        for row in rows:
            if row:
                photos.append(CorpusPhoto(*row))
    names = [photo.name for photo in photos]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: a photo name is listed twice")
    bad = sorted({photo.role for photo in photos} - set(ROLES))
    if bad:
        raise ValueError(f"{path}: unknown roles {bad}")
    return photos


@dataclass(frozen=True)
class Degradation:
    """Parameters of one synthetic low-light image (linear light is sRGB decoded)."""

    exposure: float
    gamma: float
    gains: tuple[float, float, float]
    shot_noise: float
    read_noise: float
    jpeg_quality: int


EXPOSURE_RANGE = (1 / 64, 1 / 4)


def sample_degradation(
    rng: np.random.Generator, exposure_range: tuple[float, float] = EXPOSURE_RANGE
) -> Degradation:
    """A random camera-like under-exposure, deliberately unlike the demo's ``x**2.2 * 0.25``.

    Exposure is drawn log-uniformly from ``exposure_range`` (default 1/64 to 1/4 of the light,
    2 to 6 stops under; 1/2 as the upper end adds photos that are only a little dark),
    then a tone curve ``display ** gamma`` with gamma in [0.9, 1.8] (from a flat camera curve
    to crushed shadows, as phone JPEGs of night scenes have), a slight white-balance cast,
    Poisson-Gaussian sensor noise (shot noise variance proportional to the signal, plus read
    noise) and JPEG compression.
    """
    return Degradation(
        exposure=float(np.exp(rng.uniform(*np.log(exposure_range)))),
        gamma=float(rng.uniform(0.9, 1.8)),
        gains=tuple(float(g) for g in rng.uniform(0.88, 1.12, size=3)),
        shot_noise=float(rng.uniform(2e-4, 3e-3)),
        read_noise=float(rng.uniform(5e-4, 4e-3)),
        jpeg_quality=int(rng.integers(70, 96)),
    )


def srgb_to_linear(values: np.ndarray) -> np.ndarray:
    return np.where(values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(values: np.ndarray) -> np.ndarray:
    values = np.clip(values, 0.0, 1.0)
    return np.where(values <= 0.0031308, values * 12.92, 1.055 * values ** (1 / 2.4) - 0.055)


def degrade_low_light(rgb: np.ndarray, degradation: Degradation, rng: np.random.Generator) -> bytes:
    """Darken an RGB uint8 photo as an under-exposed camera would; returns JPEG bytes."""
    linear = srgb_to_linear(rgb.astype(np.float64) / 255.0)
    linear = linear * degradation.exposure * np.asarray(degradation.gains)
    variance = degradation.shot_noise * linear + degradation.read_noise**2
    linear = linear + rng.normal(size=linear.shape) * np.sqrt(variance)
    display = linear_to_srgb(linear) ** degradation.gamma
    pixels = np.clip(np.round(display * 255.0), 0, 255).astype(np.uint8)
    return encode(pixels, "JPEG", quality=degradation.jpeg_quality)


def desaturate(rgb: np.ndarray, saturation: float) -> np.ndarray:
    """Scale each pixel's distance from its Rec. 601 luma by ``saturation`` (1: unchanged)."""
    if saturation == 1.0:
        return rgb
    values = rgb.astype(np.float64)
    luma = values @ np.array([0.299, 0.587, 0.114])
    mixed = luma[..., None] + saturation * (values - luma[..., None])
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def views(rgb: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The whole frame and four corner windows, each fitted into 600x400 (400x600 portrait)."""
    height, width = rgb.shape[:2]
    crop_h, crop_w = round(height * VIEW_FRACTION), round(width * VIEW_FRACTION)
    windows = {
        "full": rgb,
        "tl": rgb[:crop_h, :crop_w],
        "tr": rgb[:crop_h, width - crop_w :],
        "bl": rgb[height - crop_h :, :crop_w],
        "br": rgb[height - crop_h :, width - crop_w :],
    }
    return [(name, _fit(window)) for name, window in windows.items()]


def _fit(rgb: np.ndarray) -> np.ndarray:
    image = Image.fromarray(np.ascontiguousarray(rgb))
    box = VIEW_BOX if image.width >= image.height else VIEW_BOX[::-1]
    image.thumbnail(box, Image.Resampling.LANCZOS)
    return np.asarray(image)


def unpack_packages(packages: list[str], cache: Path) -> Path:
    """``apt-get download`` + ``dpkg -x`` each package once into ``cache``; returns the root."""
    debs, root = cache / "debs", cache / "root"
    debs.mkdir(parents=True, exist_ok=True)
    for package in sorted(set(packages)):
        if not list(debs.glob(f"{package}_*.deb")):
            subprocess.run(["apt-get", "download", package], cwd=debs, check=True)
        marker = root / ".unpacked" / package
        if not marker.exists():
            (deb,) = debs.glob(f"{package}_*.deb")
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
    return root


def _load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def build_corpus(
    out: Path,
    cache: Path,
    seed: int = 0,
    exposure_range: tuple[float, float] = EXPOSURE_RANGE,
    normal_saturation: float = 1.0,
) -> dict:
    """Write the corpus under ``out`` (replacing it); returns the record also saved as JSON.

    ``exposure_range`` bounds the synthetic low-light exposures; ``normal_saturation`` scales
    the normal-light photos' saturation (wallpapers are edited to be vivid, and a GAN learns
    its target domain's look). The held-out photos are never changed.
    """
    photos = read_photo_list()
    root = unpack_packages([photo.package for photo in photos], cache)
    if out.exists():
        shutil.rmtree(out)
    rng = np.random.default_rng(seed)
    files: list[dict] = []
    for photo in photos:
        rgb = _load_rgb(root / photo.path)
        files.extend(_write_photo(out, photo, rgb, rng, exposure_range, normal_saturation))
    files.extend(_write_wheel_photos(out, normal_saturation))
    record = {
        "seed": seed,
        "list": LIST_FILE.name,
        "exposure_range": list(exposure_range),
        "normal_saturation": normal_saturation,
        "files": files,
    }
    (out / "corpus.json").write_text(json.dumps(record, indent=2))
    (out / "README.md").write_text(_readme(photos, files))
    return record


def _write_photo(
    out: Path,
    photo: CorpusPhoto,
    rgb: np.ndarray,
    rng: np.random.Generator,
    exposure_range: tuple[float, float],
    normal_saturation: float,
) -> list[dict]:
    """Write one listed photo's files for its role (a held-out photo whole, any other one as
    its views); returns their records."""
    source = {"name": photo.name, "package": photo.package, "licence": photo.licence}
    if photo.role == "holdout":
        _write(out / "holdout" / f"{photo.name}.png", encode(_fit(rgb), "PNG"))
        return [{**source, "file": f"holdout/{photo.name}.png", "role": photo.role}]
    files: list[dict] = []
    for view_name, view in views(rgb):
        key = f"{photo.name}_{view_name}.jpg"
        record = {**source, "role": photo.role, "view": view_name}
        if photo.role == "synthetic-low":
            degradation = sample_degradation(rng, exposure_range)
            _write(out / "low" / "synthetic" / key, degrade_low_light(view, degradation, rng))
            files.append({**record, "file": f"low/synthetic/{key}", **asdict(degradation)})
        elif photo.role == "real-low":
            _write(out / "low" / "real" / key, encode(view, "JPEG", quality=95))
            files.append({**record, "file": f"low/real/{key}"})
        else:
            normal = desaturate(view, normal_saturation)
            _write(out / "normal" / key, encode(normal, "JPEG", quality=95))
            files.append({**record, "file": f"normal/{key}"})
    return files


def _write_wheel_photos(out: Path, normal_saturation: float) -> list[dict]:
    """Write the wheels' normal-light photos (WHEEL_NORMAL); returns their records."""
    files: list[dict] = []
    for name in WHEEL_NORMAL:
        _write(
            out / "normal" / "wheels" / f"{name}.jpg",
            encode(desaturate(_fit(wheel_photo(name)), normal_saturation), "JPEG", quality=95),
        )
        files.append(
            {
                "name": name,
                "package": "python wheels (scikit-image / scikit-learn)",
                "licence": "see the wheel's licence files",
                "role": "normal",
                "file": f"normal/wheels/{name}.jpg",
            }
        )
    return files


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _readme(photos: list[CorpusPhoto], files: list[dict]) -> str:
    counts = {role: sum(1 for f in files if f["role"] == role) for role in ROLES}
    lines = [
        "# Starter corpus",
        "",
        "Built by `python -m pipelines.starter.corpus` from Debian wallpaper packages "
        "(photographs only) and wheel photos. Low-light: `low/real` (real dark photos) and "
        "`low/synthetic` (other photos darkened; parameters per file in corpus.json). "
        "No photo is in more than one role.",
        "",
        "| role | source photos | files |",
        "|---|---|---|",
    ]
    for role in ROLES:
        sources = len({f["name"] for f in files if f["role"] == role})
        lines.append(f"| {role} | {sources} | {counts[role]} |")
    lines += ["", "| photo | package | path | role | licence |", "|---|---|---|---|---|"]
    for photo in photos:
        lines.append(
            f"| {photo.name} | {photo.package} | {photo.path} | {photo.role} | {photo.licence} |"
        )
    for name in WHEEL_NORMAL:
        lines.append(f"| {name} | python wheels | sample data | normal | the wheel's licence |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.starter.corpus",
        description="Assemble the starter model's unpaired corpus from Debian wallpaper "
        "packages (apt-get download + dpkg -x; needs apt-get and dpkg).",
    )
    parser.add_argument(
        "--output", "--out", default="starter-corpus", help="output folder (replaced)"
    )
    parser.add_argument(
        "--cache",
        default=str(Path.home() / ".cache" / "enlightengan" / "corpus-debs"),
        help="where the downloaded and unpacked packages are kept",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the degradations")
    parser.add_argument(
        "--low-exposure",
        type=float,
        nargs=2,
        default=EXPOSURE_RANGE,
        metavar=("MIN", "MAX"),
        help="range of the synthetic low-light exposures, as fractions of the light",
    )
    parser.add_argument(
        "--normal-saturation",
        type=float,
        default=1.0,
        help="scale of the normal-light photos' saturation (1: as published)",
    )
    args = parser.parse_args(argv)
    low, high = args.low_exposure
    if not 0 < low <= high <= 1 or args.normal_saturation < 0:
        parser.error("--low-exposure needs 0 < MIN <= MAX <= 1; --normal-saturation >= 0")
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        print("error: apt-get and dpkg are needed (a Debian or Ubuntu machine)", file=sys.stderr)
        return 2
    record = build_corpus(
        Path(args.output), Path(args.cache), args.seed, (low, high), args.normal_saturation
    )
    roles = {role: sum(1 for f in record["files"] if f["role"] == role) for role in ROLES}
    print(f"starter corpus in {args.output}: {roles}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
