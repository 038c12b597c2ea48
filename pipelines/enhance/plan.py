"""Deciding, as keys stream past, what ``enlightengan enhance`` does with each one.

Two Ray Data stages, both running on streamed rows so that nothing scales with the archive:

- :func:`list_work` (one task, a generator): lists the input page by page (sorted keys, see
  ``pipelines.io.listing``) and yields rows ``key, output_key, status, reason`` and what an
  earlier run's manifest recorded for the key (``recorded_status``, ``recorded_bytes``,
  ``recorded_darkness``; empty, 0 and NaN for none), looked up in the :class:`ResumeIndex`.
  ``status`` is ``failed`` for a key that cannot be written (escapes the output prefix, collides
  with another key's output, lands in ``_manifest/`` or ``_report/``), else ``pending``.
- :func:`check_finished` (parallel tasks): a pending row whose output exists with exactly the
  recorded size, written the way this run would write it (enhanced, or copied under
  ``--only-dark copy``), is ``skipped``; existence alone never counts, so a half-written object
  or an orphan without a manifest row is redone. Under ``--only-dark skip`` a row whose recorded
  darkness is below the threshold is ``not-dark`` without being read again.
"""

from __future__ import annotations

import bisect
import math
import posixpath
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from pyarrow import fs as pafs

from pipelines.enhance.report import REPORT_DIR
from pipelines.enhance.sink import MANIFEST_DIR, ManifestTarget, manifest_row, read_manifest
from pipelines.inference.darkness import DarkPolicy
from pipelines.inference.stages import RowStatus, object_column
from pipelines.io.listing import UNREADABLE, ListingSource
from pipelines.io.storage import safe_join

FORMAT_EXTENSIONS = {"png": (".png",), "jpeg": (".jpg", ".jpeg")}
INDEX_CHUNK_ROWS = 65536
LOADED_CHUNKS = 4
STAT_CHUNK = 32
STAT_THREADS = 16
CHECK_ROWS = 1000
# Statuses of the rows that decided an output's fate; a skipped row only repeats one of them.
DECIDING_STATUSES = (RowStatus.ENHANCED, RowStatus.COPIED, RowStatus.NOT_DARK)
NOTHING_RECORDED = ("", 0, math.nan)
# A recorded darkness this close to 1 - luma_p95 / 255 is an old-style score: the margin covers
# the recorded values' rounding.
OLD_SCORE_TOLERANCE = 6e-5
# Reasons decided while listing (never counted by --limit).
UNUSABLE_KEY_REASONS = (
    "unsafe-key",
    "reserved-key",
    "output-key-collision",
    "undecodable-key",
    "unreadable-folder",
)


def output_key_for(key: str, output_format: str) -> str:
    """The output's relative key: the input's, with the extension changed only when
    ``--format`` asks for a format the extension does not name."""
    if output_format == "same":
        return key
    stem, extension = posixpath.splitext(key)
    wanted = FORMAT_EXTENSIONS[output_format]
    return key if extension.lower() in wanted else stem + wanted[0]


class CollisionGuard:
    """Output keys claimed so far that a later key could still claim again.

    Only the extension changes between a key and its output, so two keys can only share an
    output if they share its stem, and the keys starting with ``stem.`` arrive as one run: in
    UTF-8 binary order of whole keys (AWS S3, the local walk) and in the order of stores that
    walk a directory tree with each folder's names sorted (SeaweedFS). A claim is forgotten
    once the keys have moved past its run, so memory stays at a handful of stems. The first key
    in listing order keeps the output."""

    def __init__(self) -> None:
        self._claims: dict[str, set[str]] = {}

    def claim(self, key: str, output_key: str) -> bool:
        """``False`` when an earlier key already writes ``output_key``."""
        passed = [run for run in self._claims if _past(key, run)]
        for run in passed:
            del self._claims[run]
        run = posixpath.splitext(output_key)[0] + "."
        claimed = self._claims.setdefault(run, set())
        if output_key in claimed:
            return False
        claimed.add(output_key)
        return True


def _past(key: str, run: str) -> bool:
    """Whether ``key`` comes after every key of ``run`` in both listing orders (binary, and by
    folder: there a folder named like a stem, ``a/...``, lists between ``a`` and ``a.png``)."""
    if key.startswith(run):
        return False
    return key > run and key.split("/") > run.split("/")


@dataclass
class ResumeIndex:
    """The finished rows of earlier runs, ``(key, output_key) -> (status, output_bytes,
    darkness)`` of the latest deciding row (:data:`DECIDING_STATUSES`), as sorted chunks in the
    object store; ``first_keys[i]`` is chunk ``i``'s first key.

    Keys are looked up in listing order, (nearly) ascending, so a lookup task holds a few
    chunks at a time."""

    first_keys: list[str]
    chunks: list

    def __post_init__(self) -> None:
        self._loaded: dict[int, dict[tuple[str, str], tuple]] = {}

    def recorded(self, key: str, output_key: str) -> tuple[str, int, float]:
        """``(status, output_bytes, darkness)``; :data:`NOTHING_RECORDED` for a new key."""
        chunk = bisect.bisect_right(self.first_keys, key) - 1
        if chunk < 0:
            return NOTHING_RECORDED
        if chunk not in self._loaded:
            # A directory-tree listing visits "a/..." before "a-b.jpg": keep a few chunks.
            if len(self._loaded) >= LOADED_CHUNKS:
                del self._loaded[next(iter(self._loaded))]
            table = ray.get(self.chunks[chunk])
            darkness = [math.nan if value is None else value
                        for value in table["darkness"].to_pylist()]  # fmt: skip
            self._loaded[chunk] = dict(
                zip(
                    zip(table["key"].to_pylist(), table["output_key"].to_pylist(), strict=True),
                    zip(
                        table["status"].to_pylist(),
                        table["output_bytes"].to_pylist(),
                        darkness,
                        strict=True,
                    ),
                    strict=True,
                )
            )
        return self._loaded[chunk].get((key, output_key), NOTHING_RECORDED)

    def __getstate__(self):
        return {"first_keys": self.first_keys, "chunks": self.chunks}

    def __setstate__(self, state):
        self.__init__(state["first_keys"], state["chunks"])


@ray.remote(num_returns="streaming")
def _index_chunks(filesystem: pafs.FileSystem, manifest_root: str, chunk_rows: int):
    """First the chunks' first keys, then each chunk (so the driver owns them all)."""
    columns = ["key", "output_key", "status", "output_bytes", "darkness", "luma_p95", "run_id"]
    table = forget_old_scores(read_manifest(filesystem, manifest_root, columns))
    finished = pc.is_in(table["status"], pa.array(DECIDING_STATUSES))
    table = table.filter(finished).sort_by([("key", "ascending"), ("run_id", "ascending")])
    # Run ids start with their start time, so the last row of a (key, output_key) is the latest.
    recorded = ["status", "output_bytes", "darkness"]
    table = table.group_by(["key", "output_key"], use_threads=False).aggregate(
        [(name, "last") for name in recorded]
    )
    table = table.select(["key", "output_key", *(f"{name}_last" for name in recorded)])
    table = table.rename_columns(["key", "output_key", *recorded]).sort_by("key")
    keys = table["key"]
    cuts = []
    start = 0
    while start < len(table):
        cuts.append(start)
        end = min(start + chunk_rows, len(table))
        # A key's rows (one per output format used) stay in one chunk.
        while 0 < end < len(table) and keys[end] == keys[end - 1]:
            end += 1
        start = end
    yield [keys[cut].as_py() for cut in cuts]
    for number, cut in enumerate(cuts):
        end = cuts[number + 1] if number + 1 < len(cuts) else len(table)
        yield table.slice(cut, end - cut)


def forget_old_scores(table: pa.Table) -> pa.Table:
    """``darkness`` NaN (unknown: the image is read again) in the rows of manifests written
    before issue 26, which hold another score, ``1 - luma_p95 / 255`` rounded to 4 places,
    recognised by their ``luma_p95``. The current score matches that only by chance or on a
    uniform image (a grey frame scores ``1 - luma / 255`` either way), which, when not dark, is
    then read again in each run."""
    old_score = pc.subtract(1.0, pc.divide(table["luma_p95"], 255.0))
    is_old = pc.less(pc.abs(pc.subtract(table["darkness"], old_score)), OLD_SCORE_TOLERANCE)
    unknown = pa.scalar(math.nan, pa.float64())
    darkness = pc.if_else(pc.fill_null(is_old, False), unknown, table["darkness"])
    return table.set_column(table.schema.get_field_index("darkness"), "darkness", darkness)


def build_resume_index(
    filesystem: pafs.FileSystem, manifest_root: str, chunk_rows: int = INDEX_CHUNK_ROWS
) -> ResumeIndex | None:
    """The index of an output's manifest, built by one Ray task; ``None`` when nothing is done.

    That task reads the finished rows' keys (about 100 bytes per image); the driver only keeps
    the chunks' first keys."""
    selector = pafs.FileSelector(manifest_root, allow_not_found=True)
    if not filesystem.get_file_info(selector):
        return None  # a first run (the write check leaves the folder empty): no task to start
    refs = list(_index_chunks.remote(filesystem, manifest_root, chunk_rows))
    first_keys = ray.get(refs[0])
    return ResumeIndex(first_keys, refs[1:]) if first_keys else None


@dataclass(frozen=True)
class KeyRules:
    """Which listed keys are work, and where their outputs go."""

    output_root: str
    output_format: str = "same"
    extensions: tuple[str, ...] | None = None
    excluded_prefix: str | None = None

    def unusable_reason(self, output_key: str) -> str | None:
        try:
            safe_join(self.output_root, output_key)
        except ValueError:
            return "unsafe-key"
        if output_key.split("/", 1)[0] in (MANIFEST_DIR, REPORT_DIR):
            return "reserved-key"
        return None


def list_work(
    batch: dict[str, np.ndarray],
    source: ListingSource,
    rules: KeyRules,
    resume: ResumeIndex | None,
    page_size: int,
    record: ManifestTarget | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data stage (one task, whatever its input row): every wanted key under the input,
    ``page_size`` at a time.

    With ``record``, unusable keys go straight to the manifest and only pending rows leave, so
    ``--limit`` counts images; without it (``--dry-run``) they leave too, to be counted. Pages
    are cut after the filters, so a re-run of this task yields the same pages even while
    outputs appear under an output prefix inside the input."""
    guard = CollisionGuard() if rules.output_format != "same" else None
    wanted: list[str] = []
    for page in source.pages(page_size):
        for key, size in page:
            if size == UNREADABLE:
                wanted.append(key)  # kept whatever the filters: _planned records the reason
            elif rules.extensions is not None and not key.lower().endswith(rules.extensions):
                continue
            elif rules.excluded_prefix is not None and key.startswith(rules.excluded_prefix):
                continue
            else:
                wanted.append(key)
            if len(wanted) >= page_size:
                yield from _planned(wanted, rules, guard, resume, record)
                wanted = []
    if wanted:
        yield from _planned(wanted, rules, guard, resume, record)


def _planned(keys, rules: KeyRules, guard, resume, record) -> Iterator[dict[str, np.ndarray]]:
    rows = []
    for key in keys:
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            # A local file name that is not UTF-8: no object key can name it.
            shown = key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            rows.append((shown, shown, RowStatus.FAILED, "undecodable-key", *NOTHING_RECORDED))
            continue
        if key.endswith("/"):
            rows.append((key, key, RowStatus.FAILED, "unreadable-folder", *NOTHING_RECORDED))
            continue
        output_key = output_key_for(key, rules.output_format)
        reason = rules.unusable_reason(output_key)
        if reason is None and guard is not None and not guard.claim(key, output_key):
            reason = "output-key-collision"
        if reason:
            rows.append((key, output_key, RowStatus.FAILED, reason, *NOTHING_RECORDED))
        else:
            recorded = resume.recorded(key, output_key) if resume else NOTHING_RECORDED
            rows.append((key, output_key, RowStatus.PENDING, "", *recorded))
    if record is not None:
        failed = [row for row in rows if row[2] == RowStatus.FAILED]
        if failed:
            record.write(
                "unusable",
                [
                    manifest_row(k, o, RowStatus.FAILED, why, run_id=record.run_id)
                    for k, o, _, why, *_ in failed
                ],
            )
            rows = [row for row in rows if row[2] != RowStatus.FAILED]
    if rows:
        yield _plan_columns(rows)


def _plan_columns(rows: list[tuple]) -> dict[str, np.ndarray]:
    keys, output_keys, statuses, reasons, recorded_statuses, recorded, darkness = zip(
        *rows, strict=True
    )
    columns = {
        name: object_column(values)
        for name, values in (
            ("key", keys),
            ("output_key", output_keys),
            ("status", statuses),
            ("reason", reasons),
            ("recorded_status", recorded_statuses),
        )
    }
    columns["recorded_bytes"] = np.array(recorded, dtype=np.int64)
    columns["recorded_darkness"] = np.array(darkness, dtype=np.float64)
    return columns


def file_infos(filesystem: pafs.FileSystem, paths: list[str]) -> list[pafs.FileInfo]:
    """``get_file_info`` of many paths; on object stores (one request per path, which pyarrow
    sends one after another) through parallel requests."""
    if isinstance(filesystem, pafs.LocalFileSystem) or len(paths) <= STAT_CHUNK:
        return filesystem.get_file_info(paths)
    chunks = [paths[start : start + STAT_CHUNK] for start in range(0, len(paths), STAT_CHUNK)]
    with ThreadPoolExecutor(STAT_THREADS) as pool:
        return [info for infos in pool.map(filesystem.get_file_info, chunks) for info in infos]


def recorded_action(policy: DarkPolicy | None, darkness: float) -> RowStatus:
    """What this run does with an image of recorded ``darkness`` (NaN: unknown, so it is read):
    ``enhanced``, ``copied`` or ``not-dark``."""
    if policy is None or math.isnan(darkness) or policy.is_dark(darkness):
        return RowStatus.ENHANCED
    return RowStatus.COPIED if policy.mode == "copy" else RowStatus.NOT_DARK


def check_finished(
    batch: dict[str, np.ndarray],
    output_filesystem: pafs.FileSystem,
    output_root: str,
    record: ManifestTarget | None = None,
    policy: DarkPolicy | None = None,
) -> dict[str, np.ndarray]:
    """Mark ``skipped`` the pending rows whose output was written the way this run would write
    it and still has the recorded size, and ``not-dark`` those that ``--only-dark skip`` leaves
    out by their recorded darkness.

    With ``record`` these rows are written as this task's own manifest parts and left out of
    the output; without it (``--dry-run``) they stay in the batch for counting."""
    status = batch["status"].copy()
    candidates, not_dark = [], []
    for index, (current, recorded_status, darkness) in enumerate(
        zip(status, batch["recorded_status"], batch["recorded_darkness"], strict=True)
    ):
        if current != RowStatus.PENDING or not recorded_status:
            continue
        action = recorded_action(policy, darkness)
        if action == RowStatus.NOT_DARK:
            status[index] = RowStatus.NOT_DARK
            not_dark.append(index)
        elif action == recorded_status and batch["recorded_bytes"][index] > 0:
            candidates.append(index)
    root = output_root.rstrip("/")
    infos = file_infos(
        output_filesystem, [f"{root}/{batch['output_key'][index]}" for index in candidates]
    )
    skipped = []
    for index, info in zip(candidates, infos, strict=True):
        if info.type == pafs.FileType.File and info.size == batch["recorded_bytes"][index]:
            status[index] = RowStatus.SKIPPED
            skipped.append(index)
    batch = {**batch, "status": status}
    if record is None or not (skipped or not_dark):
        return batch
    for kind, indexes, sizes in (
        (RowStatus.SKIPPED, skipped, True),
        (RowStatus.NOT_DARK, not_dark, False),
    ):
        if indexes:
            record.write(kind, [_decided_row(batch, index, sizes, record) for index in indexes])
    keep = status == RowStatus.PENDING
    return {name: column[keep] for name, column in batch.items()}


def _decided_row(batch, index: int, with_bytes: bool, record: ManifestTarget) -> dict:
    return manifest_row(
        batch["key"][index],
        batch["output_key"][index],
        batch["status"][index],
        output_bytes=int(batch["recorded_bytes"][index]) if with_bytes else 0,
        darkness=float(batch["recorded_darkness"][index]),
        run_id=record.run_id,
    )
