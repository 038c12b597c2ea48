"""The run report of ``enlightengan enhance``: ``<output>/_report/<run id>/index.html``.

One self-contained HTML page per run (thumbnails as ``data:`` URIs, CSS inline, no script, no
external resource), so that a single object opens in any browser, from a local disk or from a
presigned URL, which authorises one object and nothing beside it. It shows the run's summary,
the failures by reason with their first keys, the distribution of darkness scores with the
``--only-dark`` threshold, and before/after pairs of a sample of the run's images, with NIQE of
both sides under ``--report-niqe``. ``summary.json`` beside it holds the same numbers.

The sample is chosen on the stream, reproducibly: each image's rank is a hash of its key, and
the run keeps the ``--report-samples`` images of lowest rank. A small actor
(:class:`SampleKeeper`) holds the best ranks so far; the decode tasks make a "before" thumbnail
only for an image that could still enter the sample, the write tasks add its "after" side and
offer it to the keeper. Whatever the archive's size the keeper holds at most the sample, and
about ``samples * ln(images / samples)`` images are ever thumbnailed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import json
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import ray

from pipelines.enhance.spec import REPORT_NIQE_SIDE
from pipelines.inference.darkness import DarkPolicy
from pipelines.inference.stages import RowStatus, object_column
from pipelines.io.images import encode_like, resize
from pipelines.io.storage import Location, write_bytes
from pipelines.options import json_value

logger = logging.getLogger(__name__)

REPORT_DIR = "_report"
THUMBNAIL_SIDE = 360
THUMBNAIL_QUALITY = 85
# A decode task asks the keeper for the current cutoff at most this often.
CUTOFF_REFRESH_SECONDS = 1.0
NO_CUTOFF = 2**64


def sample_rank(key: str) -> int:
    """A key's place in the sample order: the first 8 bytes of its SHA-1 (uniform, stable)."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8", "surrogatepass")).digest()[:8], "big")


@ray.remote(num_cpus=0)
class SampleKeeper:
    """The ``size`` offered entries of lowest rank (see :func:`sample_rank`). Start it with
    :func:`start_sample_keeper`: on the driver's node, which the job cannot lose anyway."""

    def __init__(self, size: int):
        self.size = size
        self.entries: dict[int, dict] = {}

    def cutoff(self) -> int:
        """Ranks at or above this cannot enter the sample any more."""
        if len(self.entries) < self.size:
            return NO_CUTOFF
        return max(self.entries)

    def offer(self, entries: list[dict]) -> None:
        for entry in entries:
            self.entries[entry["rank"]] = entry
        for rank in sorted(self.entries)[self.size :]:
            del self.entries[rank]

    def sample(self) -> list[dict]:
        return [self.entries[rank] for rank in sorted(self.entries)]


def start_sample_keeper(size: int):
    """A :class:`SampleKeeper` on the driver's node (a head node without CPUs takes it: it asks
    for none), so that losing a worker node never loses the sample. Pinned, not preferred: a
    soft preference once let Ray start it on a worker node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return SampleKeeper.options(scheduling_strategy=here).remote(size)


def kept_sample(keeper) -> list[dict]:
    """The keeper's sample; empty when the keeper is gone (its node lost): the run's report
    then shows no before/after pairs, and the images are all written anyway."""
    try:
        return ray.get(keeper.sample.remote())
    except ray.exceptions.RayActorError:
        logger.warning("enhance: the run report's sample was lost with its node: no pairs shown")
        return []


@dataclass
class ReportSampler:
    """What the decode and write tasks need to build the sample (picklable: an actor handle)."""

    keeper: object
    niqe: bool = False
    _cutoff: tuple[float, int] = field(default=(0.0, NO_CUTOFF), repr=False)

    def _current_cutoff(self) -> int:
        fetched, cutoff = self._cutoff
        if time.monotonic() - fetched > CUTOFF_REFRESH_SECONDS:
            try:
                cutoff = ray.get(self.keeper.cutoff.remote())
            except ray.exceptions.RayActorError:
                cutoff = 0  # the keeper is gone (its node lost): the report's sample stops here
            self._cutoff = (time.monotonic(), cutoff)
        return cutoff

    def before(self, key: str, rgb: np.ndarray) -> dict:
        """The ``before`` columns of a decoded image that may enter the sample, else ``{}``."""
        if sample_rank(key) >= self._current_cutoff():
            return {}
        return {"sample_before": thumbnail_jpeg(rgb), "niqe_before": self._niqe(rgb)}

    @staticmethod
    def before_columns(rows: list[dict]) -> dict[str, np.ndarray]:
        return {
            "sample_before": object_column([row.get("sample_before", b"") for row in rows]),
            "niqe_before": np.array([row.get("niqe_before", math.nan) for row in rows]),
        }

    def after(self, row: dict, written: dict) -> dict | None:
        """The sample entry of one written row (``None`` when it is not a candidate)."""
        if not len(row.get("sample_before", b"")) or written["status"] == RowStatus.FAILED:
            return None
        after, niqe_after = b"", math.nan
        if written["status"] == RowStatus.ENHANCED:
            shape = (int(row["height"]), int(row["width"]), 3)
            enhanced = np.frombuffer(row["pixels"], dtype=np.uint8).reshape(shape)
            after, niqe_after = thumbnail_jpeg(enhanced), self._niqe(enhanced)
        return {
            "rank": sample_rank(written["key"]),
            **{name: written[name] for name in ("key", "output_key", "status", "width")},
            **{name: written[name] for name in ("height", "darkness", "luma_mean")},
            "before": bytes(row["sample_before"]),
            "after": after,
            "niqe_before": float(row["niqe_before"]),
            "niqe_after": niqe_after,
        }

    def offer(self, entries: list) -> None:
        entries = [entry for entry in entries if entry is not None]
        if entries:
            # A keeper gone with its node costs the report samples, never the job its images.
            with contextlib.suppress(ray.exceptions.RayActorError):
                ray.get(self.keeper.offer.remote(entries))

    def _niqe(self, rgb: np.ndarray) -> float:
        return report_niqe(rgb) if self.niqe else math.nan


def report_niqe(rgb: np.ndarray) -> float:
    """NIQE of ``rgb`` fitted into :data:`REPORT_NIQE_SIDE` (NIQE's cost grows faster than the pixel
    count: a 15-megapixel photo takes seconds); NaN where it is undefined."""
    from pipelines.inference.scores import safe_niqe

    height, width = rgb.shape[:2]
    scale = REPORT_NIQE_SIDE / max(height, width)
    if scale < 1:
        rgb = resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))))
    return safe_niqe(rgb)


def thumbnail_jpeg(rgb: np.ndarray, side: int = THUMBNAIL_SIDE) -> bytes:
    """A JPEG of ``rgb`` fitted into ``side`` x ``side``."""
    from PIL import Image

    picture = Image.fromarray(rgb)
    picture.thumbnail((side, side))
    return encode_like(np.asarray(picture), "JPEG", quality=THUMBNAIL_QUALITY)


@dataclass(frozen=True)
class RunFacts:
    """What the page says about the run besides its counts and sample."""

    run_id: str
    input_uri: str
    output_uri: str
    checkpoint: str
    seconds: float
    policy: DarkPolicy | None
    threshold: float
    settings: dict = field(default_factory=dict)


def write_report(output: Location, facts: RunFacts, summary: dict, sample: list[dict]) -> str:
    """Write ``index.html`` and ``summary.json`` under ``<output>/_report/<run id>/``; returns
    the page's URI. On S3 each object carries its ``Content-Type``."""
    folder = output.child(f"{REPORT_DIR}/{facts.run_id}")
    numbers = {
        **summary,
        "run_id": facts.run_id,
        "seconds": round(facts.seconds, 2),
        "only_dark": facts.policy.mode if facts.policy else None,
        "dark_threshold": facts.threshold,
        "sample": [
            {
                name: json_value(entry[name], nonfinite_as_none=True)
                for name in entry
                if name not in ("before", "after")
            }
            for entry in sample
        ],
    }
    summary_json = json.dumps(numbers, indent=2, allow_nan=False, default=str)
    write_bytes(folder.child("summary.json"), summary_json.encode())
    page = render_page(facts, summary, sample)
    index = folder.child("index.html")
    write_bytes(index, page.encode("utf-8"))
    return index.uri


STATUS_WORDS = {
    RowStatus.ENHANCED: "enhanced",
    RowStatus.COPIED: "copied unchanged (not dark)",
    RowStatus.NOT_DARK: "left out (not dark)",
    RowStatus.SKIPPED: "already done (skipped)",
    RowStatus.FAILED: "failed",
}
_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1180px; padding: 16px;
       color: #1d1d1f; background: #fafafa; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; }
table { border-collapse: collapse; } td, th { padding: 3px 10px; text-align: left;
       border-bottom: 1px solid #ddd; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
code { font-size: 13px; overflow-wrap: anywhere; }
.pairs { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 14px; }
figure { margin: 0; background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px; }
.sides { display: flex; gap: 4px; } .sides div { flex: 1; min-width: 0; text-align: center; }
.sides img { width: 100%; height: auto; display: block; }
.label { font-size: 12px; color: #555; } figcaption { font-size: 13px; margin-top: 6px; }
.note { color: #555; font-size: 13px; }
"""


def render_page(facts: RunFacts, summary: dict, sample: list[dict]) -> str:
    """The whole page as one string (everything it shows is escaped)."""
    title = f"enhance run {facts.run_id}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # An empty icon: otherwise browsers ask the server for /favicon.ico, which a bucket
        # refuses (a 403 in the console of a page opened from a presigned URL).
        '<link rel="icon" href="data:,">',
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>EnlightenGAN {_e(title)}</h1>",
        _summary_section(facts, summary),
        _failures_section(summary),
        _darkness_section(facts, summary),
        _sample_section(facts, sample),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _summary_section(facts: RunFacts, summary: dict) -> str:
    statuses = summary["status"]
    total = sum(statuses.values())
    enhanced = statuses.get(RowStatus.ENHANCED, 0)
    rate = enhanced / facts.seconds if facts.seconds > 0 else 0.0
    rows = [
        ("input", f"<code>{_e(facts.input_uri)}</code>"),
        ("output", f"<code>{_e(facts.output_uri)}</code>"),
        ("checkpoint", _e(facts.checkpoint)),
        ("images", f"{total:,}"),
        *((STATUS_WORDS.get(name, name), f"{count:,}") for name, count in _in_order(statuses)),
        ("time", f"{facts.seconds:,.1f} s ({rate:.2f} images enhanced per second)"),
        *(
            [("steady state", f"{steady:.2f} images per second after the first batch")]
            if (steady := summary.get("steady_images_per_s")) is not None
            else []
        ),
        ("bytes written", f"{summary['output_bytes']:,}"),
        ("--only-dark", _e(facts.policy.mode if facts.policy else "off (every image enhanced)")),
        *(
            (_e(name.replace("_", " ")), _e(_setting(value)))
            for name, value in facts.settings.items()
        ),
    ]
    body = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows)
    manifest = f"{facts.output_uri.rstrip('/')}/_manifest/run-{facts.run_id}-*.parquet"
    return (
        f"<h2>Summary</h2><table>{body}</table>"
        f'<p class="note">One row per image in <code>{_e(manifest)}</code>.</p>'
    )


def _in_order(statuses: dict) -> list[tuple[str, int]]:
    """Counts in the order of :data:`STATUS_WORDS`, any other status last."""
    order = list(STATUS_WORDS)
    return sorted(statuses.items(), key=lambda item: (order + [item[0]]).index(item[0]))


def _setting(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "none" if value is None else str(value)


def _failures_section(summary: dict) -> str:
    reasons = summary["reasons"]
    if not reasons:
        return "<h2>Failures</h2><p>None.</p>"
    rows = []
    for reason, count in sorted(reasons.items(), key=lambda item: -item[1]):
        keys = summary["failed_keys"].get(reason, [])
        listed = "<br>".join(f"<code>{_e(key)}</code>" for key in keys)
        more = count - len(keys)
        if more > 0:
            listed += f'<br><span class="note">and {more:,} more (see the manifest)</span>'
        rows.append(f'<tr><td>{_e(reason)}</td><td class="n">{count:,}</td><td>{listed}</td></tr>')
    header = "<tr><th>reason</th><th>images</th><th>keys</th></tr>"
    return f"<h2>Failures by reason</h2><table>{header}{''.join(rows)}</table>"


def darkness_svg(counts: list[int], threshold: float, width: int = 720, height: int = 220) -> str:
    """An inline SVG histogram of darkness scores (bins over 0-1) with the threshold marked."""
    left, bottom, top = 44, 34, 22
    plot_width, plot_height = width - left - 12, height - bottom - top
    peak = max(max(counts, default=0), 1)
    bar = plot_width / max(len(counts), 1)
    shapes = []
    for index, count in enumerate(counts):
        if not count:
            continue
        bar_height = plot_height * count / peak
        dark = (index + 0.5) / len(counts) >= threshold
        shapes.append(
            f'<rect x="{left + index * bar:.1f}" y="{top + plot_height - bar_height:.1f}" '
            f'width="{max(bar - 1, 1):.1f}" height="{bar_height:.1f}" '
            f'fill="{"#3a4a8c" if dark else "#e0a23b"}"><title>{index / len(counts):.2f}-'
            f"{(index + 1) / len(counts):.2f}: {count:,} images</title></rect>"
        )
    axis_y = top + plot_height
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = left + tick * plot_width
        shapes.append(
            f'<text x="{x:.1f}" y="{axis_y + 16}" font-size="12" text-anchor="middle">'
            f"{tick:.2f}</text>"
        )
    marker = left + threshold * plot_width
    shapes += [
        f'<line x1="{left}" y1="{axis_y}" x2="{left + plot_width}" y2="{axis_y}" stroke="#333"/>',
        f'<text x="{left - 6}" y="{top + 10}" font-size="12" text-anchor="end">{peak:,}</text>',
        f'<line x1="{marker:.1f}" y1="{top - 8}" x2="{marker:.1f}" y2="{axis_y}" '
        'stroke="#c0392b" stroke-width="2" stroke-dasharray="5,3"/>',
        f'<text x="{marker + 5:.1f}" y="{top - 2}" font-size="12" fill="#c0392b">threshold '
        f"{threshold:.2f}</text>",
        f'<text x="{left + plot_width / 2:.1f}" y="{height - 4}" font-size="12" '
        'text-anchor="middle">darkness score: 1 - mean((luma / 255)^(1/3))^3</text>',
    ]
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="darkness histogram">'
        + "".join(shapes)
        + "</svg>"
    )


def _darkness_section(facts: RunFacts, summary: dict) -> str:
    counts = summary["darkness_histogram"]
    scored = sum(counts)
    if facts.policy:
        meaning = (
            f"images at or above {facts.threshold:.2f} (blue) were enhanced; the others "
            f"(orange) were {'copied unchanged' if facts.policy.mode == 'copy' else 'left out'}"
        )
    else:
        meaning = (
            f"without --only-dark every image was enhanced; with it, the ones below "
            f"{facts.threshold:.2f} (orange) would not be"
        )
    return (
        f"<h2>Darkness of the {scored:,} images decoded in this run</h2>"
        f"{darkness_svg(counts, facts.threshold)}<p class='note'>{_e(meaning)}.</p>"
    )


def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _sample_section(facts: RunFacts, sample: list[dict]) -> str:
    if not sample:
        return "<h2>Sample</h2><p>No image was decoded in this run (or --report-samples 0).</p>"
    figures = []
    for entry in sample:
        before = f'<img src="{_data_uri(entry["before"])}" alt="before: {_e(entry["key"])}">'
        sides = [f'<div>{before}<span class="label">before</span></div>']
        if entry["after"]:
            after = f'<img src="{_data_uri(entry["after"])}" alt="after: {_e(entry["key"])}">'
            sides.append(f'<div>{after}<span class="label">after</span></div>')
        else:
            sides.append(
                f'<div class="label">{_e(STATUS_WORDS.get(entry["status"], entry["status"]))}</div>'
            )
        caption = (
            f"<code>{_e(entry['key'])}</code><br>{entry['width']}x{entry['height']}, darkness "
            f"{entry['darkness']:.2f}, mean luma {entry['luma_mean']:.0f}" + _niqe_text(entry)
        )
        figures.append(
            f'<figure><div class="sides">{"".join(sides)}</div>'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    return (
        f"<h2>Sample: {len(sample)} images, before and after</h2>"
        f'<p class="note">The same keys in every run of this input (those with the lowest hash '
        f"of the key among the images decoded).{_niqe_means(sample)}</p>"
        f'<div class="pairs">{"".join(figures)}</div>'
    )


def _niqe_text(entry: dict) -> str:
    before, after = entry["niqe_before"], entry["niqe_after"]
    if math.isnan(before):
        return ""
    return f"<br>NIQE {before:.2f}" + (f" &rarr; {after:.2f}" if not math.isnan(after) else "")


def _niqe_means(sample: list[dict]) -> str:
    pairs = [
        (entry["niqe_before"], entry["niqe_after"])
        for entry in sample
        if not (math.isnan(entry["niqe_before"]) or math.isnan(entry["niqe_after"]))
    ]
    if not pairs:
        return ""
    before, after = np.mean(pairs, axis=0)
    return (
        f" Mean NIQE (lower is better) over the {len(pairs)} enhanced images of the sample: "
        f"{before:.2f} before, {after:.2f} after."
    )
